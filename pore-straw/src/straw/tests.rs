//! Straws facing a hostile peer (the audit's findings), over pore-core's loopback backend. A
//! child of `straw`, to reach the ring and the receive buffer behind the straw.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pore_core::loopback::{Loopback, LoopbackDomain};
use pore_core::{DomId, SharedAccess};
use pore_ring::ling;
use pore_ring::{RingError, RingReader, RingWriter};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pore_ring::v2;

use super::open::Mem;
use super::*;
use crate::handshake::Input;
use crate::{Endpoint, Format, Layout, Role};

type Lb = LoopbackDomain;

/// A LING pair: (listener side `a`, opener side `b`, the raw memory of the pages). `b` may
/// get a hook (as a managed straw) and its own config.
fn pair(
    xen: &Loopback,
    format: Format,
    cfg_a: StrawConfig,
    cfg_b: StrawConfig,
    hook_b: Option<Hook>,
) -> (Straw<Lb>, Straw<Lb>, Mem<Lb>) {
    let (a, b) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
    let (pa, grant) = open_active(&a, DomId(2), Layout::Ling).unwrap();
    let pb = open_passive(&b, DomId(1), Layout::Ling, &grant.refs, grant.port).unwrap();
    let mem = pa.pore.clone();
    let sa = Straw::new(pa, Endpoint::seed(DomId(2)), Role::Listener, format, cfg_a);
    let sb = Straw::build(
        pb,
        Endpoint::seed(DomId(1)),
        Role::Opener,
        format,
        cfg_b,
        hook_b,
    );
    (sa, sb, mem)
}

/// Writes raw bytes into `s`'s out-ring, as a hostile peer could, and wakes the other side.
fn write_raw(s: &Straw<Lb>, bytes: &[u8]) {
    let sh = s.shared();
    let mut g = lock(&sh.tx);
    let st = g.as_mut().unwrap();
    let mut off = 0;
    while off < bytes.len() {
        off += st.ring.write_deferred(&bytes[off..]).unwrap();
        st.ring.commit().unwrap();
        assert!(
            off == bytes.len() || st.ring.writable().unwrap() > 0,
            "ring full"
        );
    }
    drop(g);
    sh.notify().unwrap();
}

fn readable(s: &Straw<Lb>) -> usize {
    let sh = s.shared();
    let g = lock(&sh.rx);
    g.as_ref().unwrap().ring.readable().unwrap()
}

fn envelope(addr: &str, msg: &serde_json::Value) -> Bytes {
    Bytes::from(serde_json::to_vec(&serde_json::json!({ "addr": addr, "msg": msg })).unwrap())
}

/// Finding 1: a JSON envelope over `max_json_frame` (default 1 MiB) is dropped unparsed and
/// counted; the straw lives on.
#[test]
fn an_oversized_json_envelope_is_dropped_unparsed_and_the_straw_lives() {
    let xen = Loopback::new();
    let cfg = StrawConfig::default();
    assert_eq!(cfg.max_json_frame, 1 << 20);
    let (sa, sb, _mem) = pair(&xen, Format::Json, cfg.clone(), cfg, None);
    let mb = sb.mailbox("a");
    // `[0,0,...]`: 2 bytes a number, a 32-byte tree node each once parsed.
    let zeros = serde_json::Value::Array(vec![serde_json::json!(0); 1 << 20]);
    thread::scope(|s| {
        s.spawn(|| {
            sa.sender().send(envelope("a", &zeros)).unwrap();
            sa.sender()
                .send_to("a", &serde_json::json!("small"))
                .unwrap();
        });
        let end = Instant::now() + Duration::from_secs(20);
        while sb.stats().frames_received < 2 && Instant::now() < end {
            sb.receiver().dispatch(Duration::from_millis(100)).unwrap();
        }
    });
    assert_eq!(sb.stats().frames_received, 2);
    assert_eq!(sb.stats().json_too_large, 1);
    assert_eq!(mb.try_recv(), Some(serde_json::json!("small")));
    assert_eq!(mb.try_recv(), None);
}

