//! What the remote end of an event channel sees when the other end's port closes, in both
//! [`PeerClose`] modes: `Reported` (the simulator's default affordance: `PeerGone`) and `Silent`
//! (Xen's `evtchn_close`: the remote port turns unbound, a send on it is dropped with success, a
//! wait on it never fires). Every case runs in both modes and asserts each mode's own outcome, so
//! it fails if either mode behaves like the other. In both, unmap-notify fires first (byte
//! cleared, one event), and the remote's own close works and is counted until then.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pore_backend_sim::process::{self, run_child_role};
use pore_backend_sim::{DomainProcess, Hypervisor, PeerClose, SimChannel, SimDomain};
use pore_core::{
    DomId, Error, ErrorKind, EventChannel, Events, GrantRef, Pore, Port, SharedAccess, UnmapNotify,
    WaitOutcome,
};

const WAIT: Duration = Duration::from_secs(10);
/// How long a silent port is watched to make sure nothing fires.
const QUIET: Duration = Duration::from_millis(250);
/// The granter's "live" byte, cleared by its unmap-notify.
const LIVE: usize = 64;
const MODES: [PeerClose; 2] = [PeerClose::Reported, PeerClose::Silent];

// ---------------------------------------------------------------------------------------------
// What a channel whose peer went looks like, per mode

/// Asserts what `ch` (of `dom`) shows once its peer's port is gone, in `mode`.
fn assert_peer_closed(mode: PeerClose, dom: &SimDomain, ch: &SimChannel, what: &str) {
    let mut fired = Vec::new();
    match mode {
        PeerClose::Reported => {
            let e = ch.wait(WAIT).expect_err(what);
            assert_eq!(e.kind(), ErrorKind::PeerGone, "{what}: wait: {e}");
            let e = ch.try_wait().expect_err(what);
            assert_eq!(e.kind(), ErrorKind::PeerGone, "{what}: try_wait: {e}");
            let e = ch.notify().expect_err(what);
            assert_eq!(e.kind(), ErrorKind::PeerGone, "{what}: notify: {e}");
            let e = dom.select(&[ch], WAIT, &mut fired).expect_err(what);
            assert_eq!(e.kind(), ErrorKind::PeerGone, "{what}: select: {e}");
        }
        PeerClose::Silent => {
            // Unbound but open: sends are dropped with success, nothing ever fires.
            ch.notify()
                .unwrap_or_else(|e| panic!("{what}: notify: {e}"));
            ch.notify()
                .unwrap_or_else(|e| panic!("{what}: notify again: {e}"));
            let start = Instant::now();
            let r = ch.wait(QUIET);
            assert_eq!(
                r.as_ref().ok(),
                Some(&WaitOutcome::Timeout),
                "{what}: wait: {r:?}"
            );
            assert!(
                start.elapsed() >= QUIET - Duration::from_millis(10),
                "{what}: the wait returned early ({:?})",
                start.elapsed()
            );
            assert_eq!(ch.try_wait().ok(), Some(false), "{what}: try_wait");
            let r = dom.select(&[ch], QUIET, &mut fired);
            assert!(r.is_ok(), "{what}: select: {r:?}");
            assert!(fired.is_empty(), "{what}: select fired {fired:?}");
        }
    }
}

