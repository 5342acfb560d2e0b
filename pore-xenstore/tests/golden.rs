//! The golden traces recorded from Debian's C xenstored and oxenstored
//! (`tests/data/*.json`, see `tests/data/README.md`) checked byte for byte:
//! every recorded request that is well-formed re-encodes to the same bytes, the
//! deliberately malformed ones are exactly those our parser refuses, and every recorded
//! reply and watch event decodes.

use std::collections::{BTreeSet, HashMap};

use pore_xenstore::codec::{parse_frame, Reply, Request, WatchEvent};
use pore_xenstore::{ErrorName, MsgType};

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

struct Stats {
    requests: usize,
    reencoded: usize,
    malformed: BTreeSet<u32>,
    replies: usize,
    errors: usize,
    events: usize,
}

fn check_trace(name: &str) -> Stats {
    let path = format!("{}/tests/data/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("trace file");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let mut st = Stats {
        requests: 0,
        reencoded: 0,
        malformed: BTreeSet::new(),
        replies: 0,
        errors: 0,
        events: 0,
    };
    // Requests by (connection, req_id): oxenstored answers a zero-length request only
    // after the next request arrives, so a reply may come in a later step.
    let mut by_id: HashMap<(String, u32), (Option<MsgType>, u32)> = HashMap::new();
    for section in json["sections"].as_array().expect("sections") {
        for step in section["steps"].as_array().expect("steps") {
            let conn = step["conn"].as_str().expect("conn");
            let sent = unhex(step["send"].as_str().expect("send"));
            let (h, payload, end) = parse_frame(&sent, usize::MAX)
                .expect("frame")
                .expect("whole message");
            assert_eq!(end, sent.len(), "{name}: one message per step");
            st.requests += 1;
            let req_id = h.req_id.get();
            by_id.insert((conn.to_owned(), req_id), (h.msg_type(), h.tx_id.get()));
            match Request::parse(h.ty.get(), payload) {
                Ok(req) => {
                    let again = req
                        .encode(req_id, h.tx_id.get(), usize::MAX)
                        .expect("re-encode");
                    assert_eq!(again, sent, "{name}: req {req_id} re-encodes byte for byte");
                    if payload.len() > pore_xenstore::wire::PAYLOAD_MAX {
                        assert!(req.encode(req_id, h.tx_id.get(), 4096).is_err());
                    }
                    st.reencoded += 1;
                }
                Err(_) => {
                    st.malformed.insert(req_id);
                }
            }
            for r in step["recv"].as_array().expect("recv") {
                let Some(hex) = r["hex"].as_str() else {
                    continue; // the server closed the connection
                };
                let raw = unhex(hex);
                let (rh, rp, rend) = parse_frame(&raw, 64 * 1024)
                    .expect("reply frame within 64 KiB")
                    .expect("whole reply");
                assert_eq!(rend, raw.len());
                let msg = pore_xenstore::Message {
                    ty: rh.ty.get(),
                    req_id: rh.req_id.get(),
                    tx_id: rh.tx_id.get(),
                    payload: rp.to_vec(),
                };
                if msg.ty == MsgType::WatchEvent.as_u32() {
                    assert_eq!(msg.req_id, 0);
                    WatchEvent::parse(&msg.payload).expect("watch event decodes");
                    st.events += 1;
                    continue;
                }
                let rconn = r["conn"].as_str().expect("conn").to_owned();
                let Some(&(req_type, tx_id)) = by_id.get(&(rconn, msg.req_id)) else {
                    panic!(
                        "{name}: reply {} matches no request of its connection",
                        msg.req_id
                    );
                };
                assert_eq!(msg.tx_id, tx_id, "{name}: reply echoes tx_id");
                st.replies += 1;
                match req_type {
                    Some(t) if !matches!(t, MsgType::WatchEvent | MsgType::Error) => {
                        match Reply::decode(t, &msg) {
                            Ok(Ok(_)) => {}
                            Ok(Err(n)) => {
                                assert!(!matches!(n, ErrorName::Other(_)), "{name}: {n}");
                                st.errors += 1;
                            }
                            Err(e) => panic!("{name}: reply to req {req_id} does not decode: {e}"),
                        }
                    }
                    _ => {
                        assert_eq!(msg.ty, MsgType::Error.as_u32());
                        pore_xenstore::codec::decode_error(&msg.payload).expect("error decodes");
                        st.errors += 1;
                    }
                }
            }
        }
    }
    st
}

/// The requests each trace sends on purpose in a shape our encoder never produces
/// (unknown type, server-only types, missing token, missing NUL, zero length, bad
/// permission letter, non-numeric domid, ...), by req_id.
fn expected_malformed(name: &str) -> BTreeSet<u32> {
    // 29 bad perm letter, 30 SET_PERMS without perms, 91 bad commit flag, 101 domid
    // "abc", 156 path without NUL, 160 type 99, 161 WATCH_EVENT and 162 ERROR sent by a
    // client, 174/175 zero-length payloads, 1158 WATCH without token.
    let ids: &[u32] = match name {
        "c-main" | "ocaml-main" => &[29, 30, 91, 101, 156, 160, 161, 162, 174, 175, 1158],
        _ => &[],
    };
    ids.iter().copied().collect()
}

fn run(name: &str) {
    let st = check_trace(name);
    eprintln!(
        "{name}: {} requests ({} re-encoded, {} malformed), {} replies ({} errors), {} events",
        st.requests,
        st.reencoded,
        st.malformed.len(),
        st.replies,
        st.errors,
        st.events
    );
    assert_eq!(
        st.malformed,
        expected_malformed(name),
        "{name}: malformed requests"
    );
    assert!(st.reencoded > 10 && st.replies > 10);
}

#[test]
fn c_main() {
    run("c-main");
}

#[test]
fn ocaml_main() {
    run("ocaml-main");
}

#[test]
fn c_quota() {
    run("c-quota");
}

#[test]
fn ocaml_quota() {
    run("ocaml-quota");
}
