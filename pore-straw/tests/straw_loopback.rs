//! Straws over pore-core's loopback backend: both layouts, big frames, halves in two threads,
//! JSON mailboxes, graceful close, peer loss, leaks.

#![cfg(feature = "std")]

use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pore_core::loopback::{Loopback, LoopbackDomain};
use pore_core::DomId;
use pore_straw::straw::{
    open_active, open_passive, open_passive_v2_all, Straw, StrawConfig, StrawError,
};
use pore_straw::{Endpoint, Format, Layout, Role};

const LAYOUTS: [Layout; 2] = [Layout::Ling, Layout::V2 { ring_pages: 2 }];

fn pair(
    xen: &Loopback,
    layout: Layout,
    format: Format,
    cfg: StrawConfig,
) -> (Straw<LoopbackDomain>, Straw<LoopbackDomain>) {
    let (a, b) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
    let (pa, grant) = open_active(&a, DomId(2), layout).unwrap();
    let pb = match layout {
        Layout::Ling => open_passive(&b, DomId(1), layout, &grant.refs, grant.port).unwrap(),
        // The loopback maps whole grants only.
        Layout::V2 { ring_pages } => {
            open_passive_v2_all(&b, DomId(1), ring_pages, &pa.all_refs(), grant.port).unwrap()
        }
    };
    let sa = Straw::new(
        pa,
        Endpoint::seed(DomId(2)),
        Role::Listener,
        format,
        cfg.clone(),
    );
    let sb = Straw::new(pb, Endpoint::seed(DomId(1)), Role::Opener, format, cfg);
    (sa, sb)
}

fn frame(i: usize, len: usize) -> Bytes {
    Bytes::from((0..len).map(|j| (i * 31 + j * 7) as u8).collect::<Vec<_>>())
}

#[test]
fn frames_of_every_size_both_ways_in_two_threads() {
    let sizes = [0usize, 1, 3, 4, 100, 4096, 16375, 16376, 40_000, 3 << 20];
    for layout in LAYOUTS {
        let xen = Loopback::new();
        let (sa, sb) = pair(&xen, layout, Format::Raw, StrawConfig::default());
        let (ta, ra) = sa.split();
        let (tb, rb) = sb.split();
        let t1 = thread::spawn(move || {
            for (i, n) in sizes.iter().enumerate() {
                ta.send(frame(i, *n)).unwrap();
            }
            ta
        });
        let t2 = thread::spawn(move || {
            for (i, n) in sizes.iter().enumerate() {
                tb.send(frame(i + 100, *n)).unwrap();
            }
            tb
        });
        let t3 = thread::spawn(move || {
            for (i, n) in sizes.iter().enumerate() {
                let f = rb.recv_timeout(Duration::from_secs(10)).unwrap();
                assert_eq!(f.len(), *n, "{layout:?} a→b #{i}");
                assert_eq!(f, frame(i, *n));
            }
            rb
        });
        for (i, n) in sizes.iter().enumerate() {
            let f = ra.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(f, frame(i + 100, *n), "{layout:?} b→a #{i}");
        }
        let ta = t1.join().unwrap();
        let tb = t2.join().unwrap();
        let _rb = t3.join().unwrap();
        ta.close().unwrap();
        // The peer sees the end: its pore's peer is gone.
        let e = ra.try_recv().unwrap_err();
        assert!(matches!(e, StrawError::Closed), "{e:?}");
        tb.close().unwrap_or(());
        drop((ra, _rb));
        let o = xen.outstanding();
        assert_eq!(
            (o.grants, o.mappings, o.ports),
            (0, 0, 0),
            "{layout:?}: {o:?}"
        );
    }
}

#[test]
fn non_blocking_calls_and_timeouts() {
    for layout in LAYOUTS {
        let xen = Loopback::new();
        let (sa, sb) = pair(&xen, layout, Format::Raw, StrawConfig::default());
        assert_eq!(sb.receiver().try_recv(), Err(StrawError::WouldBlock));
        let t = Instant::now();
        assert_eq!(
            sb.receiver().recv_timeout(Duration::from_millis(50)),
            Err(StrawError::TimedOut)
        );
        assert!(t.elapsed() >= Duration::from_millis(50));
        // Fill the ring without a reader.
        let mut sent = 0;
        loop {
            match sa.sender().try_send(frame(sent, 1000)) {
                Ok(()) => sent += 1,
                Err(StrawError::WouldBlock) => break,
                Err(e) => panic!("{e:?}"),
            }
            assert!(sent < 100_000);
        }
        assert!(sent >= 8, "{layout:?}: {sent}");
        assert_eq!(
            sa.sender()
                .send_timeout(frame(0, 1000), Duration::from_millis(30)),
            Err(StrawError::TimedOut)
        );
        // Everything accepted arrives, in order; the last one may be partly in the ring, and a
        // flush finishes it once there is room.
        for i in 0..sent {
            if i == sent - 1 {
                sa.sender().flush_timeout(Duration::from_secs(1)).unwrap();
            }
            let f = sb.receiver().recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(f, frame(i, 1000));
        }
    }
}

