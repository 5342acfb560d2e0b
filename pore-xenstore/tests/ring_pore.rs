//! The ring transport over a pore-core backend (the in-memory loopback): a guest's
//! client on one side of a xenstore page, a tiny scripted xenstored on the other
//! (`pore_ring::xenstore` server side). Also: progress by polling when no event ever
//! comes, and a hostile index that breaks the connection instead of a panic.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pore_core::loopback::Loopback;
use pore_core::{DomId, Pore, SharedAccess};
use pore_ring::prelude::*;
use pore_ring::xenstore::XenstoreRing;
use pore_xenstore::codec::{Parser, Progress, Request};
use pore_xenstore::transport::RingTransport;
use pore_xenstore::{Client, Config, Error, Message};

/// Answers READ with "v:<path>" and everything else with OK, until `n` requests were served.
/// Returns the pore so that the caller decides when the "daemon" goes away.
fn serve(
    server: Pore<pore_core::loopback::LoopbackDomain>,
    n: usize,
    notify: bool,
) -> Pore<pore_core::loopback::LoopbackDomain> {
    let mut ring = XenstoreRing::server(&server).unwrap();
    serve_ring(&server, &mut ring, n, notify);
    server
}

fn serve_ring<A: SharedAccess + Clone>(
    server: &Pore<pore_core::loopback::LoopbackDomain>,
    ring: &mut XenstoreRing<A>,
    n: usize,
    notify: bool,
) {
    let mut parser = Parser::new(4096);
    let mut served = 0;
    let mut buf = [0u8; 512];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while served < n && std::time::Instant::now() < deadline {
        let got = ring.reader().read(&mut buf).unwrap();
        let mut rest = &buf[..got];
        while !rest.is_empty() {
            let (used, p) = parser.feed(rest);
            rest = &rest[used..];
            let Progress::Message(m) = p.unwrap() else {
                continue;
            };
            let reply = match Request::parse(m.ty, &m.payload).unwrap() {
                Request::Read(path) => format!("v:{path}").into_bytes(),
                _ => b"OK\0".to_vec(),
            };
            let out = Message {
                ty: m.ty,
                req_id: m.req_id,
                tx_id: m.tx_id,
                payload: reply,
            }
            .to_bytes();
            let mut sent = 0;
            while sent < out.len() {
                sent += ring.writer().write(&out[sent..]).unwrap();
                if notify && ring.take_notify() {
                    server.notify().unwrap();
                }
                if sent < out.len() {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            served += 1;
        }
        if got == 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

fn pair() -> (
    Pore<pore_core::loopback::LoopbackDomain>,
    Pore<pore_core::loopback::LoopbackDomain>,
) {
    let xen = Loopback::new();
    let (dom0, guest) = (xen.domain(DomId(0)), xen.domain(DomId(3)));
    let server = Pore::open_active(&dom0, DomId(3), 1).unwrap();
    let info = server.info();
    let client = Pore::open_passive(&guest, DomId(0), &info.refs, info.port).unwrap();
    (server, client)
}

fn config() -> Config {
    Config {
        timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

#[test]
fn client_over_a_loopback_store_page() {
    let (server, client) = pair();
    let t = std::thread::spawn(move || serve(server, 3, true));
    let xs = Client::with_transport(Box::new(RingTransport::from_pore(client)), config()).unwrap();
    assert_eq!(xs.read("/vm/name").unwrap(), b"v:/vm/name");
    // a 4000-byte request streams through the 1024-byte ring
    xs.write("/big", &vec![b'x'; 4000]).unwrap();
    let long = format!("/{}", "p".repeat(2000));
    assert_eq!(xs.read(&long).unwrap(), format!("v:{long}").into_bytes());
    let _server = t.join().unwrap();
}

#[test]
fn progress_by_polling_when_events_never_come() {
    let (server, client) = pair();
    let t = std::thread::spawn(move || serve(server, 2, false));
    let xs = Client::with_transport(Box::new(RingTransport::from_pore(client)), config()).unwrap();
    let t0 = std::time::Instant::now();
    assert_eq!(xs.read("/a").unwrap(), b"v:/a");
    xs.write("/b", b"1").unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2));
    let _server = t.join().unwrap();
}

#[test]
fn hostile_index_is_an_error_not_a_panic() {
    let (server, client) = pair();
    let cfg = Config {
        timeout: Duration::from_millis(500),
        ..Config::default()
    };
    let xs = Client::with_transport(Box::new(RingTransport::from_pore(client)), cfg).unwrap();
    // the "server" claims 5000 bytes of replies in a 1024-byte ring
    let rsp_prod = core::mem::offset_of!(pore_ring::xenstore::XenstoreDomainInterface, rsp_prod);
    server.store_u32(rsp_prod, 5000, Ordering::Release);
    let e = xs.read("/a").unwrap_err();
    // The connection ends; its cause is pore-ring's verdict on the index.
    assert!(
        matches!(&e, Error::Closed(Some(c)) if matches!(**c, Error::Ring(_))),
        "{e:?}"
    );
    assert_eq!(pore_core::Error::kind(&e), pore_core::ErrorKind::Closed);
    assert!(!pore_core::Error::is_peer_gone(&e));
}

#[test]
fn server_error_field_stops_the_transport() {
    let (server, client) = pair();
    let err = core::mem::offset_of!(pore_ring::xenstore::XenstoreDomainInterface, error);
    server.store_u32(err, 1, Ordering::Release);
    let r = Client::with_transport(Box::new(RingTransport::from_pore(client)), config());
    assert!(r.is_err(), "a ring the server marked broken is refused");
}

#[test]
fn a_gone_server_is_peer_gone_at_this_layer() {
    let (server, client) = pair();
    let xs = Client::with_transport(Box::new(RingTransport::from_pore(client)), config()).unwrap();
    // The server's side goes away (its port closes) without answering.
    drop(server);
    let e = xs.read("/a").unwrap_err();
    assert!(pore_core::Error::is_peer_gone(&e), "{e:?}");
    // The backend's error is kept as the source.
    let mut source = std::error::Error::source(&e);
    let mut found = false;
    while let Some(s) = source {
        found |= s.downcast_ref::<pore_core::CoreError>().is_some();
        source = s.source();
    }
    assert!(found, "the loopback's error is in the chain: {e:?}");
    // Later calls say the same.
    assert!(pore_core::Error::is_peer_gone(&xs.read("/b").unwrap_err()));
}
