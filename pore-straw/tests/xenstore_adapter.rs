//! Two managers on pore-xenstore's own xenstored (unix socket) through `XsAdapter`, with the
//! loopback backend for the pores.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pore_core::loopback::Loopback;
use pore_core::DomId;
use pore_straw::handshake::HandshakeConfig;
use pore_straw::manager::{Manager, ManagerConfig};
use pore_straw::straw::StrawError;
use pore_straw::xenstore::XsAdapter;
use pore_straw::Endpoint;
use pore_xenstore::server::{Config as ServerConfig, Server};
use pore_xenstore::Client;

#[test]
fn handshake_talk_and_close_over_a_real_xenstored() {
    let dir = std::env::temp_dir().join(format!("pore-straw-xs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("xs.sock");
    let _ = std::fs::remove_file(&sock);
    let server = Server::new(ServerConfig::default(), None);
    let listener = server.listen_unix(&sock).unwrap();

    let cfg = ManagerConfig {
        handshake: HandshakeConfig {
            v2_pages: None, // the loopback maps whole grants only
            handshake_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(2),
            ..HandshakeConfig::default()
        },
        ..ManagerConfig::default()
    };
    let xen = Loopback::new();
    let xs1 = XsAdapter::new(Arc::new(Client::connect_unix(&sock).unwrap()));
    let xs2 = XsAdapter::new(Arc::new(Client::connect_unix(&sock).unwrap()));
    let probe = Client::connect_unix(&sock).unwrap();
    let (e1, e2) = (
        Endpoint::new(DomId(1), "t").unwrap(),
        Endpoint::new(DomId(2), "t").unwrap(),
    );
    let m1 = Manager::start(xen.domain(DomId(1)), xs1, e1.clone(), cfg.clone()).unwrap();
    let m2 = Manager::start(xen.domain(DomId(2)), xs2, e2.clone(), cfg).unwrap();
    // A privileged connection could create anything: the opener still says "not found" at once.
    let t = std::time::Instant::now();
    assert!(matches!(
        m1.open(&Endpoint::new(DomId(9), "t").unwrap()),
        Err(pore_straw::manager::ManagerError::Handshake(
            pore_straw::HandshakeError::PeerNotFound
        ))
    ));
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(
        probe.try_read("/local/domain/9/data/straw-t").unwrap(),
        None
    );
    let s1 = m1.open(&e2).unwrap();
    let s2 = m2.accept(Duration::from_secs(5)).unwrap();
    assert_eq!(
        probe
            .read("/local/domain/2/data/straw-t/1-t/state")
            .unwrap(),
        b"4"
    );
    assert_eq!(
        probe
            .read("/local/domain/1/data/warts-t/2-t/state")
            .unwrap(),
        b"4"
    );
    s1.sender()
        .send(Bytes::from_static(b"over xenstored"))
        .unwrap();
    assert_eq!(s2.receiver().recv().unwrap(), "over xenstored");
    s2.close().unwrap();
    assert_eq!(
        s1.receiver().recv_timeout(Duration::from_secs(3)),
        Err(StrawError::Eof)
    );
    m1.shutdown();
    m2.shutdown();
    assert_eq!(
        probe.try_read("/local/domain/1/data/warts-t").unwrap(),
        None
    );
    assert_eq!(
        probe.try_read("/local/domain/2/data/straw-t").unwrap(),
        None
    );
    drop(probe);
    server.shutdown();
    listener.join();
    let _ = std::fs::remove_dir_all(&dir);
}
