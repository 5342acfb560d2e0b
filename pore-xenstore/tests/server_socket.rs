//! Our server over unix sockets, against misbehaving clients: one that stops reading
//! (its watch events are queued up to the bound, then dropped; nobody else waits), one
//! that sends an oversized message (closed, like C), one that sends garbage, and a
//! shutdown with clients still connected.
#![cfg(feature = "std")]

mod server_common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use pore_xenstore::server::Config;
use pore_xenstore::{Client, Request};
use server_common::*;

fn req(r: &Request<'_>) -> Vec<u8> {
    r.encode(1, 0, 4096).unwrap()
}

/// Reads one whole message (bounded).
fn recv(s: &mut UnixStream) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hdr = [0u8; 16];
    s.read_exact(&mut hdr).ok()?;
    let len = u32::from_le_bytes(hdr[12..16].try_into().unwrap()) as usize;
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).ok()?;
    Some(p)
}

#[test]
fn a_client_that_stops_reading_hurts_no_one() {
    let ours = Ours::start(Config {
        max_queued_events: 64,
        ..Config::default()
    });
    // The stalled client: a watch on everything, then it never reads again.
    let mut stalled = UnixStream::connect(&ours.sock).unwrap();
    stalled
        .write_all(&req(&Request::Watch {
            path: "/",
            token: "t",
        }))
        .unwrap();
    let writer = Client::connect_unix(&ours.sock).unwrap();
    // Events of about 2 KB (the path): 3000 of them are far more than a socket buffer.
    let long = "p".repeat(2000);
    let t0 = Instant::now();
    for i in 0..3000 {
        writer.write(&format!("/s/{long}{}", i % 10), b"v").unwrap();
    }
    let elapsed = t0.elapsed();
    assert!(
        elapsed < Duration::from_secs(20),
        "writes slowed down: {elapsed:?}"
    );
    // The stalled client still gets a bounded backlog once it reads, then live events.
    stalled
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut n = 0;
    let mut buf = vec![0u8; 1 << 20];
    while let Ok(k) = stalled.read(&mut buf) {
        if k == 0 {
            break;
        }
        n += k;
    }
    // Socket buffers hold some events, the outbox at most 64 more: far fewer than 3000.
    let event = 16 + "/s/".len() + 2001 + 2 + 1;
    assert!(n > 0 && n < 1000 * event, "backlog of {} events", n / event);
    writer.write("/s/after", b"1").unwrap();
    let mut got_live = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut acc = Vec::new();
    while Instant::now() < deadline && !got_live {
        if let Ok(k) = stalled.read(&mut buf) {
            acc.extend_from_slice(&buf[..k]);
            got_live = acc.windows(8).any(|w| w == b"/s/after");
        }
    }
    assert!(got_live, "events flow again once the client reads");
}

