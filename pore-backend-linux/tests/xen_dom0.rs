//! The Linux backend on a real hypervisor: run inside a Xen dom0 as root (the lab boots Xen
//! with a Linux dom0 under QEMU and runs this binary there, with the C xenstored running).
//!
//! Outside Xen each test prints `skipped: no /dev/xen` and passes, unless
//! `PORE_REQUIRE_XEN=1`, in which case it fails: the lab sets it so a broken lab cannot pass
//! silently.
//!
//! dom0 may bind its own ports and map its own grants, so both ends of every channel and
//! every grant live in this process, on two [`LinuxXen`]s (two opens of each device, as two
//! processes would have); one test kills a child process to see its death through the unmap
//! notification.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pore_backend_linux::{LinuxXen, Outstanding};
use pore_core::{
    DomId, Error, ErrorKind, EventChannel, Events, GrantRef, GrantedPages, Grants, MappedPages,
    Maps, Pore, Port, SharedAccess, SharedMemory, StoreAccess, UnmapNotify, WaitOutcome, PAGE_SIZE,
};

const DOM0: DomId = DomId::DOM0;
/// Generous: the lab runs under software emulation.
const EVENT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(200);

/// `true` if the test should run; prints the skip otherwise (or fails under
/// `PORE_REQUIRE_XEN=1`).
fn on_xen() -> bool {
    if Path::new("/dev/xen/evtchn").exists() {
        return true;
    }
    if std::env::var("PORE_REQUIRE_XEN").as_deref() == Ok("1") {
        panic!("PORE_REQUIRE_XEN=1 but /dev/xen/evtchn is missing: not a Xen domain?");
    }
    println!("skipped: no /dev/xen");
    false
}

fn open() -> LinuxXen {
    LinuxXen::open().unwrap_or_else(|e| panic!("opening the Xen devices: {e}"))
}

fn assert_clean(xen: &LinuxXen) {
    assert_eq!(xen.outstanding(), Outstanding::default());
}

#[test]
fn event_channel_loopback_both_ways_with_unmask_and_unbind() {
    if !on_xen() {
        return;
    }
    let (a, b) = (open(), open());
    let ca = a.alloc_unbound(DOM0).unwrap();
    let cb = b.bind_interdomain(DOM0, ca.port()).unwrap();
    assert_ne!(ca.port(), cb.port());
    assert_eq!(a.outstanding().ports, 1);

    // b -> a, then a -> b.
    cb.notify().unwrap();
    assert_eq!(ca.wait(EVENT).unwrap(), WaitOutcome::Event);
    ca.notify().unwrap();
    assert_eq!(cb.wait(EVENT).unwrap(), WaitOutcome::Event);

    // The wait unmasked the port: a second (and third) event arrives too.
    for round in 0..3 {
        cb.notify().unwrap();
        assert_eq!(ca.wait(EVENT).unwrap(), WaitOutcome::Event, "round {round}");
    }
    // Consumed: nothing left.
    assert_eq!(ca.wait(QUIET).unwrap(), WaitOutcome::Timeout);
    assert!(!ca.try_wait().unwrap());

    // try_wait sees an event without blocking (once it has reached the device).
    cb.notify().unwrap();
    let deadline = Instant::now() + EVENT;
    let mut got = false;
    while !got && Instant::now() < deadline {
        got = ca.try_wait().unwrap();
    }
    assert!(got, "try_wait never saw the event");

    cb.close().unwrap();
    ca.close().unwrap();
    assert_clean(&a);
    assert_clean(&b);
}

#[test]
fn readiness_fd_becomes_readable_when_a_port_fires() {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use std::os::fd::AsFd;
    if !on_xen() {
        return;
    }
    let (a, b) = (open(), open());
    let ca = a.alloc_unbound(DOM0).unwrap();
    let cb = b.bind_interdomain(DOM0, ca.port()).unwrap();
    let fd = a
        .readiness_fd()
        .expect("the Linux backend has a readiness fd");
    let ts = Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    assert_eq!(
        poll(&mut fds, Some(&ts)).unwrap(),
        0,
        "readable with no event"
    );
    cb.notify().unwrap();
    let ts = Timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    assert_eq!(poll(&mut fds, Some(&ts)).unwrap(), 1);
    // Readable: a zero-timeout select over the channels says which fired.
    let mut fired = Vec::new();
    a.select(&[&ca], Duration::ZERO, &mut fired).unwrap();
    assert_eq!(fired, [0]);
    assert_eq!(a.as_fd().as_raw_fd(), fd.as_raw_fd());
}

