//! The embedded xenstored (pore-xenstore's server) as the simulation's store service: domains,
//! threads or processes, reach it through their own store ring page and port (D7, D19).

#![cfg(feature = "xenstored")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pore_backend_sim::process::{self, run_child_role};
use pore_backend_sim::{Hypervisor, SimDomain};
use pore_xenstore::server::{Config as ServerConfig, Server};
use pore_xenstore::transport::RingTransport;
use pore_xenstore::{Client, Config};

const WAIT: Duration = Duration::from_secs(10);

fn guest_client(dom: &SimDomain) -> Client {
    let transport = RingTransport::open_store(dom).expect("store page");
    Client::with_transport(Box::new(transport), Config::default()).expect("client")
}

fn child(role: &str, _args: &[String]) -> i32 {
    if role != "guest" {
        return 2;
    }
    let dom = SimDomain::connect().expect("broker");
    let xs = guest_client(&dom);
    let me = format!("/local/domain/{}", dom.id());
    let name = xs.read(&format!("{me}/name")).expect("read name");
    xs.write(&format!("{me}/data/hello"), b"from a process")
        .expect("write");
    process::report(&format!("{} {}", dom.id(), String::from_utf8_lossy(&name)));
    // Stay until killed.
    let _ = process::listen(WAIT);
    0
}

fn dom0_client(server: &Server, tag: &str) -> (Client, pore_xenstore::server::Listener) {
    let path = std::env::temp_dir().join(format!("pore-sim-xs-{tag}-{}", std::process::id()));
    let listener = server.listen_unix(&path).expect("listen");
    (Client::connect_unix(&path).expect("dom0 client"), listener)
}

fn wait_gone(xs: &Client, path: &str) {
    let deadline = Instant::now() + WAIT;
    while xs.read(path).is_ok() {
        assert!(Instant::now() < deadline, "{path} still exists");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_thread_domain_uses_xenstore_through_its_store_page() {
    run_child_role(child);
    let hv = Hypervisor::new().unwrap();
    let server = Server::new(ServerConfig::default(), None);
    hv.set_store_service(Arc::new(server.clone()));
    let (dom0, _listener) = dom0_client(&server, "thread");
    let guest = hv.create_domain("guest-thread").unwrap();
    let me = format!("/local/domain/{}", guest.id());
    let xs = guest_client(&guest);
    assert_eq!(xs.read(&format!("{me}/name")).unwrap(), b"guest-thread");
    assert_eq!(
        xs.read(&format!("{me}/domid")).unwrap(),
        guest.id().to_string().as_bytes()
    );
    xs.write(&format!("{me}/data/x"), b"42").unwrap();
    assert_eq!(dom0.read(&format!("{me}/data/x")).unwrap(), b"42");
    // The guest may not write outside its own tree.
    assert!(xs.write("/local/domain/0/evil", b"1").is_err());
    drop(xs);
    drop(guest);
    wait_gone(&dom0, &me);
    hv.assert_cleaned_up();
    server.shutdown();
}

#[test]
fn a_process_domain_uses_xenstore_and_is_released_when_killed() {
    run_child_role(child);
    let hv = Hypervisor::start_unexported().unwrap();
    let server = Server::new(ServerConfig::default(), None);
    hv.set_store_service(Arc::new(server.clone()));
    let (dom0, _listener) = dom0_client(&server, "process");
    let mut p = hv
        .domain_command("guest")
        .unwrap()
        .name("guest-process")
        .test("a_process_domain_uses_xenstore_and_is_released_when_killed")
        .spawn()
        .unwrap();
    let line = p.read_report(WAIT).unwrap();
    let (id, name) = line.split_once(' ').unwrap();
    assert_eq!(name, "guest-process");
    let me = format!("/local/domain/{id}");
    assert_eq!(
        dom0.read(&format!("{me}/data/hello")).unwrap(),
        b"from a process"
    );
    p.kill().unwrap();
    wait_gone(&dom0, &me);
    hv.assert_cleaned_up();
    server.shutdown();
}

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with(prefix))
        .count()
}

#[test]
fn many_domains_are_served_by_the_event_loop_without_a_thread_each() {
    let hv = Hypervisor::new().unwrap();
    let server = Server::new(ServerConfig::default(), None);
    hv.set_store_service(Arc::new(server.clone()));
    let (dom0, _listener) = dom0_client(&server, "many");
    let guests: Vec<SimDomain> = (0..60)
        .map(|i| hv.create_domain(&format!("many-{i}")).unwrap())
        .collect();
    let clients: Vec<Client> = guests.iter().map(guest_client).collect();
    for (i, (g, xs)) in guests.iter().zip(&clients).enumerate() {
        let me = format!("/local/domain/{}", g.id());
        assert_eq!(
            xs.read(&format!("{me}/name")).unwrap(),
            format!("many-{i}").as_bytes()
        );
        xs.write(&format!("{me}/data/i"), i.to_string().as_bytes())
            .unwrap();
    }
    for (i, g) in guests.iter().enumerate() {
        let me = format!("/local/domain/{}", g.id());
        assert_eq!(
            dom0.read(&format!("{me}/data/i")).unwrap(),
            i.to_string().as_bytes()
        );
    }
    // No thread per guest: one loop, and one readiness watcher per hypervisor of this
    // test binary (other tests run alongside).
    assert_eq!(threads_named("xsd-dom"), 0);
    assert!(threads_named("pore-sim-ready") < 10);
    drop(clients);
    let last = format!("/local/domain/{}", guests[59].id());
    drop(guests);
    wait_gone(&dom0, &last);
    server.shutdown();
}
