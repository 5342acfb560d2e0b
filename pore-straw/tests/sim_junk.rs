//! A listener whose straw top a hostile domain litters, fills and poisons (issue 10, item 7),
//! with every domain a separate process of the simulated Xen reaching the embedded xenstored
//! through its own store ring as an unprivileged guest (as in `sim_processes.rs`).
//!
//! Everyone may write in a listener's `data/straw` (the seed's `b<me>`). A child whose name
//! fills the node up to C xenstored's 2048-byte record limit makes every later opener's
//! `mkdir` fail (ENOSPC), and with its permissions narrowed to its creator the listener cannot
//! remove it. The listener must get over it without losing a connected straw or a handshake in
//! progress.

#![cfg(all(target_os = "linux", feature = "xenstore"))]

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pore_backend_sim::process::{self, run_child_role};
use pore_backend_sim::{DomainProcess, Hypervisor, SimDomain};
use pore_core::{DomId, GrantRef, Port};
use pore_straw::handshake::{setup_ops, HandshakeConfig};
use pore_straw::manager::{Accounting, Manager, ManagerConfig, StoreClient};
use pore_straw::straw::{open_passive, StrawError};
use pore_straw::xenstore::XsAdapter;
use pore_straw::{Endpoint, Format, Layout, StrawPaths};
use pore_xenstore::server::Listener;
use pore_xenstore::transport::RingTransport;
use pore_xenstore::{Access, Client, Perm};

type Mgr = Manager<SimDomain, XsAdapter>;

/// Bound of every wait that should end much sooner.
const WAIT: Duration = Duration::from_secs(20);

const TEST: &str = "junk_in_the_straw_top_does_not_block_the_listener";

fn config() -> ManagerConfig {
    ManagerConfig {
        handshake: HandshakeConfig {
            // Long enough for the slow opener's handshake to outlive the poisoning.
            handshake_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(2),
            format: Format::Raw,
            v2_pages: None,
            ..HandshakeConfig::default()
        },
        top_check_interval: Duration::from_millis(300),
        ..ManagerConfig::default()
    }
}

/// A domain's own xenstore connection: its store ring page and port (unprivileged).
fn guest_client(dom: &SimDomain) -> Result<Arc<Client>, String> {
    let ring = RingTransport::open_store(dom).map_err(|e| format!("store ring: {e}"))?;
    let client = Client::with_transport(Box::new(ring), pore_xenstore::Config::default())
        .map_err(|e| format!("xenstored: {e}"))?;
    Ok(Arc::new(client))
}