#[test]
fn wait_timeout_returns_timeout() {
    if !on_xen() {
        return;
    }
    let (a, b) = (open(), open());
    let ca = a.alloc_unbound(DOM0).unwrap();
    let _cb = b.bind_interdomain(DOM0, ca.port()).unwrap();
    let start = Instant::now();
    assert_eq!(
        ca.wait(Duration::from_millis(100)).unwrap(),
        WaitOutcome::Timeout
    );
    assert!(start.elapsed() >= Duration::from_millis(100));
    let mut fired = vec![7];
    a.select(&[&ca], Duration::from_millis(50), &mut fired)
        .unwrap();
    assert!(fired.is_empty());
    // An unbound port (nobody bound it yet) times out as well.
    let lonely = a.alloc_unbound(DOM0).unwrap();
    assert_eq!(lonely.wait(QUIET).unwrap(), WaitOutcome::Timeout);
}

#[test]
fn many_ports_multiplexed_on_one_device() {
    if !on_xen() {
        return;
    }
    let (a, b) = (open(), open());
    const N: usize = 64;
    let ours: Vec<_> = (0..N).map(|_| a.alloc_unbound(DOM0).unwrap()).collect();
    let theirs: Vec<_> = ours
        .iter()
        .map(|c| b.bind_interdomain(DOM0, c.port()).unwrap())
        .collect();
    assert_eq!(a.outstanding().ports, N);

    // select says which fired, among many.
    let picked = [0usize, 17, 40, 63];
    for &i in &picked {
        theirs[i].notify().unwrap();
    }
    let refs: Vec<_> = ours.iter().collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut fired = Vec::new();
    let deadline = Instant::now() + EVENT;
    while seen.len() < picked.len() && Instant::now() < deadline {
        a.select(&refs, EVENT, &mut fired).unwrap();
        seen.extend(fired.iter().copied());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), picked.to_vec());
    a.select(&refs, QUIET, &mut fired).unwrap();
    assert!(fired.is_empty(), "nothing else fired: {fired:?}");

    // Threads blocked on different ports of one device each get their own event.
    let ours = Arc::new(ours);
    let waiters: Vec<_> = (0..4)
        .map(|i| {
            let ours = ours.clone();
            std::thread::spawn(move || ours[i * 10].wait(EVENT).unwrap())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    for i in [30, 0, 20, 10] {
        theirs[i].notify().unwrap();
    }
    for w in waiters {
        assert_eq!(w.join().unwrap(), WaitOutcome::Event);
    }

    // Events for channels of another backend are refused by select.
    let e = b.select(&[&ours[0]], QUIET, &mut fired).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);

    drop(theirs);
    drop(ours);
    assert_clean(&a);
    assert_clean(&b);
}

#[test]
fn granted_pages_mapped_back_both_ways() {
    if !on_xen() {
        return;
    }
    let (a, b) = (open(), open());
    let grant = a.grant(DOM0, 3).unwrap();
    assert_eq!(grant.refs().len(), 3);
    assert_eq!(grant.len(), 3 * PAGE_SIZE);
    // Fresh pages are zeroed.
    let mut zero = vec![0xffu8; 3 * PAGE_SIZE];
    grant.view().read_bytes(0, &mut zero);
    assert!(zero.iter().all(|&b| b == 0));

    let mapping = b.map(DOM0, grant.refs()).unwrap();
    assert_eq!(mapping.len(), 3 * PAGE_SIZE);
    assert_eq!(a.outstanding().grants, 3);
    assert_eq!(b.outstanding().mappings, 3);

    // Granter -> mapper, across a page boundary and in the last page.
    grant.view().write_bytes(PAGE_SIZE - 3, b"across");
    grant
        .view()
        .store_u32(2 * PAGE_SIZE + 8, 0xfeed_f00d, Ordering::Release);
    let mut got = [0u8; 6];
    mapping.view().read_bytes(PAGE_SIZE - 3, &mut got);
    assert_eq!(&got, b"across");
    assert_eq!(
        mapping
            .view()
            .load_u32(2 * PAGE_SIZE + 8, Ordering::Acquire),
        0xfeed_f00d
    );
    // Mapper -> granter.
    mapping.view().write_bytes(4000, b"reply");
    let mut got = [0u8; 5];
    grant.view().read_bytes(4000, &mut got);
    assert_eq!(&got, b"reply");

    // Drop order: the mapping goes first (munmap, then UNMAP_GRANT_REF), then the grant.
    mapping.unmap().unwrap();
    grant.end_access().unwrap();
    assert_clean(&a);
    assert_clean(&b);
}

