//! Domains as processes: each child re-runs its test function in a role (see
//! `pore_backend_sim::process`), reaches the broker through `PORE_SIM_SOCKET`, and talks to its
//! parent with report lines (stdout) and told lines (stdin).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pore_backend_sim::process::{self, run_child_role};
use pore_backend_sim::{DomainProcess, Hypervisor, SimDomain, StoreLink, StoreService};
use pore_core::{
    DomId, Error, ErrorKind, EventChannel, Events, GrantRef, Pore, Port, SharedAccess,
    SharedMemory, UnmapNotify, WaitOutcome, PAGE_SIZE,
};

const WAIT: Duration = Duration::from_secs(10);
/// The active side's "live" byte, cleared by unmap-notify when it goes away.
const LIVE: usize = 64;
const ROUNDS: u32 = 100;
const STOP: u32 = u32::MAX;

// ---------------------------------------------------------------------------------------------
// Child roles

fn child(role: &str, args: &[String]) -> i32 {
    let result = match role {
        "active" => active_role(args),
        "passive" => passive_role(),
        "store" => store_role(),
        other => Err(format!("unknown role {other}")),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("domain process role {role} failed: {e}");
            1
        }
    }
}

fn info_line(dom: DomId, pore: &Pore<SimDomain>) -> String {
    let info = pore.info();
    let refs: Vec<String> = info.refs.iter().map(|r| r.0.to_string()).collect();
    format!("dom={} port={} refs={}", dom.0, info.port.0, refs.join(","))
}

struct Info {
    dom: DomId,
    port: Port,
    refs: Vec<GrantRef>,
}

fn parse_info(line: &str) -> Info {
    let mut info = Info {
        dom: DomId(0),
        port: Port(0),
        refs: Vec::new(),
    };
    for field in line.split_whitespace() {
        let (k, v) = field.split_once('=').expect("key=value");
        match k {
            "dom" => info.dom = DomId(v.parse().unwrap()),
            "port" => info.port = Port(v.parse().unwrap()),
            "refs" => {
                info.refs = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|r| GrantRef(r.parse().unwrap()))
                    .collect()
            }
            _ => {}
        }
    }
    info
}