/// Finding 1: a mailbox holds `mailbox_depth` messages (and `mailbox_bytes` of frames); the
/// rest is dropped and counted.
#[test]
fn mailboxes_are_bounded() {
    let xen = Loopback::new();
    let cfg = StrawConfig {
        mailbox_depth: 4,
        ..StrawConfig::default()
    };
    let (sa, sb, _mem) = pair(&xen, Format::Json, cfg.clone(), cfg, None);
    let mb = sb.mailbox("a");
    for i in 0..10 {
        sa.sender().send_to("a", &serde_json::json!(i)).unwrap();
    }
    let end = Instant::now() + Duration::from_secs(5);
    while sb.stats().frames_received < 10 && Instant::now() < end {
        sb.receiver().dispatch(Duration::from_millis(100)).unwrap();
    }
    assert_eq!(sb.stats().frames_received, 10);
    assert_eq!(sb.stats().mailbox_full, 6);
    let got: Vec<_> = std::iter::from_fn(|| mb.try_recv()).collect();
    assert_eq!(
        got,
        (0..4).map(|i| serde_json::json!(i)).collect::<Vec<_>>()
    );
    // Room again: delivery resumes.
    sa.sender()
        .send_to("a", &serde_json::json!("again"))
        .unwrap();
    assert_eq!(sb.receiver().dispatch(Duration::from_secs(1)).unwrap(), 1);
    assert_eq!(mb.try_recv(), Some(serde_json::json!("again")));

    // In bytes: each envelope is ~20 bytes, 50 bytes hold two.
    let xen = Loopback::new();
    let cfg = StrawConfig {
        mailbox_bytes: 50,
        ..StrawConfig::default()
    };
    let (sa, sb, _mem) = pair(&xen, Format::Json, cfg.clone(), cfg, None);
    let mb = sb.mailbox("a");
    for i in 0..5 {
        sa.sender().send_to("a", &serde_json::json!(i)).unwrap();
    }
    let end = Instant::now() + Duration::from_secs(5);
    while sb.stats().frames_received < 5 && Instant::now() < end {
        sb.receiver().dispatch(Duration::from_millis(100)).unwrap();
    }
    assert_eq!(sb.stats().mailbox_full, 3);
    assert_eq!(std::iter::from_fn(|| mb.try_recv()).count(), 2);
}

/// Finding 2: a length prefix alone does not grow the receive buffer; it grows as the
/// payload arrives and shrinks back after a large frame.
#[test]
fn the_receive_buffer_grows_with_the_payload_not_the_header() {
    let xen = Loopback::new();
    let cfg = StrawConfig::default();
    assert_eq!(cfg.max_frame, 16 << 20);
    let (sa, sb, _mem) = pair(&xen, Format::Raw, cfg.clone(), cfg, None);
    let cap = |s: &Straw<Lb>| {
        lock(&s.shared().rx)
            .as_ref()
            .unwrap()
            .framer
            .buffer_capacity()
    };
    // A hostile header announcing 15 MiB, then 10 bytes.
    let mut raw = (15u32 << 20).to_be_bytes().to_vec();
    raw.extend_from_slice(&[7; 10]);
    write_raw(&sa, &raw);
    assert_eq!(sb.receiver().try_recv(), Err(StrawError::WouldBlock));
    assert!(cap(&sb) <= crate::reasm::RESTING, "{}", cap(&sb));
    drop((sa, sb));

    // A real 3 MiB frame streams through; the buffer is back to its resting size after it.
    let xen = Loopback::new();
    let cfg = StrawConfig::default();
    let (sa, sb, _mem) = pair(&xen, Format::Raw, cfg.clone(), cfg, None);
    let big = Bytes::from((0..3 << 20).map(|i| i as u8).collect::<Vec<_>>());
    thread::scope(|s| {
        s.spawn(|| sa.sender().send(big.clone()).unwrap());
        assert_eq!(
            sb.receiver().recv_timeout(Duration::from_secs(20)).unwrap(),
            big
        );
    });
    assert!(cap(&sb) <= crate::reasm::RESTING, "{}", cap(&sb));
    sa.sender().send(Bytes::from_static(b"after")).unwrap();
    assert_eq!(
        sb.receiver().recv_timeout(Duration::from_secs(1)).unwrap(),
        "after"
    );
}