#[test]
fn a_grant_still_mapped_is_deferred_not_freed_under_the_peer() {
    if !on_xen() {
        return;
    }
    let (a, b) = (open(), open());
    let grant = a.grant(DOM0, 2).unwrap();
    let mapping = b.map(DOM0, grant.refs()).unwrap();
    grant.view().write_bytes(10, b"still here");
    // Ending access while the peer maps the pages: the kernel defers the free (XSA-396).
    grant.end_access().unwrap();
    assert_clean(&a);
    // The peer's mapping stays valid and keeps its contents; writing it is harmless.
    let mut got = [0u8; 10];
    mapping.view().read_bytes(10, &mut got);
    assert_eq!(&got, b"still here");
    mapping.view().write_bytes(PAGE_SIZE + 1, b"no fault");
    mapping.unmap().unwrap();
    assert_clean(&b);
}

#[test]
fn unmap_notify_fires_when_the_granting_side_drops() {
    if !on_xen() {
        return;
    }
    let (a, b) = (open(), open());
    let ca = a.alloc_unbound(DOM0).unwrap();
    let cb = b.bind_interdomain(DOM0, ca.port()).unwrap();
    let mut grant = a.grant(DOM0, 2).unwrap();
    let live = PAGE_SIZE + 100;
    grant.view().store_u8(live, 1, Ordering::Release);
    grant
        .set_unmap_notify(UnmapNotify {
            clear_byte: Some(live),
            send_event: Some(ca.port()),
        })
        .unwrap();
    let mapping = b.map(DOM0, grant.refs()).unwrap();
    assert_eq!(mapping.view().load_u8(live, Ordering::Acquire), 1);

    // Our side goes (and our port too: the kernel keeps it bound until the notification).
    drop(grant);
    drop(ca);
    assert_eq!(cb.wait(EVENT).unwrap(), WaitOutcome::Event);
    assert_eq!(mapping.view().load_u8(live, Ordering::Acquire), 0);
    drop(mapping);
    drop(cb);
    assert_clean(&a);
    assert_clean(&b);
}

#[test]
fn unmap_notify_fires_when_the_mapping_side_drops() {
    if !on_xen() {
        return;
    }
    let (a, b) = (open(), open());
    let ca = a.alloc_unbound(DOM0).unwrap();
    let cb = b.bind_interdomain(DOM0, ca.port()).unwrap();
    let grant = a.grant(DOM0, 1).unwrap();
    grant.view().store_u8(200, 1, Ordering::Release);
    let mut mapping = b.map(DOM0, grant.refs()).unwrap();
    mapping
        .set_unmap_notify(UnmapNotify {
            clear_byte: Some(200),
            send_event: Some(cb.port()),
        })
        .unwrap();
    // Out of range is refused before the kernel.
    let e = mapping
        .set_unmap_notify(UnmapNotify {
            clear_byte: Some(PAGE_SIZE),
            send_event: None,
        })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);

    drop(mapping);
    assert_eq!(ca.wait(EVENT).unwrap(), WaitOutcome::Event);
    assert_eq!(grant.view().load_u8(200, Ordering::Acquire), 0);
}

#[test]
fn a_pore_round_trip_through_the_backend_traits() {
    if !on_xen() {
        return;
    }
    let (a, b) = (open(), open());
    let active = Pore::open_active(&a, DOM0, 8).unwrap();
    let info = active.info();
    assert_eq!(info.refs.len(), 8);
    let passive = Pore::open_passive(&b, DOM0, &info.refs, info.port).unwrap();
    active.write_bytes(7 * PAGE_SIZE, b"ping");
    active.notify().unwrap();
    assert_eq!(passive.channel().wait(EVENT).unwrap(), WaitOutcome::Event);
    let mut got = [0u8; 4];
    passive.read_bytes(7 * PAGE_SIZE, &mut got);
    assert_eq!(&got, b"ping");
    passive.write_bytes(0, b"pong");
    passive.notify().unwrap();
    assert_eq!(active.channel().wait(EVENT).unwrap(), WaitOutcome::Event);
    active.read_bytes(0, &mut got);
    assert_eq!(&got, b"pong");
    passive.close().unwrap();
    active.close().unwrap();
    assert_clean(&a);
    assert_clean(&b);
}

