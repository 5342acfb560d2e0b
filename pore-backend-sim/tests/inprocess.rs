//! Domains as threads of one process: Xen's rules, events, death and accounting.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pore_backend_sim::{Hypervisor, Outstanding, SimDomain, StoreLink, StoreService};
use pore_core::{
    DomId, Error, ErrorKind, EventChannel, Events, GrantRef, GrantedPages, Grants, MappedPages,
    Maps, Pore, Port, SharedAccess, SharedMemory, StoreAccess, UnmapNotify, WaitOutcome, PAGE_SIZE,
};

const SEC: Duration = Duration::from_secs(5);

fn pair(hv: &Hypervisor) -> (SimDomain, SimDomain) {
    (
        hv.create_domain("front").unwrap(),
        hv.create_domain("back").unwrap(),
    )
}

#[test]
fn pore_round_trip_both_ways_and_clean_up() {
    let hv = Hypervisor::new().unwrap();
    let (a, b) = pair(&hv);
    assert_ne!(a.id(), b.id());
    assert_ne!(a.id(), DomId::DOM0);
    let active = Pore::open_active(&a, b.id(), 3).unwrap();
    let info = active.info();
    assert_eq!(info.refs.len(), 3);
    let passive = Pore::open_passive(&b, a.id(), &info.refs, info.port).unwrap();
    assert_eq!(passive.len(), 3 * PAGE_SIZE);
    // Fresh grants are zeroed.
    let mut zeros = vec![1u8; 3 * PAGE_SIZE];
    passive.read_bytes(0, &mut zeros);
    assert!(zeros.iter().all(|&b| b == 0));
    let out = hv.outstanding();
    assert_eq!((out.grants, out.mappings, out.ports), (3, 3, 2));

    passive.write_bytes(PAGE_SIZE * 2 + 5, b"hello");
    passive.notify().unwrap();
    assert_eq!(active.channel().wait(SEC).unwrap(), WaitOutcome::Event);
    let mut got = [0u8; 5];
    active.read_bytes(PAGE_SIZE * 2 + 5, &mut got);
    assert_eq!(&got, b"hello");

    active.store_u32(0, 7, Ordering::Release);
    active.notify().unwrap();
    assert!(passive.channel().try_wait().unwrap());
    assert!(!passive.channel().try_wait().unwrap());
    assert_eq!(passive.load_u32(0, Ordering::Acquire), 7);
    // A wait with nothing pending times out.
    let t = Instant::now();
    assert_eq!(
        passive.channel().wait(Duration::from_millis(30)).unwrap(),
        WaitOutcome::Timeout
    );
    assert!(t.elapsed() >= Duration::from_millis(25));

    passive.close().unwrap();
    active.close().unwrap();
    hv.assert_cleaned_up();
    assert_eq!(hv.outstanding().domains, 2);
}

#[test]
fn events_cross_threads_both_ways() {
    let hv = Hypervisor::new().unwrap();
    let (a, b) = pair(&hv);
    let (a_id, b_id) = (a.id(), b.id());
    let active = Pore::open_active(&a, b_id, 1).unwrap();
    let info = active.info();
    let t = std::thread::spawn(move || {
        let passive = Pore::open_passive(&b, a_id, &info.refs, info.port).unwrap();
        for i in 1..=200u32 {
            assert_eq!(passive.channel().wait(SEC).unwrap(), WaitOutcome::Event);
            assert_eq!(passive.load_u32(0, Ordering::Acquire), i);
            passive.store_u32(4, i, Ordering::Release);
            passive.notify().unwrap();
        }
        passive.close().unwrap();
        drop(b);
    });
    // Wait until the peer bound (notify on an unbound port is NotFound).
    let deadline = Instant::now() + SEC;
    for i in 1..=200u32 {
        active.store_u32(0, i, Ordering::Release);
        loop {
            match active.notify() {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("poke: {e}"),
            }
        }
        while active.load_u32(4, Ordering::Acquire) != i {
            assert_eq!(active.channel().wait(SEC).unwrap(), WaitOutcome::Event);
        }
    }
    t.join().unwrap();
    // The peer domain died with its handle: our channel reports it (after any event it left).
    let mut outcome = active.channel().wait(SEC);
    if let Ok(WaitOutcome::Event) = outcome {
        outcome = active.channel().wait(SEC);
    }
    assert!(outcome.unwrap_err().is_peer_gone());
    active.close().unwrap();
    hv.assert_cleaned_up();
}