#[test]
fn json_envelopes_go_to_mailboxes_and_garbage_is_dropped() {
    let xen = Loopback::new();
    let (sa, sb) = pair(
        &xen,
        Layout::V2 { ring_pages: 1 },
        Format::Json,
        StrawConfig::default(),
    );
    let echo = sb.mailbox("echo");
    let other = sb.mailbox("other");
    let tx = sa.sender();
    tx.send_to("echo", &serde_json::json!({"n": 1})).unwrap();
    tx.send(Bytes::from_static(b"not json")).unwrap();
    tx.send(Bytes::from_static(br#"{"addr":"nobody","msg":2}"#))
        .unwrap();
    tx.send(Bytes::from_static(br#"{"addr":7,"msg":2}"#))
        .unwrap();
    tx.send_to("other", &serde_json::json!("hi")).unwrap();
    tx.send_to("echo", &serde_json::json!([1, 2, 3])).unwrap();
    let mut delivered = 0;
    let end = Instant::now() + Duration::from_secs(5);
    while delivered < 3 && Instant::now() < end {
        delivered += sb.receiver().dispatch(Duration::from_millis(100)).unwrap();
    }
    assert_eq!(delivered, 3);
    assert_eq!(echo.try_recv(), Some(serde_json::json!({"n": 1})));
    assert_eq!(echo.try_recv(), Some(serde_json::json!([1, 2, 3])));
    assert_eq!(echo.try_recv(), None);
    assert_eq!(other.try_recv(), Some(serde_json::json!("hi")));
    // The straw lives on.
    tx.send_to("other", &serde_json::json!(null)).unwrap();
    assert_eq!(sb.receiver().dispatch(Duration::from_secs(2)).unwrap(), 1);
    let (a, b) = (sa.stats(), sb.stats());
    assert_eq!((a.frames_sent, b.frames_received), (7, 7));
    assert_eq!(a.bytes_sent, b.bytes_received);
}

#[test]
fn close_drains_everything_sent_before_it() {
    for layout in LAYOUTS {
        let xen = Loopback::new();
        let (sa, sb) = pair(&xen, layout, Format::Raw, StrawConfig::default());
        const N: usize = 20_000;
        let reader = thread::spawn(move || {
            let mut got = 0usize;
            loop {
                match sb.receiver().recv_timeout(Duration::from_secs(5)) {
                    Ok(f) => {
                        assert_eq!(f, frame(got, 64), "frame {got}");
                        got += 1;
                    }
                    Err(e) => return (got, e),
                }
            }
        });
        for i in 0..N {
            sa.sender().send(frame(i, 64)).unwrap();
        }
        sa.close().unwrap();
        // Every frame, then the end of the stream (not a lost peer).
        assert_eq!(reader.join().unwrap(), (N, StrawError::Eof), "{layout:?}");
    }
}

/// A standalone straw half-closes with `finish`: the peer receives every frame, then the end
/// of the stream, and can still answer; its close ends our stream in turn.
#[test]
fn finish_ends_a_standalone_stream_and_the_other_direction_lives_on() {
    for layout in LAYOUTS {
        let xen = Loopback::new();
        let (sa, sb) = pair(&xen, layout, Format::Raw, StrawConfig::default());
        let t = Duration::from_secs(5);
        for i in 0..3 {
            sa.sender().send(frame(i, 100)).unwrap();
        }
        let finisher = thread::spawn(move || {
            sa.finish().unwrap();
            sa
        });
        for i in 0..3 {
            assert_eq!(sb.receiver().recv_timeout(t).unwrap(), frame(i, 100));
        }
        assert_eq!(
            sb.receiver().recv_timeout(t),
            Err(StrawError::Eof),
            "{layout:?}"
        );
        assert_eq!(
            sb.receiver().try_recv(),
            Err(StrawError::Eof),
            "it stays ended"
        );
        let sa = finisher.join().unwrap();
        assert_eq!(
            sa.sender().send(frame(9, 10)),
            Err(StrawError::Closed),
            "nothing after finish"
        );
        sb.sender().send(Bytes::from_static(b"answer")).unwrap();
        assert_eq!(sa.receiver().recv_timeout(t).unwrap(), "answer");
        sb.close().unwrap();
        assert_eq!(
            sa.receiver().recv_timeout(t),
            Err(StrawError::Eof),
            "{layout:?}"
        );
        sa.close().unwrap();
    }
}

/// The receiving half closes the straw too: the peer sees the end of the stream, and a sending
/// half split off sends no more.
#[test]
fn the_receiving_half_closes_the_straw() {
    for layout in LAYOUTS {
        let xen = Loopback::new();
        let (sa, sb) = pair(&xen, layout, Format::Raw, StrawConfig::default());
        let t = Duration::from_secs(5);
        let (tx, rx) = sa.split();
        tx.send(Bytes::from_static(b"last")).unwrap();
        let reader = thread::spawn(move || {
            let first = sb.receiver().recv_timeout(t);
            (first, sb.receiver().recv_timeout(t))
        });
        rx.close().unwrap();
        let (first, then) = reader.join().unwrap();
        assert_eq!(first.unwrap(), "last", "{layout:?}");
        assert_eq!(then, Err(StrawError::Eof), "{layout:?}");
        assert_eq!(
            tx.send(Bytes::from_static(b"more")),
            Err(StrawError::Closed)
        );
    }
}

#[test]
fn a_dead_peer_is_noticed_within_a_second() {
    for layout in LAYOUTS {
        let xen = Loopback::new();
        let (sa, sb) = pair(&xen, layout, Format::Raw, StrawConfig::default());
        let waiter = thread::spawn(move || {
            let t = Instant::now();
            let r = sb.receiver().recv_timeout(Duration::from_secs(10));
            (r, t.elapsed())
        });
        thread::sleep(Duration::from_millis(100));
        // The peer vanishes without the close protocol (its pore is dropped).
        drop(sa);
        let (r, took) = waiter.join().unwrap();
        assert_eq!(r, Err(StrawError::PeerGone), "{layout:?}");
        assert!(took < Duration::from_secs(1), "{layout:?}: {took:?}");
    }
}