#[test]
fn xen_refuses_what_was_not_offered() {
    if !on_xen() {
        return;
    }
    let (a, b) = (open(), open());
    // A port nobody allocated.
    let e = b.bind_interdomain(DOM0, Port(4000)).unwrap_err();
    println!("bind of a missing port: {e}");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // A port already bound cannot be bound again.
    let ca = a.alloc_unbound(DOM0).unwrap();
    let _cb = b.bind_interdomain(DOM0, ca.port()).unwrap();
    let e = b.bind_interdomain(DOM0, ca.port()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // A grant ref that was never granted: an error, not a crash.
    let e = b.map(DOM0, &[GrantRef(0x7fff_fff0)]).unwrap_err();
    println!("map of a bogus ref: {e} ({:?})", e.kind());
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // The failed map left nothing behind (the bound `_cb` is the one port).
    assert_eq!(
        b.outstanding(),
        Outstanding {
            ports: 1,
            ..Outstanding::default()
        }
    );
    // Notifying a port whose peer closed is dropped by Xen, not an error.
    let cc = a.alloc_unbound(DOM0).unwrap();
    let cd = b.bind_interdomain(DOM0, cc.port()).unwrap();
    cd.close().unwrap();
    cc.notify().unwrap();
}

#[test]
fn grant_limits_and_foreign_grants_are_errors() {
    if !on_xen() {
        return;
    }
    let (a, b) = (open(), open());
    // gntalloc's `limit` (1024 grants by default) caps an allocation.
    let e = a.grant(DOM0, 4096).unwrap_err();
    println!("granting 4096 pages: {e}");
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
    assert_clean(&a);
    // Pages granted to another domain (here one that does not exist) cannot be mapped by us.
    let foreign = a.grant(DomId(0x7000), 1).unwrap();
    let e = b.map(DOM0, foreign.refs()).unwrap_err();
    println!(
        "mapping a grant made to another domain: {e} ({:?})",
        e.kind()
    );
    assert!(
        matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied),
        "{e}"
    );
    assert_clean(&b);
    foreign.end_access().unwrap();
    assert_clean(&a);
}

#[test]
fn rearming_a_grant_notification_moves_it() {
    if !on_xen() {
        return;
    }
    let (a, b) = (open(), open());
    let mut grant = a.grant(DOM0, 2).unwrap();
    let (old, new) = (PAGE_SIZE + 5, 3);
    grant.view().store_u8(old, 1, Ordering::Relaxed);
    grant.view().store_u8(new, 1, Ordering::Relaxed);
    // Armed on page 1, then re-armed on page 0: only the new byte may be cleared (the kernel
    // keeps one notification per page; the old page's must be disarmed).
    for byte in [old, new] {
        grant
            .set_unmap_notify(UnmapNotify {
                clear_byte: Some(byte),
                send_event: None,
            })
            .unwrap();
    }
    let mapping = b.map(DOM0, grant.refs()).unwrap();
    drop(grant);
    let deadline = Instant::now() + EVENT;
    while mapping.view().load_u8(new, Ordering::Acquire) != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(mapping.view().load_u8(new, Ordering::Acquire), 0);
    assert_eq!(mapping.view().load_u8(old, Ordering::Acquire), 1);
}

/// The child half of [`peer_death_is_seen_through_unmap_notify`]: does nothing unless run by
/// it (env `PORE_DOM0_CHILD=1`).
#[test]
fn child_grants_then_waits_to_be_killed() {
    if std::env::var("PORE_DOM0_CHILD").as_deref() != Ok("1") {
        return;
    }
    let xen = open();
    let mut grant = xen.grant(DOM0, 1).unwrap();
    grant.view().store_u8(0, 1, Ordering::Release);
    let ch = xen.alloc_unbound(DOM0).unwrap();
    grant
        .set_unmap_notify(UnmapNotify {
            clear_byte: Some(0),
            send_event: Some(ch.port()),
        })
        .unwrap();
    println!("READY {} {}", grant.refs()[0], ch.port());
    // Wait (bounded) to be killed.
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn peer_death_is_seen_through_unmap_notify() {
    if !on_xen() {
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_grants_then_waits_to_be_killed",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PORE_DOM0_CHILD", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The harness prints `test <name> ... ` without a newline before the test's
            // own output: look for the marker anywhere in the line.
            if let Some(at) = line.find("READY ") {
                let _ = tx.send(line[at + "READY ".len()..].trim().to_owned());
                break;
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(30));
    let Ok(ready) = ready else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the child never became ready");
    };
    let mut it = ready.split(' ').map(|s| s.parse::<u32>().unwrap());
    let (gref, port) = (GrantRef(it.next().unwrap()), Port(it.next().unwrap()));

    let xen = open();
    let mapping = xen.map(DOM0, &[gref]).unwrap();
    let ch = xen.bind_interdomain(DOM0, port).unwrap();
    assert_eq!(mapping.view().load_u8(0, Ordering::Acquire), 1);

    child.kill().unwrap();
    let killed = Instant::now();
    child.wait().unwrap();
    // The kernel fires the dead process's notification when its files close.
    assert_eq!(ch.wait(EVENT).unwrap(), WaitOutcome::Event);
    assert_eq!(mapping.view().load_u8(0, Ordering::Acquire), 0);
    println!("peer death seen {:?} after the kill", killed.elapsed());
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "death noticed late"
    );
}