/// Grants pages to `args[0]`, reports them, then plays `args[2]`: `echo`, `hang` or `poke-once`.
fn active_role(args: &[String]) -> Result<(), String> {
    let peer = DomId(args[0].parse().map_err(|e| format!("{e}"))?);
    let pages: usize = args[1].parse().map_err(|e| format!("{e}"))?;
    let dom = SimDomain::connect().map_err(|e| e.to_string())?;
    let mut pore = Pore::open_active(&dom, peer, pages).map_err(|e| e.to_string())?;
    pore.store_u8(LIVE, 1, Ordering::Release);
    pore.set_unmap_notify(UnmapNotify {
        clear_byte: Some(LIVE),
        send_event: Some(pore.info().port),
    })
    .map_err(|e| e.to_string())?;
    process::report(&info_line(dom.id(), &pore));
    match args[2].as_str() {
        "echo" => loop {
            if pore.channel().wait(WAIT).map_err(|e| e.to_string())? == WaitOutcome::Timeout {
                return Err("echo: no request".into());
            }
            let v = pore.load_u32(0, Ordering::Acquire);
            if v == STOP {
                break;
            }
            // Data both ways: echo the value, and a byte pattern on the last page.
            pore.write_bytes((pages - 1) * PAGE_SIZE + 100, &v.to_le_bytes());
            pore.store_u32(4, v + 1000, Ordering::Release);
            pore.notify().map_err(|e| e.to_string())?;
        },
        "hang" => std::thread::sleep(Duration::from_secs(60)),
        "poke-once" => {
            while pore.channel().wait(WAIT).map_err(|e| e.to_string())? != WaitOutcome::Event {}
            pore.notify().map_err(|e| e.to_string())?;
            // Stay until the parent is done with us (it closes or the test ends).
            let _ = pore.channel().wait(WAIT);
        }
        other => return Err(format!("unknown mode {other}")),
    }
    match pore.close() {
        Ok(()) => Ok(()),
        // The peer may still map our pages: they go to the revoke-later list.
        Err(e) if e.kind() == ErrorKind::Busy => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Reports its domid, is told the active side's info, then runs `ROUNDS` echo rounds.
fn passive_role() -> Result<(), String> {
    let dom = SimDomain::connect().map_err(|e| e.to_string())?;
    process::report(&format!("dom={}", dom.id().0));
    let info = parse_info(&process::listen(WAIT).map_err(|e| e.to_string())?);
    let pore =
        Pore::open_passive(&dom, info.dom, &info.refs, info.port).map_err(|e| e.to_string())?;
    echo_rounds(&pore)?;
    process::report("done");
    pore.close().map_err(|e| e.to_string())
}

fn echo_rounds(pore: &Pore<SimDomain>) -> Result<(), String> {
    let last_page = pore.len() - PAGE_SIZE;
    for i in 1..=ROUNDS {
        pore.store_u32(0, i, Ordering::Release);
        pore.notify().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + WAIT;
        while pore.load_u32(4, Ordering::Acquire) != i + 1000 {
            if Instant::now() > deadline {
                return Err(format!("round {i}: no echo"));
            }
            pore.channel().wait(WAIT).map_err(|e| e.to_string())?;
        }
        let mut echoed = [0u8; 4];
        pore.read_bytes(last_page + 100, &mut echoed);
        if u32::from_le_bytes(echoed) != i {
            return Err(format!("round {i}: wrong echo bytes"));
        }
    }
    pore.store_u32(0, STOP, Ordering::Release);
    pore.notify().map_err(|e| e.to_string())
}

/// Pings the store service through the domain's own store page and port.
fn store_role() -> Result<(), String> {
    let dom = SimDomain::connect().map_err(|e| e.to_string())?;
    let pore = Pore::open_store(&dom).map_err(|e| e.to_string())?;
    pore.write_bytes(0, b"ping");
    pore.notify().map_err(|e| e.to_string())?;
    let mut got = [0u8; 4];
    let deadline = Instant::now() + WAIT;
    loop {
        pore.read_bytes(1024, &mut got);
        if &got == b"pong" {
            break;
        }
        if Instant::now() > deadline {
            return Err("no pong".into());
        }
        pore.channel().wait(WAIT).map_err(|e| e.to_string())?;
    }
    process::report("store ok");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers of the parent

fn spawn(hv: &Hypervisor, test: &str, role: &str, args: &[String]) -> DomainProcess {
    let mut cmd = hv.domain_command(role).unwrap().test(test);
    for a in args {
        cmd = cmd.arg(a.clone());
    }
    cmd.spawn().unwrap()
}

fn exits_ok(p: &mut DomainProcess) {
    let status = p
        .wait_timeout(WAIT)
        .unwrap()
        .expect("the domain process exits");
    assert!(status.success(), "domain process failed: {status}");
}

fn wait_peer_gone(ch: &impl EventChannel) {
    let deadline = Instant::now() + WAIT;
    loop {
        match ch.wait(Duration::from_millis(100)) {
            Err(e) if e.is_peer_gone() => return,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => assert!(Instant::now() < deadline, "the peer never went"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn pore_between_a_thread_domain_and_a_process_domain() {
    run_child_role(child);
    let hv = Hypervisor::start_unexported().unwrap();
    let a = hv.create_domain("parent").unwrap();
    let mut p = spawn(
        &hv,
        "pore_between_a_thread_domain_and_a_process_domain",
        "active",
        &[a.id().0.to_string(), "3".into(), "echo".into()],
    );
    let info = parse_info(&p.read_report(WAIT).unwrap());
    assert_eq!(info.refs.len(), 3);
    let pore = Pore::open_passive(&a, info.dom, &info.refs, info.port).unwrap();
    assert_eq!(pore.load_u8(LIVE, Ordering::Acquire), 1);
    echo_rounds(&pore).unwrap();
    exits_ok(&mut p);
    assert!(hv.wait_dead(info.dom, WAIT));
    // The child ended its grant while we still mapped it: deferred, and its live byte cleared.
    assert_eq!(pore.load_u8(LIVE, Ordering::Acquire), 0);
    assert_eq!(hv.outstanding().revoke_later, 3);
    wait_peer_gone(pore.channel());
    pore.close().unwrap();
    hv.assert_cleaned_up();
}

#[test]
fn pore_between_two_process_domains() {
    run_child_role(child);
    let hv = Hypervisor::start_unexported().unwrap();
    let test = "pore_between_two_process_domains";
    let mut passive = spawn(&hv, test, "passive", &[]);
    let passive_dom = parse_info(&passive.read_report(WAIT).unwrap()).dom;
    let mut active = spawn(
        &hv,
        test,
        "active",
        &[passive_dom.0.to_string(), "2".into(), "echo".into()],
    );
    let line = active.read_report(WAIT).unwrap();
    let active_dom = parse_info(&line).dom;
    passive.tell(&line).unwrap();
    assert_eq!(passive.read_report(WAIT).unwrap(), "done");
    exits_ok(&mut passive);
    exits_ok(&mut active);
    assert!(hv.wait_dead(passive_dom, WAIT));
    assert!(hv.wait_dead(active_dom, WAIT));
    hv.assert_cleaned_up();
    assert_eq!(hv.outstanding().domains, 0);
}

#[test]
fn a_killed_domain_process_is_detected_and_released() {
    run_child_role(child);
    let hv = Hypervisor::start_unexported().unwrap();
    let a = hv.create_domain("parent").unwrap();
    let mut p = spawn(
        &hv,
        "a_killed_domain_process_is_detected_and_released",
        "active",
        &[a.id().0.to_string(), "1".into(), "hang".into()],
    );
    let info = parse_info(&p.read_report(WAIT).unwrap());
    let pore = Pore::open_passive(&a, info.dom, &info.refs, info.port).unwrap();
    assert_eq!(pore.load_u8(LIVE, Ordering::Acquire), 1);
    assert_eq!(hv.outstanding_of(info.dom).grants, 1);
    assert_eq!(hv.outstanding_of(info.dom).ports, 1);
    p.kill().unwrap();
    assert!(p.wait_timeout(WAIT).unwrap().is_some());
    assert!(hv.wait_dead(info.dom, WAIT));
    // Unmap-notify fired for the dead granter, then its port closed.
    assert_eq!(pore.load_u8(LIVE, Ordering::Acquire), 0);
    wait_peer_gone(pore.channel());
    assert!(pore.notify().unwrap_err().is_peer_gone());
    let out = hv.outstanding();
    assert_eq!((out.grants, out.revoke_later, out.ports), (1, 1, 1));
    pore.close().unwrap();
    hv.assert_cleaned_up();
}

#[test]
fn select_over_channels_to_several_processes() {
    run_child_role(child);
    let hv = Hypervisor::start_unexported().unwrap();
    let a = hv.create_domain("parent").unwrap();
    let mut kids: Vec<DomainProcess> = (0..3)
        .map(|_| {
            spawn(
                &hv,
                "select_over_channels_to_several_processes",
                "active",
                &[a.id().0.to_string(), "1".into(), "poke-once".into()],
            )
        })
        .collect();
    let pores: Vec<Pore<SimDomain>> = kids
        .iter_mut()
        .map(|k| {
            let info = parse_info(&k.read_report(WAIT).unwrap());
            Pore::open_passive(&a, info.dom, &info.refs, info.port).unwrap()
        })
        .collect();
    let chans: Vec<_> = pores.iter().map(|p| p.channel()).collect();
    let mut fired = Vec::new();
    a.select(&chans, Duration::from_millis(20), &mut fired)
        .unwrap();
    assert!(fired.is_empty());
    pores[1].notify().unwrap();
    a.select(&chans, WAIT, &mut fired).unwrap();
    assert_eq!(fired, vec![1]);
    pores[0].notify().unwrap();
    pores[2].notify().unwrap();
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < 2 {
        assert!(Instant::now() < deadline);
        a.select(&chans, WAIT, &mut fired).unwrap();
        seen.extend(fired.iter().copied());
    }
    assert_eq!(seen, BTreeSet::from([0, 2]));
    drop(chans);
    for p in pores {
        let _ = p.close();
    }
    for k in &mut kids {
        exits_ok(k);
    }
    drop(kids);
    let deadline = Instant::now() + WAIT;
    while !hv.outstanding().is_clean() {
        assert!(Instant::now() < deadline, "{:?}", hv.outstanding());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A second process of a live domain (D8): killed, it releases exactly its own grants and port,
/// its unmap-notify fires (byte cleared, event), and the domain with its creator's pore and its
/// store connection lives on.
#[test]
fn a_killed_joined_process_releases_only_its_own_and_fires_its_unmap_notify() {
    run_child_role(child);
    let hv = Hypervisor::start_unexported().unwrap();
    let store = Arc::new(RecordingStore::default());
    hv.set_store_service(store.clone());
    let a = hv.create_domain("a").unwrap();
    let b = hv.create_domain("b").unwrap();
    // The creator of `a` (this process) holds one pore to `b`.
    let ax = Pore::open_active(&a, b.id(), 2).unwrap();
    let bx = Pore::open_passive(&b, a.id(), &ax.info().refs, ax.info().port).unwrap();
    let creator_only = hv.outstanding_of(a.id());
    assert_eq!(
        (
            creator_only.grants,
            creator_only.mappings,
            creator_only.ports
        ),
        (2, 0, 1)
    );
    // A child process joins `a` and grants 3 pages to `b`, live byte and event armed.
    let mut p = hv
        .domain_command("active")
        .unwrap()
        .test("a_killed_joined_process_releases_only_its_own_and_fires_its_unmap_notify")
        .join(a.id())
        .arg(b.id().0.to_string())
        .arg("3")
        .arg("hang")
        .spawn()
        .unwrap();
    let info = parse_info(&p.read_report(WAIT).unwrap());
    assert_eq!(
        info.dom,
        a.id(),
        "the child joined the domain, it made none"
    );
    assert_eq!(hv.joined_contexts(a.id()), 1);
    let by = Pore::open_passive(&b, a.id(), &info.refs, info.port).unwrap();
    assert_eq!(by.load_u8(LIVE, Ordering::Acquire), 1);
    let both = hv.outstanding_of(a.id());
    assert_eq!((both.grants, both.mappings, both.ports), (2 + 3, 0, 1 + 1));

    p.kill().unwrap();
    assert!(p.wait_timeout(WAIT).unwrap().is_some());
    let deadline = Instant::now() + WAIT;
    while hv.joined_contexts(a.id()) != 0 {
        assert!(
            Instant::now() < deadline,
            "the broker never noticed the kill"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // The domain lives on; only the data path tells `b`: the live byte is clear, the event of
    // the unmap-notify came before the port closed.
    assert!(hv.is_alive(a.id()));
    assert_eq!(by.load_u8(LIVE, Ordering::Acquire), 0);
    assert_eq!(by.channel().wait(WAIT).unwrap(), WaitOutcome::Event);
    wait_peer_gone(by.channel());
    // The dead process's grants wait on the revoke-later list only because `b` maps them.
    let after = hv.outstanding_of(a.id());
    assert_eq!(
        (
            after.grants,
            after.revoke_later,
            after.mappings,
            after.ports
        ),
        (2 + 3, 3, 0, 1)
    );
    by.close().unwrap();
    assert_eq!(hv.outstanding_of(a.id()), creator_only);
    // The creator's pore is untouched and the store service never released the domain.
    ax.store_u32(0, 9, Ordering::Release);
    ax.notify().unwrap();
    assert_eq!(bx.channel().wait(WAIT).unwrap(), WaitOutcome::Event);
    assert_eq!(bx.load_u32(0, Ordering::Acquire), 9);
    assert!(store.released.lock().unwrap().is_empty());
    bx.close().unwrap();
    ax.close().unwrap();
    hv.assert_cleaned_up();
}

#[derive(Default)]
struct RecordingStore {
    introduced: Mutex<Vec<StoreLink>>,
    released: Mutex<Vec<DomId>>,
}

impl StoreService for RecordingStore {
    fn domain_introduced(&self, link: StoreLink) {
        self.introduced.lock().unwrap().push(link);
    }
    fn domain_released(&self, domid: DomId) {
        self.released.lock().unwrap().push(domid);
    }
}

#[test]
fn a_process_domain_reaches_the_store_service_through_its_store_page() {
    run_child_role(child);
    let hv = Hypervisor::start_unexported().unwrap();
    let store = Arc::new(RecordingStore::default());
    hv.set_store_service(store.clone());
    let mut p = spawn(
        &hv,
        "a_process_domain_reaches_the_store_service_through_its_store_page",
        "store",
        &[],
    );
    let deadline = Instant::now() + WAIT;
    while store.introduced.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    let domid = {
        let links = store.introduced.lock().unwrap();
        let link = &links[0];
        assert_eq!(link.name, "store");
        let mut got = [0u8; 4];
        while &got != b"ping" {
            assert!(Instant::now() < deadline);
            link.channel.wait(WAIT).unwrap();
            link.page.view().read_bytes(0, &mut got);
        }
        link.page.view().write_bytes(1024, b"pong");
        link.channel.notify().unwrap();
        link.domid
    };
    assert_eq!(p.read_report(WAIT).unwrap(), "store ok");
    exits_ok(&mut p);
    assert!(hv.wait_dead(domid, WAIT));
    assert_eq!(*store.released.lock().unwrap(), vec![domid]);
    hv.assert_cleaned_up();
}

#[test]
fn connect_without_a_broker_is_an_error() {
    run_child_role(child);
    let err =
        SimDomain::connect_to(std::path::Path::new("/nonexistent/pore-sim.sock"), "x").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    let hv = Hypervisor::new().unwrap();
    assert_eq!(
        hv.domain_command("x").unwrap_err().kind(),
        ErrorKind::Unsupported
    );
}
