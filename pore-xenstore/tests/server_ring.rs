//! Guests over a real xenstore ring: pore-core's in-memory loopback Xen gives a guest
//! page and event channel; our server serves it through `pore_ring::xenstore` (server
//! side) and the guest runs pore-xenstore's own client over the ring transport. Checks
//! unprivileged behaviour end to end: ownership, EACCES, relative paths and watches,
//! quotas with C's names, @introduceDomain/@releaseDomain, and a hostile guest that
//! breaks its ring without hurting anyone else.
#![cfg(feature = "std")]

use std::sync::atomic::Ordering;
use std::time::Duration;

use pore_core::loopback::{Loopback, LoopbackDomain};
use pore_core::{DomId, Events, Maps, Pore, SharedAccess};
use pore_xenstore::server::{Config, GuestLink, Quotas, Server};
use pore_xenstore::transport::RingTransport;
use pore_xenstore::{Client, ErrorName, Perm};

fn config() -> pore_xenstore::Config {
    pore_xenstore::Config {
        timeout: Duration::from_secs(5),
        ..pore_xenstore::Config::default()
    }
}

/// Gives guest `id` a store page and channel and introduces it (as the simulator's
/// toolstack does); returns the guest's side of the page.
fn introduce(xen: &Loopback, server: &Server, id: u16, name: &str) -> Pore<LoopbackDomain> {
    let (dom0, g) = (xen.domain(DomId(0)), xen.domain(DomId(id)));
    let page = Pore::open_active(&g, DomId(0), 1).unwrap();
    let info = page.info();
    let mapping = dom0.map(DomId(id), &info.refs).unwrap();
    let channel = dom0.bind_interdomain(DomId(id), info.port).unwrap();
    let link = GuestLink::from_pore(mapping, channel).unwrap();
    server.introduce_domain(DomId(id), name, link).unwrap();
    page
}

fn client(page: Pore<LoopbackDomain>) -> Client {
    Client::with_transport(Box::new(RingTransport::from_pore(page)), config()).unwrap()
}

fn name(e: pore_xenstore::Error) -> ErrorName {
    e.name()
        .cloned()
        .unwrap_or_else(|| panic!("not a daemon error: {e:?}"))
}

#[test]
fn guest_over_its_ring_is_unprivileged() {
    let quotas = Quotas {
        nodes_per_domain: 8,
        ..Quotas::default()
    };
    let server = Server::new(
        Config {
            quotas,
            ..Config::default()
        },
        None,
    );
    let xen = Loopback::new();
    let g = client(introduce(&xen, &server, 5, "guest-five"));

    // The toolstack's nodes, owned by the guest.
    assert_eq!(g.read("name").unwrap(), b"guest-five");
    assert_eq!(g.read("/local/domain/5/domid").unwrap(), b"5");
    assert_eq!(
        g.get_perms("data").unwrap(),
        vec!["n5".parse::<Perm>().unwrap()]
    );
    g.write("data/x", b"v").unwrap();
    assert_eq!(g.read("data/x").unwrap(), b"v");
    // What it may not do.
    assert_eq!(name(g.read("/tool").unwrap_err()), ErrorName::EACCES);
    assert_eq!(name(g.write("/top", b"1").unwrap_err()), ErrorName::EACCES);
    assert_eq!(name(g.read("/nowhere/x").unwrap_err()), ErrorName::EACCES);
    assert_eq!(name(g.read("data/nope").unwrap_err()), ErrorName::ENOENT);
    let n0: Vec<Perm> = vec!["n0".parse().unwrap()];
    assert_eq!(
        name(g.set_perms("data/x", &n0).unwrap_err()),
        ErrorName::EPERM
    );
    // Quota: home, name, domid, data, data/x = 5 of 8.
    g.write("data/a", b"").unwrap();
    g.write("data/b", b"").unwrap();
    g.write("data/c", b"").unwrap();
    assert_eq!(name(g.write("data/d", b"").unwrap_err()), ErrorName::ENOSPC);
    // A relative watch reports relative paths.
    let w = g.watch("data/x").unwrap();
    let ev = w.next_event(Duration::from_secs(5)).unwrap();
    assert_eq!(ev.path, "data/x");
    g.write("data/x", b"w").unwrap();
    let ev = w.next_event(Duration::from_secs(5)).unwrap();
    assert_eq!(ev.path, "data/x");
    // Transactions over the ring: within quota, then over it (C's ENOSPC).
    g.transaction(|tx| {
        let v = tx.read("data/x")?;
        tx.write("data/a", &v)
    })
    .unwrap();
    assert_eq!(g.read("data/a").unwrap(), b"w");
    let e = g
        .transaction(|tx| {
            let v = tx.read("data/x")?;
            tx.write("data/y-from-tx", &v)
        })
        .unwrap_err();
    assert_eq!(name(e), ErrorName::ENOSPC);
    drop(w);
    drop(g);
    assert!(server.release_domain(DomId(5)));
    server.shutdown();
}

#[test]
fn hostile_ring_hurts_no_one_else() {
    let server = Server::new(Config::default(), None);
    let xen = Loopback::new();
    let bad = introduce(&xen, &server, 7, "bad");
    let good = client(introduce(&xen, &server, 8, "good"));
    good.write("data/k", b"1").unwrap();
    // The bad guest claims 5000 bytes of requests in a 1024-byte ring.
    let req_prod = core::mem::offset_of!(pore_ring::xenstore::XenstoreDomainInterface, req_prod);
    bad.store_u32(req_prod, 5000, Ordering::Release);
    bad.notify().unwrap();
    let error = core::mem::offset_of!(pore_ring::xenstore::XenstoreDomainInterface, error);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while bad.load_u32(error, Ordering::Acquire) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the server marks the broken ring"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        bad.load_u32(error, Ordering::Acquire),
        pore_ring::xenstore::XENSTORE_ERROR_RINGIDX
    );
    // Everyone else carries on.
    assert_eq!(good.read("data/k").unwrap(), b"1");
    good.write("data/k", b"2").unwrap();
    assert!(server.with_store(|s| s.is_introduced(DomId(7))));
    server.shutdown();
}

#[test]
fn oversized_message_from_a_guest_closes_only_its_ring() {
    let server = Server::new(Config::default(), None);
    let xen = Loopback::new();
    let bad = introduce(&xen, &server, 9, "big");
    let good = client(introduce(&xen, &server, 10, "fine"));
    // A header announcing a 5000-byte payload.
    let mut hdr = Vec::new();
    for v in [2u32, 1, 0, 5000] {
        hdr.extend_from_slice(&v.to_le_bytes());
    }
    bad.write_bytes(0, &hdr);
    let req_prod = core::mem::offset_of!(pore_ring::xenstore::XenstoreDomainInterface, req_prod);
    bad.store_u32(req_prod, 16, Ordering::Release);
    bad.notify().unwrap();
    let error = core::mem::offset_of!(pore_ring::xenstore::XenstoreDomainInterface, error);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while bad.load_u32(error, Ordering::Acquire) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the server marks the ring"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        bad.load_u32(error, Ordering::Acquire),
        pore_ring::xenstore::XENSTORE_ERROR_PROTO
    );
    assert_eq!(good.read("name").unwrap(), b"fine");
    server.shutdown();
}
