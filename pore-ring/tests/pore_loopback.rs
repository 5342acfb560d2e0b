//! End to end over pore-core's loopback backend: a v2 and a LING ring between two domains'
//! pores, opened with the pore-level constructors, two threads, framed messages through the
//! blocking sender and receiver (which wait on the event channels when the ring is full or
//! empty).
#![cfg(feature = "std")]

use std::time::Duration;

use pore_core::loopback::Loopback;
use pore_core::{DomId, EventChannel, GrantRef, RingReader, RingWriter, SharedAccess, SharedRing};
use pore_ring::blocking::{FrameReceiver, FrameSender};
use pore_ring::ling::LingRing;
use pore_ring::v2::{read_grants, V2Geometry, V2Ring};
use pore_ring::wait::{StdClock, Waiter};
use pore_ring::RingError;

fn frame(i: usize) -> Vec<u8> {
    // Sizes from 0 to beyond the ring (frames larger than the ring stream through it).
    let len = (i * 977) % 9000;
    (0..len).map(|j| (i + j) as u8).collect()
}

/// Sends `count` frames through `tx` and receives them through `rx` on another thread; returns
/// how many notifications both sides sent.
fn stream<W, R, C>(tx: W, ctx: &C, rx: R, crx: &C, count: usize) -> u64
where
    W: RingWriter<Error = RingError> + Send,
    R: RingReader<Error = RingError> + Send,
    C: EventChannel,
{
    let waiter = || Waiter::new(StdClock::new(), Duration::from_micros(20));
    std::thread::scope(|s| {
        let sender = s.spawn(move || {
            let mut sender = FrameSender::new(tx, ctx, waiter(), 1 << 16);
            for i in 0..count {
                sender.send(&frame(i)).expect("send");
            }
            sender.notifications()
        });
        let mut receiver = FrameReceiver::new(rx, crx, waiter(), 1 << 16);
        let mut buf = vec![0u8; 1 << 16];
        for i in 0..count {
            let n = receiver.recv(&mut buf).expect("recv");
            assert_eq!(&buf[..n], &frame(i)[..], "frame {i}");
        }
        assert_eq!(receiver.skipped_frames(), 0, "nothing is over the maximum");
        receiver.notifications() + sender.join().expect("sender thread")
    })
}

#[test]
fn v2_between_two_pores() -> Result<(), Box<dyn std::error::Error>> {
    let xen = Loopback::new();
    let (d1, d2) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
    let geometry = V2Geometry::new(1, 0)?;

    // Domain 1 grants the control page and the data pages and initialises the ring.
    let active = V2Ring::open_active(&d1, DomId(2), geometry)?;
    let info = active.pore.info();
    assert_eq!(info.refs.len(), geometry.pages());

    // Domain 2 needs only the control page's ref (D15) on a backend that can map one page of
    // a grant (`V2Ring::open_passive`); the loopback maps whole grants only, so here every ref
    // is passed and checked against what the control page lists.
    let passive = V2Ring::open_passive_all(&d2, DomId(1), &info.refs, info.port)?;
    assert_eq!(passive.ring.geometry(), geometry);
    let mut refs = vec![GrantRef(0); geometry.data_pages()];
    assert_eq!(
        read_grants(&*passive.pore, &mut refs)?,
        geometry.data_pages()
    );
    assert_eq!(&refs[..], &info.refs[1..]);

    let (a_tx, a_rx) = active.ring.split();
    let (p_tx, p_rx) = passive.ring.split();
    let count = if cfg!(miri) { 20 } else { 2000 };
    let events = stream(
        a_tx,
        active.pore.channel(),
        p_rx,
        passive.pore.channel(),
        count,
    );
    // How many events suppression saves depends on timing (frames here are up to 9000 bytes,
    // larger than the 8 KiB ring, so the sides often wait on each other); just report it.
    eprintln!("v2: {events} events for {count} frames");
    drop((a_rx, p_tx));

    // With the halves gone, the pores close cleanly.
    let (passive_pore, active_pore) = (passive.pore, active.pore);
    std::sync::Arc::try_unwrap(passive_pore)
        .expect("only holder")
        .close()?;
    std::sync::Arc::try_unwrap(active_pore)
        .expect("only holder")
        .close()?;
    Ok(())
}

#[test]
fn a_malformed_control_page_is_refused() -> Result<(), Box<dyn std::error::Error>> {
    use std::sync::atomic::Ordering;
    let xen = Loopback::new();
    let (d1, d2) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
    let active = V2Ring::open_active(&d1, DomId(2), V2Geometry::new(0, 0)?)?;
    let info = active.pore.info();
    // Orders the version cannot have: the header is refused, not trusted.
    let a2p_order = std::mem::offset_of!(pore_ring::v2::V2Control, a2p_order);
    active.pore.store_u32(a2p_order, 40, Ordering::Relaxed);
    let e =
        V2Ring::open_passive_all(&d2, DomId(1), &info.refs, info.port).expect_err("a bad geometry");
    assert_eq!(pore_core::Error::kind(&e), pore_core::ErrorKind::Protocol);
    active.close()?;
    // A wrong magic (on a fresh ring: the failed open consumed the port).
    let active = V2Ring::open_active(&d1, DomId(2), V2Geometry::new(0, 0)?)?;
    let info = active.pore.info();
    active.pore.store_u32(0, 0, Ordering::Relaxed);
    let e =
        V2Ring::open_passive_all(&d2, DomId(1), &info.refs, info.port).expect_err("a bad magic");
    assert_eq!(pore_core::Error::kind(&e), pore_core::ErrorKind::Protocol);
    active.close()?;
    // Too few refs: the loopback refuses to map part of a grant before the header is read.
    let active = V2Ring::open_active(&d1, DomId(2), V2Geometry::new(0, 0)?)?;
    let info = active.pore.info();
    assert!(V2Ring::open_passive_all(&d2, DomId(1), &info.refs[..2], info.port).is_err());
    active.close()?;
    Ok(())
}

#[test]
fn ling_between_two_pores() -> Result<(), Box<dyn std::error::Error>> {
    let xen = Loopback::new();
    let (d1, d2) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
    let active = LingRing::open_active(&d1, DomId(2))?;
    let info = active.pore.info();
    let passive = LingRing::open_passive(&d2, DomId(1), &info.refs, info.port)?;
    assert_eq!(passive.pore.len(), active.pore.len());
    assert!(LingRing::open_passive(&d2, DomId(1), &info.refs[..7], info.port).is_err());

    // The mapping side writes `input`, the granting side reads it.
    let (p_tx, p_rx) = passive.ring.split();
    let (a_tx, a_rx) = active.ring.split();
    let count = if cfg!(miri) { 10 } else { 500 };
    let events = stream(
        p_tx,
        passive.pore.channel(),
        a_rx,
        active.pore.channel(),
        count,
    );
    assert!(
        events >= count as u64,
        "LING pokes after every write and read"
    );
    drop((a_tx, p_rx));
    std::sync::Arc::try_unwrap(passive.pore)
        .expect("only holder")
        .close()?;
    std::sync::Arc::try_unwrap(active.pore)
        .expect("only holder")
        .close()?;
    Ok(())
}