fn wait_value(xs: &Client, path: &str, want: &[u8]) -> Result<(), String> {
    let end = Instant::now() + WAIT;
    loop {
        match xs.read(path) {
            Ok(v) if v == want => return Ok(()),
            _ if Instant::now() >= end => return Err(format!("{path} never became {want:?}")),
            _ => thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn line_domain(line: &str, verb: &str) -> Result<Endpoint, String> {
    line.strip_prefix(verb)
        .and_then(|r| r.strip_prefix(' '))
        .and_then(|n| n.parse().ok())
        .map(|d| Endpoint::seed(DomId(d)))
        .ok_or_else(|| format!("expected `{verb} DOMID`, got {line:?}"))
}

// ----- the children -----

fn child(role: &str, _args: &[String]) -> i32 {
    let r = match role {
        "opener" => role_opener(),
        "slow-opener" => role_slow_opener(),
        "junk" => role_junk(),
        other => Err(format!("unknown role {other}")),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            process::report(&format!("error {e}"));
            1
        }
    }
}

/// `opener`: told `open A`, opens a straw to `A` (reporting `opened`, or the error), echoes
/// every frame until the end of the stream, then reports `done`.
fn role_opener() -> Result<(), String> {
    let dom = SimDomain::connect().map_err(|e| format!("broker: {e}"))?;
    let xs = guest_client(&dom)?;
    let me = Endpoint::seed(dom.id());
    let m = Manager::start(dom, XsAdapter::new(xs), me.clone(), config())
        .map_err(|e| format!("manager: {e}"))?;
    process::report(&format!("ready {}", me.domid.0));
    let line = process::listen(WAIT).map_err(|e| e.to_string())?;
    let a = line_domain(&line, "open")?;
    let s = m.open(&a).map_err(|e| format!("open: {e}"))?;
    process::report("opened");
    loop {
        match s.receiver().recv_timeout(WAIT) {
            Ok(f) => s.sender().send(f).map_err(|e| format!("echo: {e}"))?,
            Err(StrawError::Eof) => break,
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    let _ = s.close();
    m.shutdown();
    process::report("done");
    Ok(())
}

/// `slow-opener`: an opener driven by hand, so that its handshake can wait halfway. Told
/// `knock A`, knocks (LING only) and waits for `A`'s pages and port (`published REF1`); told
/// `finish`, checks that they are still there, maps them, says Connected and waits for `A`'s
/// Connected (`connected`); told `exit`, says Closed and exits.
fn role_slow_opener() -> Result<(), String> {
    let dom = SimDomain::connect().map_err(|e| format!("broker: {e}"))?;
    let xs = guest_client(&dom)?;
    let me = Endpoint::seed(dom.id());
    let adapter = XsAdapter::new(xs.clone());
    for op in setup_ops(&me) {
        adapter.perform(&op).map_err(|e| format!("{op}: {e}"))?;
    }
    process::report(&format!("ready {}", me.domid.0));
    let a = line_domain(&process::listen(WAIT).map_err(|e| e.to_string())?, "knock")?;
    let paths = StrawPaths::new(&me, &a);
    let mine = |access| {
        [
            Perm::new(Access::None, u32::from(me.domid.0)),
            Perm::new(access, u32::from(a.domid.0)),
        ]
    };
    xs.mkdir(&paths.straw_dir)
        .and_then(|()| xs.set_perms(&paths.straw_dir, &mine(Access::Both)))
        .map_err(|e| format!("knock directory: {e}"))?;
    xs.transaction(|t| {
        t.mkdir(&paths.warts_dir)?;
        t.set_perms(&paths.warts_dir, &mine(Access::Read))?;
        t.write(&paths.warts("straw"), paths.straw_dir.as_bytes())?;
        t.write(&paths.warts("state"), b"2")?;
        t.write(&paths.warts("format"), b"raw")?;
        t.write(&paths.warts("straw-layouts"), b"ling")?;
        t.write(&paths.straw("warts"), paths.warts_dir.as_bytes())
    })
    .map_err(|e| format!("knocking: {e}"))?;
    wait_value(&xs, &paths.straw("state"), b"3")?;
    let read = |key: &str| -> Result<u32, String> {
        let v = xs
            .read(&paths.straw(key))
            .map_err(|e| format!("{key}: {e}"))?;
        String::from_utf8_lossy(&v)
            .parse()
            .map_err(|e| format!("{key}: {e}"))
    };
    let ref1 = read("ring-ref-1")?;
    process::report(&format!("published {ref1}"));
    let line = process::listen(WAIT).map_err(|e| e.to_string())?;
    if line != "finish" {
        return Err(format!("bad line {line}"));
    }
    let state = xs
        .read(&paths.straw("state"))
        .map_err(|e| format!("state: {e}"))?;
    if state != b"3" || read("ring-ref-1")? != ref1 {
        return Err(format!("the listener's keys changed: state {state:?}"));
    }
    let refs = (1..=8)
        .map(|i| read(&format!("ring-ref-{i}")).map(GrantRef))
        .collect::<Result<Vec<_>, _>>()?;
    let port = Port(read("event-channel")?);
    let pore = open_passive(&dom, a.domid, Layout::Ling, &refs, port)
        .map_err(|e| format!("mapping: {e}"))?;
    xs.write(&paths.warts("state"), b"4")
        .map_err(|e| format!("connected: {e}"))?;
    wait_value(&xs, &paths.straw("state"), b"4")?;
    process::report("connected");
    let line = process::listen(WAIT).map_err(|e| e.to_string())?;
    drop(pore);
    let _ = xs.write(&paths.warts("state"), b"6");
    if line != "exit" {
        return Err(format!("bad line {line}"));
    }
    Ok(())
}

/// `junk`: told `litter A`, writes a child with a long name in `A`'s straw top (`littered`);
/// told `poison A`, writes one whose name fills the top up to its 2048-byte record and narrows
/// it to itself, then checks that nobody can add a child there (`poisoned`); told `exit`,
/// exits.
fn role_junk() -> Result<(), String> {
    let dom = SimDomain::connect().map_err(|e| format!("broker: {e}"))?;
    let xs = guest_client(&dom)?;
    let me = DomId(dom.id().0);
    process::report(&format!("ready {}", me.0));
    loop {
        let line = process::listen(WAIT).map_err(|e| e.to_string())?;
        if line == "exit" {
            return Ok(());
        }
        let (verb, a) = match line.split_once(' ') {
            Some((v, _)) => (v.to_string(), line_domain(&line, v)?),
            None => return Err(format!("bad line {line}")),
        };
        let top = a.straw_top();
        match verb.as_str() {
            "litter" => {
                xs.write(&format!("{top}/{}", "y".repeat(1000)), b"")
                    .map_err(|e| format!("litter: {e}"))?;
                process::report("littered");
            }
            "poison" => {
                // C xenstored's record: 24 bytes, 8 per permission, the value, and each child
                // name with its NUL; a child may be added while the record stays below 2048.
                // (A's own short-lived probe may come and go meanwhile: fill what is left.)
                let mut filled = 0;
                for round in 0..10u8 {
                    let perms = xs.get_perms(&top).map_err(|e| format!("perms: {e}"))?;
                    let children = xs.directory(&top).map_err(|e| format!("directory: {e}"))?;
                    let used =
                        24 + 8 * perms.len() + children.iter().map(|c| c.len() + 1).sum::<usize>();
                    let Some(len) = 2048usize.checked_sub(used + 2).filter(|l| *l > 0) else {
                        break;
                    };
                    let junk =
                        format!("{top}/{}", char::from(b'x' - round).to_string().repeat(len));
                    if xs.write(&junk, b"").is_ok() {
                        match xs.set_perms(&junk, &[Perm::new(Access::None, u32::from(me.0))]) {
                            Ok(()) => filled += len,
                            // A's top check removed it before we narrowed it: try again.
                            Err(e) if e.is_not_found() => continue,
                            Err(e) => return Err(format!("narrowing the poison: {e}")),
                        }
                    }
                }
                if xs.mkdir(&format!("{top}/{}", me.0)).is_ok() {
                    return Err("the poisoned top still takes a child".into());
                }
                process::report(&format!("poisoned {filled}"));
            }
            "crowd" => {
                // Children named as J's own endpoints, all at once, filling the top (C's
                // record again): nothing A could call junk by its name.
                let perms = xs.get_perms(&top).map_err(|e| format!("perms: {e}"))?;
                let children = xs.directory(&top).map_err(|e| format!("directory: {e}"))?;
                let used =
                    24 + 8 * perms.len() + children.iter().map(|c| c.len() + 1).sum::<usize>();
                // A child of length l fits while l + 1 < gap.
                let mut gap = 2048 - used;
                let prefix = format!("{}-", me.0);
                let width = 40 - prefix.len() - 1;
                let mut names = Vec::new();
                while gap > 42 {
                    names.push(format!("{prefix}c{:0width$}", names.len()));
                    gap -= 41;
                }
                // The last one leaves no room for any other.
                let last = gap - 2;
                if last > prefix.len() {
                    names.push(format!("{prefix}d{}", "0".repeat(last - prefix.len() - 1)));
                }
                xs.transaction(|t| {
                    for n in &names {
                        t.mkdir(&format!("{top}/{n}"))?;
                    }
                    Ok(())
                })
                .map_err(|e| format!("crowding: {e}"))?;
                if xs.mkdir(&format!("{top}/{prefix}z")).is_ok() {
                    return Err("the crowded top still takes a child".into());
                }
                process::report(&format!("crowded {}", names.len()));
            }
            other => return Err(format!("bad verb {other}")),
        }
    }
}

// ----- the parent -----

/// The toolstack: the hypervisor with its broker and xenstored, and a dom0 connection to it.
struct World {
    dom0: Client,
    _listener: Listener,
    sock: PathBuf,
    hv: Hypervisor,
}

impl World {
    fn new(tag: &str) -> World {
        let hv = Hypervisor::start_unexported().unwrap();
        let sock =
            std::env::temp_dir().join(format!("pore-straw-junk-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&sock);
        let listener = hv.xenstored().unwrap().listen_unix(&sock).unwrap();
        let dom0 = Client::connect_unix(&sock).unwrap();
        World {
            dom0,
            _listener: listener,
            sock,
            hv,
        }
    }

    fn manager(&self, cfg: ManagerConfig) -> (Mgr, Endpoint) {
        let dom = self.hv.create_domain("a").unwrap();
        let xs = guest_client(&dom).unwrap();
        let me = Endpoint::seed(dom.id());
        let m = Manager::start(dom, XsAdapter::new(xs), me.clone(), cfg).unwrap();
        (m, me)
    }

    fn spawn(&self, role: &str) -> (DomainProcess, Endpoint) {
        let mut child = self
            .hv
            .domain_command(role)
            .unwrap()
            .test(TEST)
            .spawn()
            .unwrap();
        let line = child.read_report(WAIT).unwrap();
        let id: u16 = line
            .strip_prefix("ready ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{role}: {line}"));
        (child, Endpoint::seed(DomId(id)))
    }

    /// Waits (up to `within`) until no child of `top` is longer than `len`.
    fn no_child_longer(&self, top: &str, len: usize, within: Duration) -> bool {
        let end = Instant::now() + within;
        loop {
            let children = self.dom0.directory(top).unwrap();
            if children.iter().all(|c| c.len() <= len) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.sock);
    }
}

fn expect_report(child: &mut DomainProcess, want: &str) {
    let line = child.read_report(WAIT).unwrap();
    assert_eq!(line, want);
}

fn expect_exit_ok(child: &mut DomainProcess) {
    let status = child.wait_timeout(WAIT).unwrap().expect("the child exits");
    assert!(status.success(), "{status:?}");
}

/// The manager's accounting once `ok` holds (it counts just after xenstore shows the change).
fn settled_accounting(m: &Mgr, ok: impl Fn(&Accounting) -> bool) -> Accounting {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let a = m.accounting();
        if ok(&a) {
            return a;
        }
        assert!(Instant::now() < end, "{a:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn echo(s: &pore_straw::straw::Straw<SimDomain>, i: u8) {
    let f = Bytes::from(vec![i; 100 + usize::from(i)]);
    s.sender().send(f.clone()).unwrap();
    assert_eq!(s.receiver().recv_timeout(WAIT).unwrap(), f);
}

/// Domain A listens with a connected straw (from B) and a handshake halfway (from C) when a
/// hostile domain J litters its straw top, fills it with a child it narrows to itself, then
/// with children named as its own endpoints. A removes the litter, rebuilds the poisoned top,
/// then the full one, keeps B's straw and C's handshake, and a new opener D gets in.
#[test]
fn junk_in_the_straw_top_does_not_block_the_listener() {
    run_child_role(child);
    let w = World::new("top");
    let (ma, a) = w.manager(config());
    let top = a.straw_top();
    let open = format!("open {}", a.domid.0);

    let (mut b, eb) = w.spawn("opener");
    b.tell(&open).unwrap();
    let sb = ma.accept(WAIT).unwrap();
    assert_eq!(sb.peer(), &eb);
    expect_report(&mut b, "opened");
    echo(&sb, 1);

    let (mut c, ec) = w.spawn("slow-opener");
    c.tell(&format!("knock {}", a.domid.0)).unwrap();
    let published = c.read_report(WAIT).unwrap();
    assert!(published.starts_with("published "), "{published}");

    // Litter A can remove.
    let (mut j, ej) = w.spawn("junk");
    j.tell(&format!("litter {}", a.domid.0)).unwrap();
    expect_report(&mut j, "littered");
    assert!(
        w.no_child_longer(&top, 64, Duration::from_secs(5)),
        "the litter is still in A's straw top"
    );
    let acc = settled_accounting(&ma, |a| a.junk_removed >= 1);
    assert_eq!(acc.top_rebuilds, 0, "{acc:?}");

    // Poison A cannot remove, filling the top.
    j.tell(&format!("poison {}", a.domid.0)).unwrap();
    let poisoned = j.read_report(WAIT).unwrap();
    assert!(poisoned.starts_with("poisoned "), "{poisoned}");
    assert!(
        w.no_child_longer(&top, 64, Duration::from_secs(5)),
        "A's straw top is still poisoned: no opener can get in"
    );
    settled_accounting(&ma, |a| a.top_rebuilds >= 1);

    // A crowd of children named as J's endpoints, filling the top at once: A finds the top
    // full (a probe child cannot be made) and rebuilds it at its next check, without waiting
    // for them to be stale.
    let before = ma.accounting();
    j.tell(&format!("crowd {}", a.domid.0)).unwrap();
    let crowded = j.read_report(WAIT).unwrap();
    assert!(crowded.starts_with("crowded "), "{crowded}");
    let rebuilt = settled_accounting(&ma, |a| a.top_rebuilds > before.top_rebuilds);
    assert_eq!(rebuilt.junk_removed, before.junk_removed, "{rebuilt:?}");
    let crowd = format!("{}-", ej.domid.0);
    assert!(w
        .dom0
        .directory(&top)
        .unwrap()
        .iter()
        .all(|c| !c.starts_with(&crowd)));

    // The connected straw and the handshake in progress survived the rebuild.
    echo(&sb, 2);
    c.tell("finish").unwrap();
    expect_report(&mut c, "connected");
    let sc = ma.accept(WAIT).unwrap();
    assert_eq!(sc.peer(), &ec);

    // And a new opener gets in.
    let (mut d, ed) = w.spawn("opener");
    d.tell(&open).unwrap();
    expect_report(&mut d, "opened");
    let sd = ma.accept(WAIT).unwrap();
    assert_eq!(sd.peer(), &ed);
    echo(&sd, 3);

    // Everyone ends.
    for (s, mut p) in [(sb, b), (sd, d)] {
        s.close().unwrap();
        expect_report(&mut p, "done");
        expect_exit_ok(&mut p);
    }
    c.tell("exit").unwrap();
    expect_exit_ok(&mut c);
    drop(sc);
    j.tell("exit").unwrap();
    expect_exit_ok(&mut j);
    ma.shutdown();
}
