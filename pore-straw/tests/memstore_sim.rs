//! The manager without a xenstored: domains of the simulated Xen (pore-backend-sim) find each
//! other through the in-memory store (`memstore`), both layouts; either half closes and the
//! peer sees the end of the stream; a domain the toolstack removes is seen gone.

#![cfg(target_os = "linux")]

use std::thread;
use std::time::Duration;

use bytes::Bytes;
use pore_backend_sim::{Hypervisor, SimDomain};
use pore_core::Error as _;
use pore_straw::handshake::HandshakeConfig;
use pore_straw::manager::{Manager, ManagerConfig};
use pore_straw::memstore::{MemoryStore, MemoryStoreClient};
use pore_straw::straw::StrawError;
use pore_straw::{Endpoint, Layout};

fn cfg(v2: bool) -> ManagerConfig {
    ManagerConfig {
        handshake: HandshakeConfig {
            v2_pages: v2.then_some(4),
            // Roomy: nothing here times out on purpose.
            handshake_timeout: Duration::from_secs(20),
            close_timeout: Duration::from_secs(10),
            ..HandshakeConfig::default()
        },
        ..ManagerConfig::default()
    }
}

fn start(
    store: &MemoryStore,
    dom: SimDomain,
    cfg: ManagerConfig,
) -> (Manager<SimDomain, MemoryStoreClient>, Endpoint) {
    store.add_domain(dom.id());
    let me = Endpoint::seed(dom.id());
    let xs = store.client(dom.id());
    (Manager::start(dom, xs, me.clone(), cfg).unwrap(), me)
}

#[test]
fn managers_on_the_simulated_xen_without_a_xenstored() {
    for v2 in [false, true] {
        let hv = Hypervisor::new().unwrap();
        let store = MemoryStore::new();
        let (ma, _) = start(&store, hv.create_domain("a").unwrap(), cfg(v2));
        let (mb, eb) = start(&store, hv.create_domain("b").unwrap(), cfg(v2));
        let sa = ma.open(&eb).unwrap();
        let sb = mb.accept(Duration::from_secs(20)).unwrap();
        let want = if v2 {
            Layout::V2 { ring_pages: 4 }
        } else {
            Layout::Ling
        };
        assert_eq!((sa.layout(), sb.layout()), (want, want));
        let t = Duration::from_secs(20);
        let big = Bytes::from(vec![7u8; 300_000]);
        let echo = thread::spawn(move || {
            let f = sb.receiver().recv_timeout(t).unwrap();
            sb.sender().send(f).unwrap();
            // The receiving half closes the straw.
            let (tx, rx) = sb.split();
            rx.close().unwrap();
            assert_eq!(
                tx.send(Bytes::from_static(b"late")),
                Err(StrawError::Closed)
            );
        });
        sa.sender().send(big.clone()).unwrap();
        assert_eq!(sa.receiver().recv_timeout(t).unwrap(), big, "v2={v2}");
        assert_eq!(
            sa.receiver().recv_timeout(t),
            Err(StrawError::Eof),
            "v2={v2}"
        );
        echo.join().unwrap();
        sa.close().unwrap();
        ma.shutdown();
        mb.shutdown();
        let o = hv.outstanding();
        assert!(o.is_clean(), "v2={v2}: {o:?}");
    }
}

#[test]
fn a_domain_the_toolstack_removes_is_seen_gone() {
    let hv = Hypervisor::new().unwrap();
    let store = MemoryStore::new();
    let (ma, _) = start(&store, hv.create_domain("a").unwrap(), cfg(true));
    let b = hv.create_domain("b").unwrap();
    let b_id = b.id();
    let mut short = cfg(true);
    short.handshake.close_timeout = Duration::from_millis(500);
    short.straw.close_timeout = Duration::from_millis(500);
    let (mb, eb) = start(&store, b, short);
    let sa = ma.open(&eb).unwrap();
    let sb = mb.accept(Duration::from_secs(20)).unwrap();
    // The toolstack removes b's home (as when the domain dies); its pages stay mapped here.
    store.remove_domain(b_id);
    let r = sa.receiver().recv_timeout(Duration::from_secs(20));
    assert!(r.as_ref().is_err_and(|e| e.is_peer_gone()), "{r:?}");
    drop((sa, sb));
    ma.shutdown();
    // b's manager lives on in a domain without a home (its watches went with it): its straw's
    // close chart can only time out, after b's short close timeout.
    mb.shutdown();
}