/// Finding 3: a bad ring index closes the straw: the status turns to peer gone on both
/// halves and a managed straw tells the manager (`Input::PeerLost`).
#[test]
fn a_bad_index_closes_the_straw_and_tells_the_manager() {
    for (what, offsets) in [
        ("producer", [ling::IN_PROD, ling::OUT_PROD]),
        ("consumer", [ling::IN_CONS, ling::OUT_CONS]),
    ] {
        let xen = Loopback::new();
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let hook: Hook = Box::new(move |i| {
            let _ = lock(&tx).send(i);
        });
        let cfg = StrawConfig::default();
        let (_sa, sb, mem) = pair(&xen, Format::Raw, cfg.clone(), cfg, Some(hook));
        for off in offsets {
            mem.store_u32(off, 0xdead_beef, Ordering::Relaxed);
        }
        let first = if what == "producer" {
            sb.receiver().try_recv()
        } else {
            // The producer re-reads the consumer index once its known room is used up.
            let mut r = Ok(());
            for _ in 0..100 {
                r = sb.sender().try_send(Bytes::from(vec![0; 4000]));
                if !matches!(r, Ok(()) | Err(StrawError::WouldBlock)) {
                    break;
                }
            }
            r.map(|()| Bytes::new())
        };
        assert!(
            matches!(first, Err(StrawError::Ring(RingError::BadIndex { .. }))),
            "{what}: {first:?}"
        );
        assert_eq!(rx.try_recv(), Ok(Input::PeerLost), "{what}");
        assert_eq!(
            sb.receiver().try_recv(),
            Err(StrawError::PeerGone),
            "{what}"
        );
        assert_eq!(
            sb.sender().try_send(Bytes::from_static(b"x")),
            Err(StrawError::PeerGone),
            "{what}"
        );
        assert_eq!(
            sb.receiver().recv_timeout(Duration::from_millis(50)),
            Err(StrawError::PeerGone)
        );
    }
}

/// Finding 4: a receive call does bounded work: a ring full of frames we skip does not keep
/// it past its deadline (nor a non-blocking call at all), and `dispatch` stops at its
/// deadline while frames keep coming.
#[test]
fn receive_calls_are_bounded_by_their_deadline() {
    let xen = Loopback::new();
    let small = StrawConfig {
        max_frame: 8,
        ..StrawConfig::default()
    };
    let (sa, sb, _mem) = pair(&xen, Format::Raw, StrawConfig::default(), small, None);
    // ~800 frames of 16 bytes, each over the receiver's maximum, then a good one.
    let mut n = 0;
    while sa.sender().try_send(Bytes::from_static(&[1; 16])).is_ok() {
        n += 1;
        if n == 800 {
            break;
        }
    }
    assert_eq!(n, 800);
    sa.sender().try_send(Bytes::from_static(b"good")).unwrap();
    assert_eq!(
        sb.receiver().recv_timeout(Duration::ZERO),
        Err(StrawError::TimedOut)
    );
    assert!(readable(&sb) > 0, "one call skipped everything");
    assert_eq!(sb.receiver().try_recv(), Err(StrawError::WouldBlock));
    assert!(readable(&sb) > 0, "one call skipped everything");
    // Later calls get through.
    assert_eq!(
        sb.receiver().recv_timeout(Duration::from_secs(2)).unwrap(),
        "good"
    );
    assert_eq!(sb.stats().frames_skipped, 800);

    let xen = Loopback::new();
    let cfg = StrawConfig::default();
    let (sa, sb, _mem) = pair(&xen, Format::Json, cfg.clone(), cfg, None);
    let _mb = sb.mailbox("a");
    for i in 0..50 {
        sa.sender().send_to("a", &serde_json::json!(i)).unwrap();
    }
    assert_eq!(sb.receiver().dispatch(Duration::ZERO).unwrap(), 1);
    assert!(sb.receiver().dispatch(Duration::from_secs(1)).unwrap() > 1);
}

/// Finding 6: the v2 geometry is read once and what the ring is attached with is the
/// validated geometry: a peer flipping its control page's orders during the open gets an
/// error, never a ring of another size than negotiated.
#[test]
fn a_v2_geometry_changed_during_the_open_is_refused() {
    let xen = Loopback::new();
    let (a, b) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
    let layout = Layout::V2 { ring_pages: 2 };
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..300 {
        let (pa, grant) = open_active(&a, DomId(2), layout).unwrap();
        let refs = pa.all_refs();
        let mem = pa.pore.clone();
        let stop = AtomicBool::new(false);
        let flips = AtomicUsize::new(0);
        let wrong = thread::scope(|s| {
            s.spawn(|| {
                let mut order = 0u8;
                while !stop.load(Ordering::Relaxed) {
                    order ^= 1;
                    mem.store_u8(v2::A2P_ORDER, order, Ordering::Relaxed);
                    mem.store_u8(v2::P2A_ORDER, order, Ordering::Relaxed);
                    flips.fetch_add(1, Ordering::Relaxed);
                }
            });
            while flips.load(Ordering::Relaxed) < 2 {
                std::hint::spin_loop();
            }
            let r = open_passive_v2_all(&b, DomId(1), 2, &refs, grant.port);
            stop.store(true, Ordering::Relaxed);
            match r {
                Ok(sp) => {
                    ok += 1;
                    let caps = (RingReader::capacity(&sp.rx), RingWriter::capacity(&sp.tx));
                    (caps != (2 * 4096, 2 * 4096)).then_some(caps)
                }
                Err(_) => {
                    refused += 1;
                    None
                }
            }
        });
        assert_eq!(
            wrong, None,
            "attached with another geometry than negotiated"
        );
    }
    assert!(refused > 0, "the flips were seen ({ok} opened)");
}

