//! The client's discipline on the Linux `/dev/xen/xenbus` device: at most one request in
//! flight per open file (see `XenbusTransport`). Linux (6.1 at least) deadlocks the whole
//! domain's xenstore connection when a WATCH or UNWATCH is written while a reply to an
//! earlier request of the same file is still on its way, so a fake device here fails the
//! test as soon as a second request is written before the first one's reply, and stops
//! answering altogether (as the kernel does) when that second request is an (UN)WATCH.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pore_xenstore::codec::{Parser, Progress};
use pore_xenstore::transport::XenbusTransport;
use pore_xenstore::{Client, Config, Message, MsgType};

/// How long the fake device holds each reply, watching for a request it must not get.
const HOLD: Duration = Duration::from_millis(60);

fn readable(s: &UnixStream, timeout: Duration) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let ts = Timespec {
        tv_sec: 0,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let mut fds = [PollFd::new(s, PollFlags::IN)];
    matches!(poll(&mut fds, Some(&ts)), Ok(n) if n > 0)
}

fn name(ty: u32) -> String {
    MsgType::from_u32(ty).map_or_else(|| ty.to_string(), |t| format!("{t:?}"))
}

/// What the fake device saw: requests written while another was unanswered, and every
/// request as (type, transaction id).
#[derive(Default)]
struct Seen {
    violations: Vec<String>,
    requests: Vec<(MsgType, u32)>,
}

/// The fake device: answers every request after [`HOLD`] (the first one after
/// `first_hold`), records every request written while another was unanswered, and goes
/// silent (the kernel's deadlock) when that request is a WATCH or UNWATCH. Sends one watch
/// event after each WATCH's reply. Ends when the client closes its end.
fn fake_device(mut s: UnixStream, seen: Arc<Mutex<Seen>>, first_hold: Duration) {
    let mut hold = first_hold;
    let mut parser = Parser::new(4096);
    let mut pending: Vec<u8> = Vec::new();
    let mut queue: Vec<Message> = Vec::new();
    let mut deadlocked = false;
    let mut next_tx = 1u32;
    let mut buf = [0u8; 8192];
    let mut fill = |s: &mut UnixStream, pending: &mut Vec<u8>, queue: &mut Vec<Message>| -> bool {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        loop {
            let (used, r) = parser.feed(pending);
            pending.drain(..used);
            match r.expect("the client wrote a malformed request") {
                Progress::Message(m) => queue.push(m),
                Progress::NeedMore(_) => return true,
            }
        }
    };
    loop {
        if queue.is_empty() && !fill(&mut s, &mut pending, &mut queue) {
            return;
        }
        let m = queue.remove(0);
        if deadlocked {
            continue;
        }
        // Hold the reply; anything written meanwhile is a second request in flight.
        let until = Instant::now() + hold;
        hold = HOLD;
        while queue.is_empty() {
            let now = Instant::now();
            if now >= until || !readable(&s, until - now) {
                break;
            }
            if !fill(&mut s, &mut pending, &mut queue) {
                return;
            }
        }
        if let Some(second) = queue.first() {
            let watchy = [MsgType::Watch, MsgType::Unwatch]
                .iter()
                .any(|t| t.as_u32() == second.ty);
            seen.lock().unwrap().violations.push(format!(
                "{} written while the reply to {} was outstanding{}",
                name(second.ty),
                name(m.ty),
                if watchy {
                    " (Linux deadlocks here)"
                } else {
                    ""
                }
            ));
            if watchy {
                deadlocked = true;
                continue;
            }
        }
        let ty = MsgType::from_u32(m.ty).expect("a known request type");
        seen.lock().unwrap().requests.push((ty, m.tx_id));
        let payload: Vec<u8> = match ty {
            MsgType::Read => b"value".to_vec(),
            MsgType::TransactionStart => {
                next_tx += 1;
                format!("{next_tx}\0").into_bytes()
            }
            _ => b"OK\0".to_vec(),
        };
        let mut out = Vec::new();
        for w in [m.ty, m.req_id, m.tx_id, payload.len() as u32] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&payload);
        if ty == MsgType::Watch {
            // The registration event, as xenstored fires it: path\0token\0.
            let args: Vec<&[u8]> = m.payload.split(|&b| b == 0).collect();
            let mut ev = args[0].to_vec();
            ev.push(0);
            ev.extend_from_slice(args[1]);
            ev.push(0);
            for w in [MsgType::WatchEvent.as_u32(), 0, 0, ev.len() as u32] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&ev);
        }
        if s.write_all(&out).is_err() {
            return;
        }
    }
}

/// Threads sharing one client over the device, as pore-straw's manager does (a watch
/// thread registering and dropping watches while others read, write and run
/// transactions): every request is answered before the next one is written.
#[test]
fn one_request_in_flight_on_the_xenbus_device() {
    let (client, seen, dev) = setup(HOLD, Duration::from_secs(10));
    let client = Arc::new(client);
    let start = Arc::new(Barrier::new(3));
    let workers: Vec<_> = (0..3)
        .map(|k| {
            let (c, start) = (client.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                for i in 0..3 {
                    match k {
                        0 => {
                            let w = c.watch(&format!("/w/{i}")).unwrap();
                            let ev = w.next_event(Duration::from_secs(10)).unwrap();
                            assert_eq!(ev.path, format!("/w/{i}"));
                            w.unwatch().unwrap();
                        }
                        1 => assert_eq!(c.read(&format!("/r/{i}")).unwrap(), b"value"),
                        _ => c
                            .transaction(|tx| tx.write(&format!("/t/{i}"), b"x"))
                            .unwrap(),
                    }
                }
            })
        })
        .collect();
    let results: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
    drop(client);
    dev.join().unwrap();
    let v = &seen.lock().unwrap().violations;
    assert!(
        v.is_empty(),
        "requests pipelined on the xenbus device: {v:#?}"
    );
    for r in results {
        r.unwrap();
    }
}

fn setup(
    first_hold: Duration,
    timeout: Duration,
) -> (Client, Arc<Mutex<Seen>>, thread::JoinHandle<()>) {
    let (a, b) = UnixStream::pair().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let dev = {
        let seen = seen.clone();
        thread::spawn(move || fake_device(b, seen, first_hold))
    };
    let file = std::fs::File::from(OwnedFd::from(a));
    let config = Config {
        timeout,
        ..Config::default()
    };
    let client = Client::with_transport(Box::new(XenbusTransport::from_file(file)), config);
    (client.unwrap(), seen, dev)
}

/// A request whose caller gave up (timed out) is still in flight until its late reply is
/// read: the next request waits for it. A transaction that the late reply opened is
/// aborted before anything else is sent.
#[test]
fn a_timed_out_request_is_still_in_flight() {
    let (client, seen, dev) = setup(Duration::from_millis(600), Duration::from_millis(400));
    let e = client.start_transaction().unwrap_err();
    assert!(matches!(e, pore_xenstore::Error::TimedOut), "{e:?}");
    assert_eq!(client.read("/x").unwrap(), b"value");
    drop(client);
    dev.join().unwrap();
    let seen = seen.lock().unwrap();
    assert!(seen.violations.is_empty(), "{:#?}", seen.violations);
    assert_eq!(
        seen.requests,
        [
            (MsgType::TransactionStart, 0),
            (MsgType::TransactionEnd, 2),
            (MsgType::Read, 0)
        ]
    );
}