#[test]
fn xen_rules_are_enforced() {
    let hv = Hypervisor::new().unwrap();
    let (a, b) = pair(&hv);
    let c = hv.create_domain("third").unwrap();
    let active = Pore::open_active(&a, b.id(), 1).unwrap();
    let info = active.info();
    // A third domain may neither map nor bind what was offered to b.
    let err = Pore::open_passive(&c, a.id(), &info.refs, info.port).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert_eq!(
        c.bind_interdomain(a.id(), info.port).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    // Refs and ports that do not exist, or exist under another granter.
    assert_eq!(
        b.map(a.id(), &[GrantRef(999)]).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        b.map(c.id(), &info.refs).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        b.bind_interdomain(a.id(), Port(999)).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        b.map(DomId(5000), &info.refs).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        b.map(a.id(), &[]).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        a.grant(b.id(), 0).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        Pore::open_active(&a, b.id(), 0).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    // Notifying an unbound port.
    assert_eq!(active.notify().unwrap_err().kind(), ErrorKind::NotFound);
    // Binding twice: the second bind is refused.
    let ch1 = b.bind_interdomain(a.id(), info.port).unwrap();
    assert_eq!(
        b.bind_interdomain(a.id(), info.port).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    // select over another domain's channel.
    let mut fired = Vec::new();
    assert_eq!(
        a.select(&[&ch1], Duration::ZERO, &mut fired)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
    ch1.close().unwrap();
    // Notifying a peer that closed is PeerGone.
    assert!(active.notify().unwrap_err().is_peer_gone());
    // Ending access twice.
    let g = a.grant(b.id(), 1).unwrap();
    let g2_refs = g.refs().to_vec();
    g.end_access().unwrap();
    assert_eq!(
        b.map(a.id(), &g2_refs).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // Unmap-notify outside the pages.
    let mut g = a.grant(b.id(), 1).unwrap();
    assert_eq!(
        g.set_unmap_notify(UnmapNotify {
            clear_byte: Some(PAGE_SIZE),
            send_event: None
        })
        .unwrap_err()
        .kind(),
        ErrorKind::InvalidInput
    );
    drop(g);
    drop(active);
    hv.assert_cleaned_up();
}

#[test]
fn double_close_and_operations_after_death_are_errors() {
    let hv = Hypervisor::new().unwrap();
    let (a, b) = pair(&hv);
    let ch = a.alloc_unbound(b.id()).unwrap();
    let port = ch.port();
    ch.close().unwrap();
    // The port is gone: binding to it fails.
    assert_eq!(
        b.bind_interdomain(a.id(), port).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // Handles outliving their domain fail cleanly.
    let ch = a.alloc_unbound(b.id()).unwrap();
    let g = a.grant(b.id(), 2).unwrap();
    drop(a);
    assert_eq!(ch.try_wait().unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(ch.notify().unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(ch.close().unwrap_err().kind(), ErrorKind::Closed);
    // The memory is still ours to touch (no use-after-free), the grant already revoked.
    g.view().write_bytes(0, b"still mapped");
    assert_eq!(g.end_access().unwrap_err().kind(), ErrorKind::Closed);
    hv.assert_cleaned_up();
}

#[test]
fn ending_access_while_mapped_is_busy_then_deferred() {
    let hv = Hypervisor::new().unwrap();
    let (a, b) = pair(&hv);
    let active = Pore::open_active(&a, b.id(), 2).unwrap();
    let info = active.info();
    let passive = Pore::open_passive(&b, a.id(), &info.refs, info.port).unwrap();
    let err = active.close().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy);
    assert!(err.is_retryable());
    assert_eq!(hv.outstanding().revoke_later, 2);
    assert_eq!(hv.outstanding_of(a.id()).grants, 2);
    // The peer still sees its memory; notifying the closed peer reports it gone.
    passive.write_bytes(0, b"still mapped");
    assert!(passive.notify().unwrap_err().is_peer_gone());
    // Deferred grants cannot be mapped again.
    assert_eq!(
        b.map(a.id(), &info.refs).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    drop(passive);
    hv.assert_cleaned_up();
}

#[test]
fn maps_refs_of_several_grants_contiguously() {
    let hv = Hypervisor::new().unwrap();
    let (a, b) = pair(&hv);
    let g1 = a.grant(b.id(), 2).unwrap();
    let g2 = a.grant(b.id(), 1).unwrap();
    g1.view().write_bytes(PAGE_SIZE, b"g1p1");
    g2.view().write_bytes(0, b"g2p0");
    // Out of order and across grants, as a v2 control page's data refs may be.
    let refs = [g2.refs()[0], g1.refs()[1], g1.refs()[0]];
    let m = b.map(a.id(), &refs).unwrap();
    assert_eq!(m.len(), 3 * PAGE_SIZE);
    let mut buf = [0u8; 4];
    m.view().read_bytes(0, &mut buf);
    assert_eq!(&buf, b"g2p0");
    m.view().read_bytes(PAGE_SIZE, &mut buf);
    assert_eq!(&buf, b"g1p1");
    m.view().write_bytes(2 * PAGE_SIZE + 8, b"back");
    g1.view().read_bytes(8, &mut buf);
    assert_eq!(&buf, b"back");
    assert_eq!(hv.outstanding().mappings, 3);
    m.unmap().unwrap();
    g1.end_access().unwrap();
    g2.end_access().unwrap();
    hv.assert_cleaned_up();
}

#[test]
fn select_reports_which_fired_and_times_out() {
    let hv = Hypervisor::new().unwrap();
    let (a, b) = pair(&hv);
    let p: Vec<_> = (0..4)
        .map(|_| Pore::open_active(&a, b.id(), 1).unwrap())
        .collect();
    let q: Vec<_> = p
        .iter()
        .map(|p| Pore::open_passive(&b, a.id(), &p.info().refs, p.info().port).unwrap())
        .collect();
    let mut fired = Vec::new();
    let chans: Vec<_> = p.iter().map(|p| p.channel()).collect();
    a.select(&chans, Duration::from_millis(10), &mut fired)
        .unwrap();
    assert!(fired.is_empty());
    q[2].notify().unwrap();
    q[0].notify().unwrap();
    a.select(&chans, SEC, &mut fired).unwrap();
    assert_eq!(fired, vec![0, 2]);
    // Consumed: nothing more.
    a.select(&chans, Duration::ZERO, &mut fired).unwrap();
    assert!(fired.is_empty());
    let a = Arc::new(a);
    let p = Arc::new(p);
    let (a2, p2) = (a.clone(), p.clone());
    let waiter = std::thread::spawn(move || {
        let chans: Vec<_> = p2.iter().map(|p| p.channel()).collect();
        let mut fired = Vec::new();
        a2.select(&chans, SEC, &mut fired).unwrap();
        fired
    });
    std::thread::sleep(Duration::from_millis(20));
    q[3].notify().unwrap();
    assert_eq!(waiter.join().unwrap(), vec![3]);
    drop(q);
    // Every peer closed: select reports it.
    let chans: Vec<_> = p.iter().map(|p| p.channel()).collect();
    assert!(a
        .select(&chans, SEC, &mut fired)
        .unwrap_err()
        .is_peer_gone());
}

#[test]
fn several_threads_of_one_domain_sleep_at_once_without_lost_wakeups() {
    let hv = Hypervisor::new().unwrap();
    let (a, b) = pair(&hv);
    let n = 4;
    let actives: Vec<_> = (0..n)
        .map(|_| Pore::open_active(&a, b.id(), 1).unwrap())
        .collect();
    let passives: Vec<_> = actives
        .iter()
        .map(|p| Pore::open_passive(&b, a.id(), &p.info().refs, p.info().port).unwrap())
        .collect();
    let rounds = 300u32;
    std::thread::scope(|s| {
        for p in &passives {
            s.spawn(move || {
                for i in 1..=rounds {
                    while p.load_u32(0, Ordering::Acquire) < i {
                        assert_eq!(p.channel().wait(SEC).unwrap(), WaitOutcome::Event);
                    }
                    p.store_u32(4, i, Ordering::Release);
                    p.notify().unwrap();
                }
            });
        }
        for p in &actives {
            s.spawn(move || {
                for i in 1..=rounds {
                    p.store_u32(0, i, Ordering::Release);
                    p.notify().unwrap();
                    while p.load_u32(4, Ordering::Acquire) < i {
                        assert_eq!(p.channel().wait(SEC).unwrap(), WaitOutcome::Event);
                    }
                }
            });
        }
    });
}

#[test]
fn a_panicking_domain_thread_dies_and_its_peer_sees_it() {
    let hv = Hypervisor::new().unwrap();
    let a = hv.create_domain("survivor").unwrap();
    // The victim maps our pages with unmap-notify armed (a live byte plus an event).
    let mut active = Pore::open_active(&a, DomId(0), 1).unwrap();
    drop(active);
    let (tx, rx) = std::sync::mpsc::channel();
    let (info_tx, info_rx) = std::sync::mpsc::channel::<(DomId, Vec<GrantRef>, Port)>();
    let victim = hv
        .spawn_domain("victim", move |dom| {
            tx.send(dom.id()).unwrap();
            let (peer, refs, port) = info_rx.recv().unwrap();
            let mut passive = Pore::open_passive(&dom, peer, &refs, port).unwrap();
            passive.store_u8(100, 1, Ordering::Release);
            passive
                .set_unmap_notify(UnmapNotify {
                    clear_byte: Some(100),
                    send_event: Some(passive.info().port),
                })
                .unwrap();
            passive.notify().unwrap();
            panic!("the victim domain crashes while holding its pore");
        })
        .unwrap();
    let victim_id = rx.recv().unwrap();
    active = Pore::open_active(&a, victim_id, 1).unwrap();
    info_tx
        .send((a.id(), active.info().refs, active.info().port))
        .unwrap();
    assert_eq!(active.channel().wait(SEC).unwrap(), WaitOutcome::Event);
    assert!(victim.join().is_err());
    assert!(!hv.is_alive(victim_id));
    // The unmap-notify fired: the live byte is clear and an event came before the port closed.
    assert_eq!(active.load_u8(100, Ordering::Acquire), 0);
    let first = active.channel().wait(SEC);
    assert!(matches!(first, Ok(WaitOutcome::Event)) || first.as_ref().unwrap_err().is_peer_gone());
    assert!(active.channel().wait(SEC).unwrap_err().is_peer_gone());
    assert!(active.notify().unwrap_err().is_peer_gone());
    assert_eq!(hv.outstanding_of(victim_id), Outstanding::default());
    active.close().unwrap();
    hv.assert_cleaned_up();
}

#[test]
fn a_dying_granter_defers_what_the_peer_still_maps() {
    let hv = Hypervisor::new().unwrap();
    let (a, b) = pair(&hv);
    let mut g = a.grant(b.id(), 2).unwrap();
    g.set_unmap_notify(UnmapNotify {
        clear_byte: Some(PAGE_SIZE + 1),
        send_event: None,
    })
    .unwrap();
    g.view().store_u8(PAGE_SIZE + 1, 0xff, Ordering::Release);
    let m = b.map(a.id(), g.refs()).unwrap();
    drop(a);
    assert_eq!(m.view().load_u8(PAGE_SIZE + 1, Ordering::Acquire), 0);
    let out = hv.outstanding();
    assert_eq!((out.grants, out.revoke_later, out.mappings), (2, 2, 2));
    drop(g);
    m.unmap().unwrap();
    hv.assert_cleaned_up();
}

#[test]
fn readiness_fd_turns_readable_on_an_event() {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let hv = Hypervisor::new().unwrap();
    let (a, b) = pair(&hv);
    let p = Pore::open_active(&a, b.id(), 1).unwrap();
    let q = Pore::open_passive(&b, a.id(), &p.info().refs, p.info().port).unwrap();
    let fd = a.readiness_fd().expect("the sim has a readiness fd");
    let ts = Timespec {
        tv_sec: 0,
        tv_nsec: 20_000_000,
    };
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    assert_eq!(poll(&mut fds, Some(&ts)).unwrap(), 0);
    q.notify().unwrap();
    let ts = Timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    assert_eq!(poll(&mut fds, Some(&ts)).unwrap(), 1);
    a.ack_readiness();
    assert!(p.channel().try_wait().unwrap());
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
fn each_domain_has_a_store_page_and_port_for_the_store_service() {
    let hv = Hypervisor::new().unwrap();
    let early = hv.create_domain("early").unwrap();
    let store = Arc::new(RecordingStore::default());
    hv.set_store_service(store.clone());
    let late = hv.create_domain("late").unwrap();
    {
        let links = store.introduced.lock().unwrap();
        let ids: Vec<_> = links.iter().map(|l| (l.domid, l.name.clone())).collect();
        assert_eq!(
            ids,
            vec![
                (early.id(), "early".to_string()),
                (late.id(), "late".to_string())
            ]
        );
    }
    // The domain's pre-existing store pore reaches dom0's end, both ways.
    let pore = Pore::open_store(&late).unwrap();
    assert_eq!(pore.peer(), DomId::DOM0);
    pore.write_bytes(0, b"XS_READ");
    pore.notify().unwrap();
    {
        let links = store.introduced.lock().unwrap();
        let link = &links[1];
        assert_eq!(link.channel.wait(SEC).unwrap(), WaitOutcome::Event);
        let mut buf = [0u8; 7];
        link.page.view().read_bytes(0, &mut buf);
        assert_eq!(&buf, b"XS_READ");
        link.channel.notify().unwrap();
    }
    assert_eq!(pore.channel().wait(SEC).unwrap(), WaitOutcome::Event);
    // Closing the pre-existing pore closes nothing; a second open still works.
    pore.close().unwrap();
    let (_page, ch) = late.open_store().unwrap();
    ch.close().unwrap();
    // dom0 has no store page of its own.
    assert_eq!(
        hv.dom0().open_store().unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    // Store resources are not the domains' leaks.
    hv.assert_cleaned_up();
    let late_id = late.id();
    drop(late);
    assert_eq!(*store.released.lock().unwrap(), vec![late_id]);
    let links = store.introduced.lock().unwrap();
    assert!(links[1].channel.try_wait().unwrap_err().is_peer_gone());
}

#[test]
fn ref_and_port_numbers_follow_xen() {
    let hv = Hypervisor::new().unwrap();
    let (a, b) = pair(&hv);
    let g = a.grant(b.id(), 1).unwrap();
    // Refs 0..8 are reserved (1 is the store page).
    assert!(g.refs()[0].0 >= 8);
    let ch = a.alloc_unbound(b.id()).unwrap();
    assert!(ch.port().0 >= 1);
    // Different domains number their ports independently.
    let ch_b = b.bind_interdomain(a.id(), ch.port()).unwrap();
    assert_eq!(ch_b.peer(), a.id());
    assert_eq!(ch.peer(), b.id());
}

#[test]
fn long_waits_time_out_on_time_and_still_see_events() {
    let hv = Hypervisor::new().unwrap();
    let (a, b) = pair(&hv);
    let ca = a.alloc_unbound(b.id()).unwrap();
    let cb = b.bind_interdomain(a.id(), ca.port()).unwrap();
    // Long waits sleep without a kernel timer (the ticker bounds them), then precisely.
    let t = Instant::now();
    assert_eq!(
        cb.wait(Duration::from_millis(1500)).unwrap(),
        WaitOutcome::Timeout
    );
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    let mut fired = Vec::new();
    let t = Instant::now();
    a.select(&[&ca], Duration::from_millis(1200), &mut fired)
        .unwrap();
    assert!(fired.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(1200));
    // An untimed sleeper is still woken by an event at once.
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let t = Instant::now();
            (cb.wait(Duration::from_secs(30)).unwrap(), t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(30));
        ca.notify().unwrap();
        let (outcome, took) = w.join().unwrap();
        assert_eq!(outcome, WaitOutcome::Event);
        assert!(took < Duration::from_secs(5), "{took:?}");
    });
}