/// The data path says the peer went while the manager, slow on a loaded machine, learns only
/// after the vanish grace that the peer closed gracefully: the stream ends (end of stream),
/// it is not failed with peer gone. (The straw waited a fixed 250 ms for the manager's
/// answer, then marked the peer gone: a graceful close seen as a loss under load.)
#[test]
fn a_graceful_close_the_manager_confirms_late_is_end_of_stream() {
    let xen = Loopback::new();
    let slot: Arc<Mutex<Option<Arc<Shared<Lb>>>>> = Arc::new(Mutex::new(None));
    let asked = Arc::new(AtomicUsize::new(0));
    let hook: Hook = Box::new({
        let (slot, asked) = (slot.clone(), asked.clone());
        move |i| {
            if i == Input::Watch && asked.fetch_add(1, Ordering::AcqRel) == 0 {
                // The manager reads the peer's Closing only after 400 ms.
                let slot = slot.clone();
                thread::spawn(move || {
                    thread::sleep(Duration::from_millis(400));
                    if let Some(sh) = lock(&slot).as_ref() {
                        sh.peer_left(true);
                    }
                });
            }
        }
    });
    let cfg = StrawConfig::default();
    let (sa, sb, mem) = pair(&xen, Format::Raw, cfg.clone(), cfg, Some(hook));
    // `sa`'s close closes its pore (its port: `sb`'s waits report the peer gone) only once
    // nobody else holds it.
    drop(mem);
    *lock(&slot) = Some(sb.shared());
    sa.sender().send(Bytes::from_static(b"last")).unwrap();
    // `sa` plays a managed peer: its pore closes with no end-of-stream marker in the ring (a
    // managed straw tells the end of its stream through xenstore).
    let closer = thread::spawn(move || {
        sa.sender().drain_timeout(Duration::from_secs(5))?;
        sa.shared().shutdown_pore(Duration::from_millis(200));
        Ok::<(), StrawError>(())
    });
    assert_eq!(
        sb.receiver().recv_timeout(Duration::from_secs(5)).unwrap(),
        "last"
    );
    assert_eq!(
        sb.receiver().recv_timeout(Duration::from_secs(5)),
        Err(StrawError::Eof)
    );
    assert!(asked.load(Ordering::Acquire) >= 1, "the manager was asked");
    closer.join().unwrap().unwrap();
}

/// A v2 pair of `ring_pages` per direction, both sides polling (D26) when `polling`: (side
/// `a`, the listener; side `b`, the opener).
fn v2_pair(
    xen: &Loopback,
    ring_pages: u32,
    polling: bool,
    cfg: StrawConfig,
) -> (Straw<Lb>, Straw<Lb>) {
    let (a, b) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
    let (mut pa, grant) = open_active(&a, DomId(2), Layout::V2 { ring_pages }).unwrap();
    let mut pb = open_passive_v2_all(&b, DomId(1), ring_pages, &pa.all_refs(), grant.port).unwrap();
    pa.set_polling(polling).unwrap();
    pb.set_polling(polling).unwrap();
    let sa = Straw::new(
        pa,
        Endpoint::seed(DomId(2)),
        Role::Listener,
        Format::Raw,
        cfg.clone(),
    );
    let sb = Straw::new(pb, Endpoint::seed(DomId(1)), Role::Opener, Format::Raw, cfg);
    (sa, sb)
}

fn frame(i: usize, len: usize) -> Bytes {
    Bytes::from((0..len).map(|j| (i * 13 + j) as u8).collect::<Vec<_>>())
}