#[test]
fn store_page_of_dom0_is_reachable() {
    if !on_xen() {
        return;
    }
    if !Path::new("/proc/xen/xsd_kva").exists() {
        if std::env::var("PORE_REQUIRE_XEN").as_deref() == Ok("1") {
            panic!("/proc/xen/xsd_kva missing: is xenfs mounted in dom0?");
        }
        println!("skipped: no /proc/xen/xsd_kva");
        return;
    }
    let port = pore_backend_linux::read_store_port(Path::new("/proc/xen/xsd_port")).unwrap();
    assert!(port.0 > 0);
    let page = pore_backend_linux::LinuxStorePage::open(Path::new("/proc/xen/xsd_kva")).unwrap();
    assert_eq!(page.len(), PAGE_SIZE);
    // It is a live xenstore ring (`docs/protocol-facts.md` §5.3): the indices are consistent.
    let v = page.view();
    let (req_cons, req_prod) = (
        v.load_u32(2048, Ordering::Acquire),
        v.load_u32(2052, Ordering::Acquire),
    );
    let (rsp_cons, rsp_prod) = (
        v.load_u32(2056, Ordering::Acquire),
        v.load_u32(2060, Ordering::Acquire),
    );
    assert!(req_prod.wrapping_sub(req_cons) <= 1024);
    assert!(rsp_prod.wrapping_sub(rsp_cons) <= 1024);
    // xenstored holds the port, so binding it again is refused (as for any bound port).
    let xen = open();
    match xen.open_store() {
        Ok(_) => println!("open_store: bound (no xenstored holds the port)"),
        Err(e) => {
            println!("open_store with xenstored running: {e}");
            assert_eq!(e.kind(), ErrorKind::NotFound);
        }
    }
}

#[test]
fn xenstore_client_over_the_xenbus_device() {
    use pore_xenstore::transport::XenbusTransport;
    use pore_xenstore::{Client, Config};
    if !on_xen() {
        return;
    }
    let file = pore_backend_linux::open_xenbus().unwrap();
    let client = Client::with_transport(
        Box::new(XenbusTransport::from_file(file)),
        Config::default(),
    )
    .unwrap();
    let base = format!("/pore-test/{}", std::process::id());
    client.write(&format!("{base}/a"), b"one").unwrap();
    assert_eq!(client.read(&format!("{base}/a")).unwrap(), b"one");
    client.write(&format!("{base}/b"), b"").unwrap();
    let mut names = client.directory(&base).unwrap();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    assert!(client.try_read(&format!("{base}/none")).unwrap().is_none());
    assert!(client.directory("/local/domain/0").is_ok());

    // A watch fires once at registration, then on a change.
    let w = client.watch(&format!("{base}/w")).unwrap();
    let first = w.next_event(EVENT).unwrap();
    assert_eq!(first.path, format!("{base}/w"));
    client.write(&format!("{base}/w"), b"x").unwrap();
    let ev = w.next_event(EVENT).unwrap();
    assert_eq!(ev.path, format!("{base}/w"));
    w.unwatch().unwrap();

    // A transaction commits both writes at once.
    client
        .transaction(|tx| {
            tx.write(&format!("{base}/t1"), b"1")?;
            tx.write(&format!("{base}/t2"), b"2")?;
            Ok(())
        })
        .unwrap();
    assert_eq!(client.read(&format!("{base}/t2")).unwrap(), b"2");
    // An aborted one leaves nothing.
    let tx = client.start_transaction().unwrap();
    tx.write(&format!("{base}/gone"), b"x").unwrap();
    tx.abort().unwrap();
    assert!(client.try_read(&format!("{base}/gone")).unwrap().is_none());

    client.rm(&base).unwrap();
    assert!(!client.exists(&base).unwrap());
}
