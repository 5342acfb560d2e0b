//! The std client against a scripted server on a socket pair: out-of-order replies,
//! timeouts, malformed and oversized replies, a peer that goes away, the transaction cap.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use pore_xenstore::codec::{Parser, Progress};
use pore_xenstore::transport::UnixTransport;
use pore_xenstore::{Client, Config, Error, Message, MsgType, Request};

fn client(timeout: Duration) -> (Client, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    let cfg = Config {
        timeout,
        ..Config::default()
    };
    let c = Client::with_transport(Box::new(UnixTransport::from_stream(a)), cfg).unwrap();
    (c, b)
}

struct Server {
    s: UnixStream,
    parser: Parser,
    pending: Vec<u8>,
}

impl Server {
    fn new(s: UnixStream) -> Self {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Self {
            s,
            parser: Parser::new(4096),
            pending: Vec::new(),
        }
    }

    fn recv(&mut self) -> Message {
        loop {
            if !self.pending.is_empty() {
                let (n, r) = self.parser.feed(&self.pending);
                self.pending.drain(..n);
                if let Progress::Message(m) = r.unwrap() {
                    return m;
                }
            }
            let mut buf = [0u8; 8192];
            let n = self.s.read(&mut buf).unwrap();
            assert!(n > 0, "client closed");
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    fn send(&mut self, ty: MsgType, req_id: u32, tx_id: u32, payload: &[u8]) {
        let m = Message {
            ty: ty.as_u32(),
            req_id,
            tx_id,
            payload: payload.to_vec(),
        };
        self.s.write_all(&m.to_bytes()).unwrap();
    }
}

#[test]
fn out_of_order_replies_reach_their_callers() {
    let (c, s) = client(Duration::from_secs(5));
    std::thread::scope(|sc| {
        sc.spawn(move || {
            let mut srv = Server::new(s);
            let a = srv.recv();
            let b = srv.recv();
            // answer the second first, with a stray event for nobody in between
            for m in [&b, &a] {
                let p = Request::parse(m.ty, &m.payload).unwrap();
                let Request::Read(path) = p else {
                    panic!("{p:?}")
                };
                srv.send(MsgType::WatchEvent, 0, 0, b"/x\0nobody\0");
                srv.send(
                    MsgType::Read,
                    m.req_id,
                    0,
                    format!("value of {path}").as_bytes(),
                );
            }
        });
        let h1 = sc.spawn(|| c.read("/one").unwrap());
        let h2 = sc.spawn(|| c.read("/two").unwrap());
        assert_eq!(h1.join().unwrap(), b"value of /one");
        assert_eq!(h2.join().unwrap(), b"value of /two");
    });
}

#[test]
fn timeout_then_late_reply_is_ignored() {
    let (c, s) = client(Duration::from_millis(200));
    let mut srv = Server::new(s);
    let t0 = Instant::now();
    let e = c.read("/slow").unwrap_err();
    assert!(matches!(e, Error::TimedOut), "{e:?}");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let late = srv.recv();
    srv.send(MsgType::Read, late.req_id, 0, b"late");
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let m = srv.recv();
            srv.send(MsgType::Read, m.req_id, 0, b"fresh");
        });
        assert_eq!(c.read("/next").unwrap(), b"fresh");
    });
}

#[test]
fn malformed_reply_is_an_error_not_a_panic() {
    let (c, s) = client(Duration::from_secs(5));
    std::thread::scope(|sc| {
        sc.spawn(move || {
            let mut srv = Server::new(s);
            let m = srv.recv();
            srv.send(MsgType::Write, m.req_id, 0, b"KO"); // not "OK\0"
            let m = srv.recv();
            srv.send(MsgType::Read, m.req_id, 0, b"OK\0"); // wrong type for the request
            let m = srv.recv();
            srv.send(MsgType::Error, m.req_id, 0, b"EBRANDNEW\0");
            let m = srv.recv();
            srv.send(MsgType::GetPerms, m.req_id, 0, b"q7\0");
        });
        assert!(matches!(c.write("/a", b"1"), Err(Error::Codec(_))));
        assert!(matches!(c.write("/a", b"1"), Err(Error::Codec(_))));
        let e = c.read("/a").unwrap_err();
        assert_eq!(e.name().map(|n| n.as_str()), Some("EBRANDNEW"));
        assert!(matches!(c.get_perms("/a"), Err(Error::Codec(_))));
    });
}