/// A client that sends requests and never reads the replies: once its replies fill the
/// socket, the server stops reading it (C xenstored reads on, and holds every reply), and
/// the others are served as before.
#[test]
fn a_client_that_never_reads_its_replies_is_not_read() {
    let ours = Ours::start(Config::default());
    let normal = Client::connect_unix(&ours.sock).unwrap();
    normal.write("/big", &[b'v'; 2000]).unwrap();
    let stalled = UnixStream::connect(&ours.sock).unwrap();
    stalled.set_nonblocking(true).unwrap();
    let one = req(&Request::Read("/big"));
    let mut sent = 0usize;
    let mut idle = 0;
    // Until it cannot send for 100 tries in a row (the server stopped reading), or it
    // sent 4 MiB of requests (2000 replies of 2 KB each per 52 KiB sent: far more than
    // socket buffers hold).
    while idle < 100 && sent < 4 << 20 {
        match (&stalled).write(&one) {
            Ok(n) => {
                sent += n;
                idle = 0;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                idle += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(sent < 1 << 20, "the server read {sent} bytes of requests");
    assert_eq!(normal.read("/big").unwrap().len(), 2000);
    // Once it reads, it gets its replies, whole.
    stalled.set_nonblocking(false).unwrap();
    let mut s = stalled;
    for _ in 0..(sent / one.len()).min(50) {
        assert_eq!(recv(&mut s).unwrap().len(), 2000);
    }
}

#[test]
fn oversized_and_garbage_close_only_that_connection() {
    let ours = Ours::start(Config::default());
    let good = Client::connect_unix(&ours.sock).unwrap();
    // len = 4097: closed without a reply (C's behaviour).
    let mut big = UnixStream::connect(&ours.sock).unwrap();
    let mut m = Vec::new();
    for v in [11u32, 1, 0, 4097] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    big.write_all(&m).unwrap();
    assert!(recv(&mut big).is_none(), "closed");
    // A huge announced length is rejected before any allocation.
    let mut huge = UnixStream::connect(&ours.sock).unwrap();
    let mut m = Vec::new();
    for v in [2u32, 1, 0, u32::MAX] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    huge.write_all(&m).unwrap();
    assert!(recv(&mut huge).is_none(), "closed");
    // Garbage that parses as unknown types gets errors, not a crash.
    let mut junk = UnixStream::connect(&ours.sock).unwrap();
    let mut m = Vec::new();
    for v in [0xdead_beefu32, 7, 0, 3] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(b"ab\0");
    junk.write_all(&m).unwrap();
    let p = recv(&mut junk).unwrap();
    assert_eq!(p, b"ENOSYS\0");
    good.write("/still/fine", b"1").unwrap();
    assert_eq!(good.read("/still/fine").unwrap(), b"1");
}

#[test]
fn shutdown_with_clients_connected() {
    let ours = Ours::start(Config::default());
    let c = Client::connect_unix(&ours.sock).unwrap();
    c.write("/x", b"1").unwrap();
    let _idle = UnixStream::connect(&ours.sock).unwrap();
    let t0 = Instant::now();
    ours.server.shutdown();
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        t0.elapsed()
    );
    // A connection's thread may serve one last request while it notices the shutdown (seen
    // once in ~10 loaded runs): the connection must be closed soon after, not at once.
    let closed = (0..300).any(|_| {
        let gone = c.read("/x").is_err();
        if !gone {
            std::thread::sleep(Duration::from_millis(10));
        }
        gone
    });
    assert!(closed, "connections are closed within 3 s of the shutdown");
}

#[test]
fn dropping_the_last_handle_stops_it() {
    let dir = temp_dir("drop");
    let sock = dir.join("sock");
    let server = pore_xenstore::server::Server::new(Config::default(), None);
    let listener = server.listen_unix(&sock).unwrap();
    let c = Client::connect_unix(&sock).unwrap();
    c.write("/x", b"1").unwrap();
    let clone = server.clone();
    drop(server);
    assert_eq!(c.read("/x").unwrap(), b"1", "a clone keeps it running");
    drop(clone);
    let t0 = Instant::now();
    listener.join();
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert!(!sock.exists(), "socket removed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 10 item 9: a server that stops removes its socket path only if the socket
/// there is still the one it created. A second server that took the path over (a quick
/// restart) keeps its socket file and its clients can still connect.
#[test]
fn a_stopping_server_leaves_its_successors_socket() {
    let dir = temp_dir("succ");
    let sock = dir.join("sock");
    let first = pore_xenstore::server::Server::new(Config::default(), None);
    let first_listener = first.listen_unix(&sock).unwrap();
    let second = pore_xenstore::server::Server::new(Config::default(), None);
    let second_listener = second.listen_unix(&sock).unwrap();
    first.shutdown();
    first_listener.join();
    assert!(sock.exists(), "the successor's socket file was removed");
    let c = Client::connect_unix(&sock).unwrap();
    c.write("/x", b"1").unwrap();
    second.shutdown();
    second_listener.join();
    assert!(!sock.exists(), "its own socket is removed");
    let _ = std::fs::remove_dir_all(&dir);
}
