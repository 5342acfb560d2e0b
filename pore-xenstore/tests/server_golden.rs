//! Replays the golden traces recorded from Debian's C xenstored (tests/data/c-*.json)
//! against our server's sans-IO core and compares every reply and watch event byte for
//! byte, per connection, after normalising only what `tests/data/README.md` lists: DIRECTORY
//! child order and the generation in DIRECTORY_PART replies. (Transaction ids need no
//! normalising: ours count per connection from 1, as C's do.) The one step with
//! undefined behaviour in C (a path without its NUL) must get EINVAL from us.
#![cfg(feature = "std")]

use std::collections::HashMap;

use pore_core::DomId;
use pore_xenstore::codec::parse_frame;
use pore_xenstore::server::{AcceptDomains, Config, ConnId, OutKind, Quotas, Store};
use pore_xenstore::wire::PAYLOAD_MAX;
use serde_json::Value;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Sorted DIRECTORY children; DIRECTORY_PART generation replaced by "G".
fn normalise(msg: &[u8], request_type: u32) -> Vec<u8> {
    let ty = u32::from_le_bytes(msg[0..4].try_into().unwrap());
    let payload = &msg[16..];
    let norm_payload: Vec<u8> = match (ty, request_type) {
        (1, 1) => {
            let mut names: Vec<&[u8]> = payload
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .collect();
            names.sort();
            names
                .iter()
                .flat_map(|n| n.iter().copied().chain([0]))
                .collect()
        }
        (22, 22) => {
            let nul = payload.iter().position(|&b| b == 0).unwrap();
            let mut v = b"G".to_vec();
            v.extend_from_slice(&payload[nul..]);
            v
        }
        _ => return msg.to_vec(),
    };
    let mut v = msg[..12].to_vec();
    v.extend_from_slice(&(norm_payload.len() as u32).to_le_bytes());
    v.extend_from_slice(&norm_payload);
    v
}

fn replay(file: &str, config: Config) -> usize {
    let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    let trace: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut store = Store::new(config);
    let mut conns: HashMap<String, ConnId> = HashMap::new();
    let mut closed: Vec<String> = Vec::new();
    let mut checked = 0;
    for section in trace["sections"].as_array().unwrap() {
        for step in section["steps"].as_array().unwrap() {
            let who = step["conn"].as_str().unwrap().to_string();
            let send = unhex(step["send"].as_str().unwrap());
            let req_type = u32::from_le_bytes(send[0..4].try_into().unwrap());
            let what = format!("{} / {}", section["title"], step["send_decoded"]);
            let conn = if who == "G" {
                store
                    .domain_conn(DomId(5))
                    .expect("G sends after INTRODUCE 5")
            } else {
                *conns
                    .entry(who.clone())
                    .or_insert_with(|| store.connect(DomId::DOM0))
            };
            // Expected messages per connection, in order.
            let mut expected: HashMap<String, Vec<Option<Vec<u8>>>> = HashMap::new();
            for r in step["recv"].as_array().unwrap() {
                let c = r["conn"].as_str().unwrap().to_string();
                let m = r["hex"].as_str().map(|h| normalise(&unhex(h), req_type));
                expected.entry(c).or_default().push(m);
            }
            let nul_less = step["note"].as_str().unwrap_or("").contains("NUL")
                && send.len() > 16
                && *send.last().unwrap() != 0
                && req_type == 2;
            let mut got: HashMap<String, Vec<Option<Vec<u8>>>> = HashMap::new();
            match parse_frame(&send, PAYLOAD_MAX) {
                Err(_) => {
                    closed.push(who.clone());
                    got.entry(who.clone()).or_default().push(None);
                }
                Ok(Some((hdr, payload, _))) => {
                    let mut out = Vec::new();
                    store.handle_frame(conn, &hdr, payload, &mut AcceptDomains, &mut out);
                    for o in out {
                        let name = if Some(o.conn) == store.domain_conn(DomId(5)) {
                            "G".to_string()
                        } else {
                            conns
                                .iter()
                                .find(|(_, c)| **c == o.conn)
                                .map(|(n, _)| n.clone())
                                .unwrap_or_else(|| format!("conn{}", o.conn.0))
                        };
                        let _ = o.kind == OutKind::Event;
                        got.entry(name)
                            .or_default()
                            .push(Some(normalise(&o.bytes, req_type)));
                    }
                }
                Ok(None) => panic!("{what}: incomplete frame in trace"),
            }
            if nul_less {
                let reply = got[&who][0].clone().unwrap();
                assert_eq!(&reply[16..], b"EINVAL\0", "{what}");
                continue;
            }
            // G's messages after its release are gone with it in both daemons.
            assert_eq!(got, expected, "{what}");
            checked += 1;
        }
    }
    checked
}

#[test]
fn c_main_trace_byte_for_byte() {
    let n = replay("c-main.json", Config::default());
    assert!(n > 150, "only {n} steps checked");
}

#[test]
fn c_quota_trace_byte_for_byte() {
    // The C daemon of this trace ran with -E 5 -S 64 -W 2 -t 2 -M 64.
    let config = Config {
        quotas: Quotas {
            nodes_per_domain: 5,
            entry_size: 64,
            watches_per_domain: 2,
            transactions: 2,
            path_max: 64,
            ..Quotas::default()
        },
        ..Config::default()
    };
    let n = replay("c-quota.json", config);
    assert!(n > 20, "only {n} steps checked");
}