#[test]
fn oversized_reply_closes_without_allocating() {
    let (c, s) = client(Duration::from_secs(5));
    std::thread::scope(|sc| {
        sc.spawn(move || {
            let mut srv = Server::new(s);
            let m = srv.recv();
            // header announcing 1 GiB
            let mut h = Vec::new();
            for v in [2u32, m.req_id, 0, 1 << 30] {
                h.extend_from_slice(&v.to_le_bytes());
            }
            srv.s.write_all(&h).unwrap();
        });
        let e = c.read("/a").unwrap_err();
        assert!(matches!(e, Error::Closed(_)), "{e:?}");
        assert!(matches!(c.read("/b"), Err(Error::Closed(_))));
    });
}

#[test]
fn peer_going_away_fails_pending_requests() {
    let (c, s) = client(Duration::from_secs(5));
    std::thread::scope(|sc| {
        sc.spawn(move || {
            let mut srv = Server::new(s);
            let _ = srv.recv();
            drop(srv);
        });
        let t0 = Instant::now();
        assert!(matches!(c.read("/a"), Err(Error::Closed(_))));
        assert!(t0.elapsed() < Duration::from_secs(2));
    });
}

#[test]
fn open_transactions_are_capped() {
    let (a, b) = UnixStream::pair().unwrap();
    let cfg = Config {
        timeout: Duration::from_millis(300),
        max_open_transactions: 2,
        ..Config::default()
    };
    let c = Client::with_transport(Box::new(UnixTransport::from_stream(a)), cfg).unwrap();
    std::thread::scope(|sc| {
        sc.spawn(move || {
            let mut srv = Server::new(b);
            for id in 1..=2u32 {
                let m = srv.recv();
                assert_eq!(m.ty, MsgType::TransactionStart.as_u32());
                srv.send(
                    MsgType::TransactionStart,
                    m.req_id,
                    0,
                    format!("{id}\0").as_bytes(),
                );
            }
            // the aborts of the two transactions when they are dropped
            for _ in 0..2 {
                let m = srv.recv();
                assert_eq!(m.ty, MsgType::TransactionEnd.as_u32());
                assert_eq!(m.payload, b"F\0");
                srv.send(MsgType::TransactionEnd, m.req_id, m.tx_id, b"OK\0");
            }
        });
        let t1 = c.start_transaction().unwrap();
        let t2 = c.start_transaction().unwrap();
        assert_eq!((t1.id(), t2.id()), (1, 2));
        // a third one waits for a slot, then gives up: nothing was sent for it
        let e = c.start_transaction().unwrap_err();
        assert!(matches!(e, Error::TooManyTransactions(2)), "{e:?}");
        drop(t1);
        drop(t2);
    });
}

#[test]
fn xenbus_device_gets_whole_packets_within_4080_bytes() {
    use pore_xenstore::transport::XenbusTransport;
    use std::os::fd::OwnedFd;
    let (a, b) = UnixStream::pair().unwrap();
    let file = std::fs::File::from(OwnedFd::from(a));
    let c = Client::with_transport(
        Box::new(XenbusTransport::from_file(file)),
        Config {
            timeout: Duration::from_secs(5),
            ..Config::default()
        },
    )
    .unwrap();
    std::thread::scope(|sc| {
        sc.spawn(move || {
            let mut srv = Server::new(b);
            let m = srv.recv();
            assert_eq!(m.payload.len(), 4080, "the largest packet the device takes");
            srv.send(MsgType::Write, m.req_id, 0, b"OK\0");
            let m = srv.recv();
            srv.send(MsgType::Read, m.req_id, 0, b"v");
        });
        let v = vec![b'v'; 4080 - 3];
        c.write("/a", &v).unwrap();
        // one byte more does not fit the device's buffer: refused before sending
        let v = vec![b'v'; 4080 - 2];
        let e = c.write("/a", &v).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Codec(pore_xenstore::CodecError::PayloadTooLarge { max: 4080, .. })
            ),
            "{e:?}"
        );
        assert_eq!(c.read("/a").unwrap(), b"v");
    });
}