fn wait_contexts_gone(hv: &Hypervisor, dom: DomId) {
    let deadline = Instant::now() + WAIT;
    while hv.joined_contexts(dom) != 0 {
        assert!(
            Instant::now() < deadline,
            "the broker never noticed the kill"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------------------------
// Domains of this process

#[test]
fn the_default_is_reported_and_the_mode_can_be_switched() {
    let hv = Hypervisor::new().unwrap();
    assert_eq!(hv.peer_close(), PeerClose::Reported);
    assert_eq!(PeerClose::default(), PeerClose::Reported);
    hv.set_peer_close(PeerClose::Silent);
    assert_eq!(hv.peer_close(), PeerClose::Silent);
    hv.set_peer_close(PeerClose::Reported);
    assert_eq!(hv.peer_close(), PeerClose::Reported);
}

/// Either end closes its port explicitly; the other end, its domain alive, sees the mode's
/// outcome, then closes its own port, and nothing is left.
#[test]
fn a_peer_closing_its_port() {
    for mode in MODES {
        for binder_closes in [true, false] {
            let what = format!("{mode:?}, binder closes: {binder_closes}");
            let hv = Hypervisor::new().unwrap();
            let a = hv.create_domain("a").unwrap();
            let b = hv.create_domain("b").unwrap();
            let ca = a.alloc_unbound(b.id()).unwrap();
            let cb = b.bind_interdomain(a.id(), ca.port()).unwrap();
            // The mode is applied when a port closes, not when it is made.
            hv.set_peer_close(mode);
            cb.notify().unwrap();
            assert_eq!(ca.wait(WAIT).unwrap(), WaitOutcome::Event, "{what}");
            let (closer, stays, stays_dom) = if binder_closes {
                (cb, ca, &a)
            } else {
                (ca, cb, &b)
            };
            // An event sent just before the close is still delivered, in both modes.
            closer.notify().unwrap();
            closer.close().unwrap();
            assert_eq!(stays.wait(WAIT).unwrap(), WaitOutcome::Event, "{what}");
            assert_peer_closed(mode, stays_dom, &stays, &what);
            // The remaining port is still open and counted, then closes normally.
            assert_eq!(hv.outstanding().ports, 1, "{what}");
            assert_eq!(hv.outstanding_of(stays_dom.id()).ports, 1, "{what}");
            stays.close().unwrap();
            hv.assert_cleaned_up();
        }
    }
}

/// A peer domain dies (its handle drops) with an unmap-notify armed on pages we map: the byte is
/// cleared and exactly that event arrives, then the mode's outcome; our unmap and close leave
/// nothing behind.
#[test]
fn a_dead_domain_thread_with_an_armed_unmap_notify() {
    for mode in MODES {
        let what = format!("{mode:?}");
        let hv = Hypervisor::new().unwrap();
        hv.set_peer_close(mode);
        let a = hv.create_domain("a").unwrap();
        let b = hv.create_domain("b").unwrap();
        let mut pb = Pore::open_active(&b, a.id(), 2).unwrap();
        pb.store_u8(LIVE, 1, Ordering::Release);
        pb.set_unmap_notify(UnmapNotify {
            clear_byte: Some(LIVE),
            send_event: Some(pb.info().port),
        })
        .unwrap();
        let info = pb.info();
        let pa = Pore::open_passive(&a, b.id(), &info.refs, info.port).unwrap();
        assert_eq!(pa.load_u8(LIVE, Ordering::Acquire), 1);
        // `b` dies (its pore handle outlives it: its operations are `Closed` in both modes).
        let bid = b.id();
        drop(b);
        assert!(!hv.is_alive(bid));
        assert_eq!(pa.load_u8(LIVE, Ordering::Acquire), 0, "{what}");
        assert_eq!(
            pa.channel().wait(WAIT).unwrap(),
            WaitOutcome::Event,
            "{what}"
        );
        assert_peer_closed(mode, &a, pa.channel(), &what);
        let e = pb.notify().unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::Closed,
            "{what}: the dead side's own port"
        );
        // The dead granter's pages wait for our unmap on the revoke-later list; our port is
        // open until we close it.
        let out = hv.outstanding();
        assert_eq!(
            (out.grants, out.revoke_later, out.mappings, out.ports),
            (2, 2, 2, 1),
            "{what}"
        );
        pa.close().unwrap();
        drop(pb);
        hv.assert_cleaned_up();
    }
}

/// A joined handle of a domain drops (its process ending) while the domain lives on: the same,
/// through its own grant's unmap-notify.
#[test]
fn a_dropped_joined_handle_with_an_armed_unmap_notify() {
    for mode in MODES {
        let what = format!("{mode:?}");
        let hv = Hypervisor::new().unwrap();
        hv.set_peer_close(mode);
        let a = hv.create_domain("a").unwrap();
        let b = hv.create_domain("b").unwrap();
        let j = hv.join_domain(a.id()).unwrap();
        let mut pj = Pore::open_active(&j, b.id(), 1).unwrap();
        pj.store_u8(LIVE, 1, Ordering::Release);
        pj.set_unmap_notify(UnmapNotify {
            clear_byte: Some(LIVE),
            send_event: Some(pj.info().port),
        })
        .unwrap();
        let info = pj.info();
        let pb = Pore::open_passive(&b, a.id(), &info.refs, info.port).unwrap();
        drop(j);
        assert!(hv.is_alive(a.id()));
        assert_eq!(hv.joined_contexts(a.id()), 0);
        assert_eq!(pb.load_u8(LIVE, Ordering::Acquire), 0, "{what}");
        assert_eq!(
            pb.channel().wait(WAIT).unwrap(),
            WaitOutcome::Event,
            "{what}"
        );
        assert_peer_closed(mode, &b, pb.channel(), &what);
        assert_eq!(hv.outstanding_of(b.id()).ports, 1, "{what}");
        assert_eq!(hv.outstanding_of(a.id()).ports, 0, "{what}");
        pb.close().unwrap();
        drop(pj);
        hv.assert_cleaned_up();
        assert!(hv.is_alive(a.id()));
    }
}

// ---------------------------------------------------------------------------------------------
// Domain processes: the broker applies the mode; children read its outcome from the table

fn child(role: &str, args: &[String]) -> i32 {
    let result = match role {
        "granter" => granter_role(args),
        "waiter" => waiter_role(args),
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

/// Grants a page to `args[0]` with its live byte set and unmap-notify armed (byte and event),
/// reports `dom port ref`, then waits to be killed.
fn granter_role(args: &[String]) -> Result<(), String> {
    let peer = DomId(args[0].parse().map_err(|e| format!("{e}"))?);
    let dom = SimDomain::connect().map_err(|e| e.to_string())?;
    let mut pore = Pore::open_active(&dom, peer, 1).map_err(|e| e.to_string())?;
    pore.store_u8(LIVE, 1, Ordering::Release);
    pore.set_unmap_notify(UnmapNotify {
        clear_byte: Some(LIVE),
        send_event: Some(pore.info().port),
    })
    .map_err(|e| e.to_string())?;
    let info = pore.info();
    process::report(&format!(
        "{} {} {}",
        dom.id().0,
        info.port.0,
        info.refs[0].0
    ));
    std::thread::sleep(Duration::from_secs(60));
    Ok(())
}

/// Offers a port to `args[0]` and reports `dom port`; once told `closed` (the parent closed
/// its end), reports what its own wait and notify see, then closes its port and exits.
fn waiter_role(args: &[String]) -> Result<(), String> {
    let peer = DomId(args[0].parse().map_err(|e| format!("{e}"))?);
    let dom = SimDomain::connect().map_err(|e| e.to_string())?;
    let ch = dom.alloc_unbound(peer).map_err(|e| e.to_string())?;
    process::report(&format!("{} {}", dom.id().0, ch.port().0));
    let told = process::listen(WAIT).map_err(|e| e.to_string())?;
    if told != "closed" {
        return Err(format!("unexpected line {told:?}"));
    }
    let outcome = |r: Result<String, pore_backend_sim::SimError>| match r {
        Ok(s) => s,
        Err(e) if e.is_peer_gone() => "peer-gone".into(),
        Err(e) => format!("error:{e}"),
    };
    // The parent notified once before closing: that event comes first.
    let first = outcome(ch.wait(WAIT).map(|w| format!("{w:?}")));
    let wait = outcome(ch.wait(QUIET).map(|w| format!("{w:?}")));
    let notify = outcome(ch.notify().map(|()| "ok".into()));
    process::report(&format!("first={first} wait={wait} notify={notify}"));
    ch.close().map_err(|e| e.to_string())?;
    process::report("done");
    Ok(())
}

fn spawn_granter(
    hv: &Hypervisor,
    test: &str,
    peer: DomId,
    join: Option<DomId>,
) -> (DomainProcess, DomId, Port, GrantRef) {
    let mut cmd = hv.domain_command("granter").unwrap().test(test);
    if let Some(dom) = join {
        cmd = cmd.join(dom);
    }
    let mut p = cmd.arg(peer.0.to_string()).spawn().unwrap();
    let line = p.read_report(WAIT).unwrap();
    let w: Vec<u32> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let [dom, port, gref] = w[..] else {
        panic!("unexpected report {line:?}")
    };
    (p, DomId(dom as u16), Port(port), GrantRef(gref))
}

/// A domain process (its own domain, or a process joined to a domain of ours) with an armed
/// unmap-notify is killed: the byte is cleared and exactly that event arrives, then the mode's
/// outcome; the dead process's port is gone, ours is counted until we close it.
#[test]
fn a_killed_domain_process_with_an_armed_unmap_notify() {
    run_child_role(child);
    let test = "a_killed_domain_process_with_an_armed_unmap_notify";
    for mode in MODES {
        for joined in [false, true] {
            let what = format!("{mode:?}, joined: {joined}");
            let hv = Hypervisor::start_unexported().unwrap();
            hv.set_peer_close(mode);
            let me = hv.create_domain("me").unwrap();
            let host = hv.create_domain("host").unwrap();
            let (mut p, dom, port, gref) =
                spawn_granter(&hv, test, me.id(), joined.then_some(host.id()));
            assert_eq!(dom == host.id(), joined, "{what}");
            let pore = Pore::open_passive(&me, dom, &[gref], port).unwrap();
            assert_eq!(pore.load_u8(LIVE, Ordering::Acquire), 1, "{what}");
            pore.notify().unwrap();

            p.kill().unwrap();
            assert!(p.wait_timeout(WAIT).unwrap().is_some());
            if joined {
                wait_contexts_gone(&hv, dom);
                assert!(hv.is_alive(dom), "{what}: the host domain lives on");
            } else {
                assert!(hv.wait_dead(dom, WAIT), "{what}");
            }
            assert_eq!(pore.load_u8(LIVE, Ordering::Acquire), 0, "{what}");
            assert_eq!(
                pore.channel().wait(WAIT).unwrap(),
                WaitOutcome::Event,
                "{what}: the unmap-notify event"
            );
            assert_peer_closed(mode, &me, pore.channel(), &what);
            let out = hv.outstanding();
            assert_eq!(
                (out.grants, out.revoke_later, out.mappings, out.ports),
                (1, 1, 1, 1),
                "{what}: the dead page waits for our unmap, our port for our close"
            );
            assert_eq!(hv.outstanding_of(dom).ports, 0, "{what}");
            pore.close().unwrap();
            hv.assert_cleaned_up();
        }
    }
}

/// The other way round: the parent closes its end of a channel to a domain process, which
/// reports what it sees. The child runs no setting of its own: the broker's mode reaches it.
#[test]
fn a_domain_process_sees_the_mode_of_its_hypervisor() {
    run_child_role(child);
    for mode in MODES {
        let hv = Hypervisor::start_unexported().unwrap();
        hv.set_peer_close(mode);
        let me = hv.create_domain("me").unwrap();
        let mut p = hv
            .domain_command("waiter")
            .unwrap()
            .test("a_domain_process_sees_the_mode_of_its_hypervisor")
            .arg(me.id().0.to_string())
            .spawn()
            .unwrap();
        let line = p.read_report(WAIT).unwrap();
        let (dom, port) = line.split_once(' ').unwrap();
        let (dom, port) = (DomId(dom.parse().unwrap()), Port(port.parse().unwrap()));
        let ch = me.bind_interdomain(dom, port).unwrap();
        ch.notify().unwrap();
        ch.close().unwrap();
        p.tell("closed").unwrap();
        let seen = p.read_report(WAIT).unwrap();
        let want = match mode {
            PeerClose::Reported => "first=Event wait=peer-gone notify=peer-gone",
            PeerClose::Silent => "first=Event wait=Timeout notify=ok",
        };
        assert_eq!(seen, want, "{mode:?}");
        assert_eq!(p.read_report(WAIT).unwrap(), "done", "{mode:?}");
        let status = p.wait_timeout(WAIT).unwrap().expect("the child exits");
        assert!(status.success(), "{mode:?}: {status}");
        assert!(hv.wait_dead(dom, WAIT));
        hv.assert_cleaned_up();
    }
}

/// In silent mode the store channel of a killed domain says nothing either: the embedded
/// xenstored learns of the death from the toolstack's release (as xenstored does from Xen's
/// `VIRQ_DOM_EXC`), and the domain's nodes go.
#[cfg(feature = "xenstored")]
#[test]
fn a_killed_domain_process_is_released_from_xenstore_in_silent_mode() {
    run_child_role(child);
    let hv = Hypervisor::start_unexported().unwrap();
    hv.set_peer_close(PeerClose::Silent);
    let path = std::env::temp_dir().join(format!("pore-sim-silent-xs-{}", std::process::id()));
    let listener = hv.xenstored().unwrap().listen_unix(&path).unwrap();
    let dom0 = pore_xenstore::Client::connect_unix(&path).unwrap();
    let me = hv.create_domain("me").unwrap();
    let (mut p, dom, _, _) = spawn_granter(
        &hv,
        "a_killed_domain_process_is_released_from_xenstore_in_silent_mode",
        me.id(),
        None,
    );
    let node = format!("/local/domain/{}", dom.0);
    assert!(dom0.exists(&node).unwrap());
    p.kill().unwrap();
    assert!(hv.wait_dead(dom, WAIT));
    let deadline = Instant::now() + WAIT;
    while dom0.exists(&node).unwrap() {
        assert!(Instant::now() < deadline, "{node} still exists");
        std::thread::sleep(Duration::from_millis(5));
    }
    hv.assert_cleaned_up();
    drop(dom0);
    drop(hv);
    listener.join();
    let _ = std::fs::remove_file(&path);
}