/// Polling mode (D26): frames of every size, including many times the 4 KiB ring, go both
/// ways with no event sent by either side, and the peer's close is the end of the stream.
#[test]
fn polling_straws_carry_frames_larger_than_the_ring_without_events() {
    let xen = Loopback::new();
    // A long slice: a polling wait that slept on the event channel (which no one rings)
    // would take seconds per wait.
    let cfg = StrawConfig {
        slice: Duration::from_secs(10),
        ..StrawConfig::default()
    };
    let (sa, sb) = v2_pair(&xen, 1, true, cfg);
    assert!(sa.is_polling() && sb.is_polling());
    let begin = Instant::now();
    let sizes = [0usize, 1, 100, 4091, 4096, 4097, 20_000, 300_000, 7];
    thread::scope(|s| {
        // Four threads: a side sending while its peer sends too must not need its own
        // receive to make progress.
        s.spawn(|| {
            for round in 0..3 {
                for (i, n) in sizes.iter().enumerate() {
                    sa.sender().send(frame(round * 100 + i, *n)).unwrap();
                }
            }
        });
        s.spawn(|| {
            for (i, n) in sizes.iter().enumerate() {
                assert_eq!(sa.receiver().recv().unwrap(), frame(i + 1000, *n));
            }
        });
        s.spawn(|| {
            for (i, n) in sizes.iter().enumerate() {
                sb.sender().send(frame(i + 1000, *n)).unwrap();
            }
        });
        for round in 0..3 {
            for (i, n) in sizes.iter().enumerate() {
                assert_eq!(
                    sb.receiver().recv().unwrap(),
                    frame(round * 100 + i, *n),
                    "#{i}"
                );
            }
        }
    });
    assert_eq!(sa.stats().notifies, 0, "{:?}", sa.stats());
    assert_eq!(sb.stats().notifies, 0, "{:?}", sb.stats());
    let start = Instant::now();
    thread::scope(|s| {
        // The receiver may block before or after the close: either way it sees the end.
        let r = s.spawn(|| sb.receiver().recv_timeout(Duration::from_secs(10)));
        sa.sender().send(Bytes::from_static(b"last")).unwrap();
        assert_eq!(r.join().unwrap().unwrap(), "last");
        let r = s.spawn(|| sb.receiver().recv_timeout(Duration::from_secs(10)));
        sa.sender().close().unwrap();
        assert_eq!(r.join().unwrap(), Err(StrawError::Eof));
    });
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(
        begin.elapsed() < Duration::from_secs(9),
        "{:?}",
        begin.elapsed()
    );
}

/// Polling mode: a peer that goes without a word (its pore closed, no end of stream) is
/// seen gone by a blocked receive and a blocked send, through its live byte, well within
/// their timeouts.
#[test]
fn a_polling_straw_sees_a_vanished_peer() {
    for blocked_in_send in [false, true] {
        let xen = Loopback::new();
        let (sa, sb) = v2_pair(&xen, 1, true, StrawConfig::default());
        let start = Instant::now();
        let r = thread::scope(|s| {
            let r = s.spawn(|| {
                if blocked_in_send {
                    // The vanishing side salvages what sits in its in-ring: sends go on
                    // until the ring is full again, and the one that finds no room fails.
                    loop {
                        sb.sender()
                            .send_timeout(frame(1, 1000), Duration::from_secs(20))?;
                    }
                } else {
                    sb.receiver().recv_timeout(Duration::from_secs(20))
                }
            });
            sa.shared().shutdown_pore(Duration::from_millis(200));
            r.join().unwrap()
        });
        assert_eq!(r, Err(StrawError::PeerGone), "send: {blocked_in_send}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }
}

/// Polling mode: a blocked call keeps its timeout, receiving and sending, and its naps
/// keep it from spinning all the time (a few hundred sleeps in 300 ms, not millions of
/// polls with no sleep).
#[test]
fn a_polling_straw_honours_its_timeouts() {
    let xen = Loopback::new();
    let (_sa, sb) = v2_pair(&xen, 1, true, StrawConfig::default());
    let t = Duration::from_millis(300);
    let start = Instant::now();
    assert_eq!(sb.receiver().recv_timeout(t), Err(StrawError::TimedOut));
    let took = start.elapsed();
    assert!(took >= t && took < t + Duration::from_secs(2), "{took:?}");
    let sleeps = sb.stats().sleeps;
    assert!(sleeps > 0, "never slept");
    assert!(
        sleeps < 300 * 1000 / 20,
        "{sleeps} naps: their growth is broken"
    );
    while sb.sender().try_send(frame(0, 1000)).is_ok() {}
    let start = Instant::now();
    assert_eq!(
        sb.sender().send_timeout(frame(1, 1000), t),
        Err(StrawError::TimedOut)
    );
    let took = start.elapsed();
    assert!(took >= t && took < t + Duration::from_secs(2), "{took:?}");
    assert_eq!(sb.stats().notifies, 0);
}

/// Polling mode is v2's alone; asking a LING pore for it is an error (asking it off is not).
#[test]
fn ling_pores_have_no_polling_mode() {
    let xen = Loopback::new();
    let (a, _b) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
    let (mut pa, _grant) = open_active(&a, DomId(2), Layout::Ling).unwrap();
    assert!(matches!(
        pa.set_polling(true),
        Err(StrawError::Ring(RingError::InvalidInput(_)))
    ));
    pa.set_polling(false).unwrap();
    assert!(!pa.is_polling());
}
