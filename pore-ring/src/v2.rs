//! The v2 straw ring (D4): one control page plus 2^k data pages per direction.
//!
//! # Layout
//!
//! The region is contiguous in our address space: the control page at offset 0, then the
//! active→passive ("a2p") data pages, then the passive→active ("p2a") data pages. The control
//! page ([`V2Control`], offsets pinned at compile time):
//!
//! | offset | field | written by |
//! |---|---|---|
//! | 0 | `magic` = [`V2_MAGIC`] (`"pRv2"`) | active, last, at init |
//! | 4 | `version` = [`V2_VERSION`] | active |
//! | 8 | `a2p_order`: a2p data pages = 2^order | active |
//! | 12 | `p2a_order` | active |
//! | 16 | `active_live` (0 gone, 1 connected, 2 not yet) | active |
//! | 17 | `passive_live` | passive (active sets 2 at init) |
//! | 64 | `a2p_prod` (own cache line) | active |
//! | 128 | `a2p_cons` | passive |
//! | 192 | `p2a_prod` | passive |
//! | 256 | `p2a_cons` | active |
//! | 320 | `a2p_want_write`: wake the consumer when data is written | set by passive, cleared by active |
//! | 384 | `a2p_want_read`: wake the producer when data is consumed | set by active, cleared by passive |
//! | 448 | `p2a_want_write` | set by active, cleared by passive |
//! | 512 | `p2a_want_read` | set by passive, cleared by active |
//! | 576 | `grants[880]`: `u32` refs of the data pages, a2p first, then p2a | active |
//!
//! Indices are free-running `u32`, masked by the (power-of-two) size. Notification suppression
//! follows libxenvchan: a side raises the peer's "wake me" byte only when it is about to wait,
//! then `fence(SeqCst)` and re-checks; the other side, after publishing its index, does
//! `fence(SeqCst)`, test-and-clears the byte and notifies only if it was set (D2). A waiting
//! producer is woken by threshold: the consumer clears its flag (and notifies) only once at least
//! half the ring is free, which it always is when the consumer has drained the ring.
//!
//! # Setting up
//!
//! The active side grants `1 + data pages` zeroed pages and calls [`V2Ring::active`] with the
//! data pages' refs: it zeroes the indices and flags, writes orders, version, live bytes and the
//! refs, and stores the magic last (release). It tells the peer only the control page's ref
//! (D15). The passive side maps the control page, reads the geometry with
//! [`V2Geometry::read`] and the refs with [`read_grants`] (both validate what they find), maps
//! the whole region contiguously (control + data), and calls [`V2Ring::passive`], which
//! validates the header again against the region and sets `passive_live = 1`.
//!
//! ```
//! use pore_core::{loopback::Loopback, DomId, GrantRef, Grants, SharedMemory};
//! use pore_ring::prelude::*;
//! use pore_ring::v2::{V2Geometry, V2Ring};
//!
//! let xen = Loopback::new();
//! let geometry = V2Geometry::new(1, 0)?; // 2 pages a2p, 1 page p2a
//! let pages = xen.domain(DomId(1)).grant(DomId(2), geometry.pages())?;
//! let data_refs = [GrantRef(11), GrantRef(12), GrantRef(13)];
//! let mut active = V2Ring::active(pages.view(), geometry, &data_refs)?;
//! let mut passive = V2Ring::passive(pages.view())?;
//!
//! // Batched publication: three frames' bytes, one index store.
//! for msg in [&b"one"[..], b"two", b"three"] {
//!     active.writer().write_deferred(msg)?;
//! }
//! active.writer().commit()?;
//! assert!(!active.take_notify(), "nobody asked to be woken");
//! let mut buf = [0u8; 32];
//! assert_eq!(passive.reader().read(&mut buf)?, 11);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::mem::offset_of;
use core::sync::atomic::Ordering;

use pore_core::{GrantRef, SharedAccess, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::free::FreeLayout;
use crate::{ByteConsumer, ByteProducer, RingError, SharedRing, Side};

/// The producer half of a v2 ring.
pub type Producer<A> = ByteProducer<A>;
/// The consumer half of a v2 ring.
pub type Consumer<A> = ByteConsumer<A>;

/// `magic` of an initialised v2 control page: `"pRv2"` little-endian.
pub const V2_MAGIC: u32 = u32::from_le_bytes(*b"pRv2");
/// Layout version.
pub const V2_VERSION: u32 = 1;
/// Largest order per direction (2^8 pages = 1 MiB, libxenvchan's maximum too).
pub const V2_MAX_ORDER: u8 = 8;
/// Entries of `grants[]`.
pub const V2_MAX_GRANTS: usize = 880;
/// Live byte: the side is gone (closed, or died and unmap-notify cleared it).
pub const LIVE_GONE: u8 = 0;
/// Live byte: connected.
pub const LIVE_CONNECTED: u8 = 1;
/// Live byte: not yet connected.
pub const LIVE_WAITING: u8 = 2;

/// The v2 control page. Documents and pins the offsets; never referenced over shared memory.
#[repr(C)]
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct V2Control {
    /// [`V2_MAGIC`] once initialised.
    pub magic: u32,
    /// [`V2_VERSION`].
    pub version: u32,
    /// log2 of the active→passive data pages.
    pub a2p_order: u32,
    /// log2 of the passive→active data pages.
    pub p2a_order: u32,
    /// Live byte of the active side.
    pub active_live: u8,
    /// Live byte of the passive side.
    pub passive_live: u8,
    /// Reserved, zero.
    pub _pad0: [u8; 46],
    /// Producer index of a2p.
    pub a2p_prod: u32,
    /// Reserved, zero.
    pub _pad1: [u8; 60],
    /// Consumer index of a2p.
    pub a2p_cons: u32,
    /// Reserved, zero.
    pub _pad2: [u8; 60],
    /// Producer index of p2a.
    pub p2a_prod: u32,
    /// Reserved, zero.
    pub _pad3: [u8; 60],
    /// Consumer index of p2a.
    pub p2a_cons: u32,
    /// Reserved, zero.
    pub _pad4: [u8; 60],
    /// Non-zero: the a2p consumer wants an event when data is written.
    pub a2p_want_write: u8,
    /// Reserved, zero.
    pub _pad5: [u8; 63],
    /// Non-zero: the a2p producer wants an event when data is consumed.
    pub a2p_want_read: u8,
    /// Reserved, zero.
    pub _pad6: [u8; 63],
    /// Non-zero: the p2a consumer wants an event when data is written.
    pub p2a_want_write: u8,
    /// Reserved, zero.
    pub _pad7: [u8; 63],
    /// Non-zero: the p2a producer wants an event when data is consumed.
    pub p2a_want_read: u8,
    /// Reserved, zero.
    pub _pad8: [u8; 63],
    /// Grant refs of the data pages, a2p first.
    pub grants: [u32; V2_MAX_GRANTS],
}

macro_rules! offsets {
    ($($name:ident = $field:ident;)*) => {
        $(
            #[doc = concat!("Offset of `", stringify!($field), "` in the control page.")]
            pub const $name: usize = offset_of!(V2Control, $field);
        )*
    };
}

offsets! {
    MAGIC = magic;
    VERSION = version;
    A2P_ORDER = a2p_order;
    P2A_ORDER = p2a_order;
    ACTIVE_LIVE = active_live;
    PASSIVE_LIVE = passive_live;
    A2P_PROD = a2p_prod;
    A2P_CONS = a2p_cons;
    P2A_PROD = p2a_prod;
    P2A_CONS = p2a_cons;
    A2P_WANT_WRITE = a2p_want_write;
    A2P_WANT_READ = a2p_want_read;
    P2A_WANT_WRITE = p2a_want_write;
    P2A_WANT_READ = p2a_want_read;
    GRANTS = grants;
}

const _: () = {
    assert!(core::mem::size_of::<V2Control>() == PAGE_SIZE);
    assert!(A2P_PROD == 64 && A2P_CONS == 128 && P2A_PROD == 192 && P2A_CONS == 256);
    assert!(A2P_WANT_WRITE == 320 && A2P_WANT_READ == 384);
    assert!(P2A_WANT_WRITE == 448 && P2A_WANT_READ == 512);
    assert!(GRANTS == 576 && ACTIVE_LIVE == 16 && PASSIVE_LIVE == 17);
    assert!(2 << V2_MAX_ORDER <= V2_MAX_GRANTS);
};

/// How many data pages each direction of a v2 ring has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V2Geometry {
    a2p_order: u8,
    p2a_order: u8,
}

impl V2Geometry {
    /// 2^`a2p_order` data pages active→passive and 2^`p2a_order` passive→active.
    ///
    /// # Errors
    ///
    /// [`RingError::InvalidInput`] if an order exceeds [`V2_MAX_ORDER`].
    pub fn new(a2p_order: u8, p2a_order: u8) -> Result<Self, RingError> {
        if a2p_order > V2_MAX_ORDER || p2a_order > V2_MAX_ORDER {
            return Err(RingError::InvalidInput("v2 ring order above the maximum"));
        }
        Ok(V2Geometry {
            a2p_order,
            p2a_order,
        })
    }

    /// The same number of data bytes each way: `bytes` must be a power-of-two number of pages.
    ///
    /// # Errors
    ///
    /// [`RingError::InvalidInput`] if `bytes` is not 2^k pages with k ≤ [`V2_MAX_ORDER`].
    pub fn symmetric_bytes(bytes: usize) -> Result<Self, RingError> {
        let pages = bytes / PAGE_SIZE;
        if pages == 0 || !pages.is_power_of_two() || pages * PAGE_SIZE != bytes {
            return Err(RingError::InvalidInput(
                "v2 ring size must be a power-of-two number of pages",
            ));
        }
        let order = pages.trailing_zeros() as u8;
        Self::new(order, order)
    }

    /// Reads and validates the geometry of an initialised control page.
    ///
    /// # Errors
    ///
    /// [`RingError::RegionTooSmall`] if `control` is shorter than a page, or
    /// [`RingError::BadHeader`] for a wrong magic, version or order.
    pub fn read(control: &impl SharedAccess) -> Result<Self, RingError> {
        if control.len() < PAGE_SIZE {
            return Err(RingError::RegionTooSmall {
                need: PAGE_SIZE,
                have: control.len(),
            });
        }
        if control.load_u32(MAGIC, Ordering::Acquire) != V2_MAGIC {
            return Err(RingError::BadHeader("not a v2 ring (bad magic)"));
        }
        if control.load_u32(VERSION, Ordering::Relaxed) != V2_VERSION {
            return Err(RingError::BadHeader("unsupported v2 ring version"));
        }
        let a = control.load_u32(A2P_ORDER, Ordering::Relaxed);
        let p = control.load_u32(P2A_ORDER, Ordering::Relaxed);
        if a > V2_MAX_ORDER as u32 || p > V2_MAX_ORDER as u32 {
            return Err(RingError::BadHeader("v2 ring order out of range"));
        }
        Ok(V2Geometry {
            a2p_order: a as u8,
            p2a_order: p as u8,
        })
    }

    /// log2 of the a2p data pages.
    pub fn a2p_order(&self) -> u8 {
        self.a2p_order
    }

    /// log2 of the p2a data pages.
    pub fn p2a_order(&self) -> u8 {
        self.p2a_order
    }

    /// Data bytes active→passive.
    pub fn a2p_bytes(&self) -> usize {
        PAGE_SIZE << self.a2p_order
    }

    /// Data bytes passive→active.
    pub fn p2a_bytes(&self) -> usize {
        PAGE_SIZE << self.p2a_order
    }

    /// Data pages of both directions (entries of `grants[]`).
    pub fn data_pages(&self) -> usize {
        (1 << self.a2p_order) + (1 << self.p2a_order)
    }

    /// All pages: the control page and the data pages.
    pub fn pages(&self) -> usize {
        1 + self.data_pages()
    }

    /// Bytes of the whole contiguous region.
    pub fn region_len(&self) -> usize {
        self.pages() * PAGE_SIZE
    }

    fn layouts(&self) -> (FreeLayout, FreeLayout) {
        let a2p = FreeLayout {
            data: PAGE_SIZE,
            size: self.a2p_bytes() as u32,
            prod: A2P_PROD,
            cons: A2P_CONS,
            want_write: Some(A2P_WANT_WRITE),
            want_read: Some(A2P_WANT_READ),
        };
        let p2a = FreeLayout {
            data: PAGE_SIZE + self.a2p_bytes(),
            size: self.p2a_bytes() as u32,
            prod: P2A_PROD,
            cons: P2A_CONS,
            want_write: Some(P2A_WANT_WRITE),
            want_read: Some(P2A_WANT_READ),
        };
        (a2p, p2a)
    }
}

/// Reads the data pages' grant refs of an initialised control page into `out`; returns how many
/// (the geometry's [`V2Geometry::data_pages`]).
///
/// # Errors
///
/// As for [`V2Geometry::read`], and [`RingError::InvalidInput`] if `out` is too short.
pub fn read_grants(control: &impl SharedAccess, out: &mut [GrantRef]) -> Result<usize, RingError> {
    let g = V2Geometry::read(control)?;
    grants_of(control, g, out)
}

/// As [`read_grants`], for a reader that already agreed the geometry elsewhere (a straw
/// negotiates it in xenstore): the control page is read once, and a geometry other than
/// `want` is refused rather than used.
///
/// # Errors
///
/// As for [`read_grants`], and [`RingError::BadHeader`] if the control page advertises
/// another geometry.
pub fn read_grants_expecting(
    control: &impl SharedAccess,
    want: V2Geometry,
    out: &mut [GrantRef],
) -> Result<usize, RingError> {
    let g = V2Geometry::read(control)?;
    expect_geometry(g, want)?;
    grants_of(control, g, out)
}

fn expect_geometry(found: V2Geometry, want: V2Geometry) -> Result<(), RingError> {
    if found == want {
        Ok(())
    } else {
        Err(RingError::BadHeader(
            "control page geometry differs from the agreed one",
        ))
    }
}

/// The data refs listed on `control` for geometry `g` (already read and validated by the
/// caller: the geometry is not read again).
pub(crate) fn grants_of(
    control: &impl SharedAccess,
    g: V2Geometry,
    out: &mut [GrantRef],
) -> Result<usize, RingError> {
    let n = g.data_pages();
    if out.len() < n {
        return Err(RingError::InvalidInput("grant ref buffer too short"));
    }
    for (i, r) in out[..n].iter_mut().enumerate() {
        *r = GrantRef(control.load_u32(GRANTS + 4 * i, Ordering::Relaxed));
    }
    Ok(n)
}

/// One side of a v2 ring: a producer on one direction and a consumer on the other.
pub struct V2Ring<A: SharedAccess> {
    mem: A,
    role: Side,
    geometry: V2Geometry,
    pub(crate) tx: ByteProducer<A>,
    pub(crate) rx: ByteConsumer<A>,
}

impl<A: SharedAccess> core::fmt::Debug for V2Ring<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("V2Ring")
            .field("role", &self.role)
            .field("geometry", &self.geometry)
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .finish()
    }
}

impl<A: SharedAccess + Clone> V2Ring<A> {
    /// Initialises the control page of the fresh region `mem` as the active side.
    ///
    /// `data_refs` are the grant refs of the data pages (a2p first), recorded in `grants[]`.
    ///
    /// # Errors
    ///
    /// [`RingError::RegionTooSmall`], or [`RingError::InvalidInput`] if `data_refs` does not
    /// have [`V2Geometry::data_pages`] entries.
    pub fn active(mem: A, geometry: V2Geometry, data_refs: &[GrantRef]) -> Result<Self, RingError> {
        let need = geometry.region_len();
        if mem.len() < need {
            return Err(RingError::RegionTooSmall {
                need,
                have: mem.len(),
            });
        }
        if data_refs.len() != geometry.data_pages() {
            return Err(RingError::InvalidInput(
                "one grant ref per data page is needed",
            ));
        }
        mem.store_u32(MAGIC, 0, Ordering::Relaxed);
        for off in [A2P_PROD, A2P_CONS, P2A_PROD, P2A_CONS] {
            mem.store_u32(off, 0, Ordering::Relaxed);
        }
        for off in [A2P_WANT_WRITE, A2P_WANT_READ, P2A_WANT_WRITE, P2A_WANT_READ] {
            mem.store_u8(off, 0, Ordering::Relaxed);
        }
        mem.store_u32(VERSION, V2_VERSION, Ordering::Relaxed);
        mem.store_u32(A2P_ORDER, geometry.a2p_order as u32, Ordering::Relaxed);
        mem.store_u32(P2A_ORDER, geometry.p2a_order as u32, Ordering::Relaxed);
        for (i, r) in data_refs.iter().enumerate() {
            mem.store_u32(GRANTS + 4 * i, r.0, Ordering::Relaxed);
        }
        mem.store_u8(ACTIVE_LIVE, LIVE_CONNECTED, Ordering::Relaxed);
        mem.store_u8(PASSIVE_LIVE, LIVE_WAITING, Ordering::Relaxed);
        // Everything above is ordered before the magic by the release store.
        mem.store_u32(MAGIC, V2_MAGIC, Ordering::Release);
        let (a2p, p2a) = geometry.layouts();
        Ok(V2Ring {
            tx: ByteProducer::new(mem.clone(), a2p, 0, 0),
            rx: ByteConsumer::new(mem.clone(), p2a, 0, 0),
            mem,
            role: Side::Active,
            geometry,
        })
    }

    /// Attaches to the initialised region `mem` (control page + data pages, contiguous) as the
    /// passive side, validating the header, and sets `passive_live = 1`.
    ///
    /// # Errors
    ///
    /// [`RingError::BadHeader`] for garbage (magic, version, orders),
    /// [`RingError::RegionTooSmall`] if the region cannot hold the advertised data pages, or
    /// [`RingError::BadIndex`] if the indices found are inconsistent.
    pub fn passive(mem: A) -> Result<Self, RingError> {
        let geometry = V2Geometry::read(&mem)?;
        Self::passive_with(mem, geometry)
    }

    /// As [`V2Ring::passive`], for a side that agreed the geometry elsewhere (a straw negotiates
    /// it in xenstore, and sized the mapping from it): the header is read once and a geometry
    /// other than `want` is refused, never attached with another size.
    ///
    /// # Errors
    ///
    /// As for [`V2Ring::passive`], and [`RingError::BadHeader`] if the control page advertises
    /// another geometry.
    pub fn passive_expecting(mem: A, want: V2Geometry) -> Result<Self, RingError> {
        let geometry = V2Geometry::read(&mem)?;
        expect_geometry(geometry, want)?;
        Self::passive_with(mem, geometry)
    }

    fn passive_with(mem: A, geometry: V2Geometry) -> Result<Self, RingError> {
        let need = geometry.region_len();
        if mem.len() < need {
            return Err(RingError::RegionTooSmall {
                need,
                have: mem.len(),
            });
        }
        let (a2p, p2a) = geometry.layouts();
        // Our own indices start where the header says (zero after `active`); the peer's are
        // validated against them.
        let a2p_cons = mem.load_u32(A2P_CONS, Ordering::Acquire);
        let a2p_prod = mem.load_u32(A2P_PROD, Ordering::Acquire);
        let p2a_prod = mem.load_u32(P2A_PROD, Ordering::Acquire);
        let p2a_cons = mem.load_u32(P2A_CONS, Ordering::Acquire);
        if a2p_prod.wrapping_sub(a2p_cons) > a2p.size {
            return Err(RingError::BadIndex {
                what: "producer",
                value: a2p_prod,
            });
        }
        if p2a_prod.wrapping_sub(p2a_cons) > p2a.size {
            return Err(RingError::BadIndex {
                what: "consumer",
                value: p2a_cons,
            });
        }
        mem.store_u8(PASSIVE_LIVE, LIVE_CONNECTED, Ordering::Release);
        Ok(V2Ring {
            tx: ByteProducer::new(mem.clone(), p2a, p2a_prod, p2a_cons),
            rx: ByteConsumer::new(mem.clone(), a2p, a2p_cons, a2p_prod),
            mem,
            role: Side::Passive,
            geometry,
        })
    }
}

impl<A: SharedAccess> V2Ring<A> {
    /// Polling mode on both halves (see [`ByteProducer::set_polling`]): publications cost no
    /// fence and send no notification, and neither half may wait. For a pair of peers that both
    /// busy-poll and agreed so; a peer that sleeps on a polling side is never woken.
    pub fn set_polling(&mut self, polling: bool) {
        self.tx.set_polling(polling);
        self.rx.set_polling(polling);
    }

    /// Our role.
    pub fn role(&self) -> Side {
        self.role
    }

    /// The geometry.
    pub fn geometry(&self) -> V2Geometry {
        self.geometry
    }

    fn live_offsets(&self) -> (usize, usize) {
        match self.role {
            Side::Active => (ACTIVE_LIVE, PASSIVE_LIVE),
            Side::Passive => (PASSIVE_LIVE, ACTIVE_LIVE),
        }
    }

    /// The peer's live byte ([`LIVE_GONE`], [`LIVE_CONNECTED`], [`LIVE_WAITING`], or whatever
    /// garbage the peer wrote).
    pub fn peer_live(&self) -> u8 {
        self.mem.load_u8(self.live_offsets().1, Ordering::Acquire)
    }

    /// Sets our live byte (e.g. [`LIVE_GONE`] when closing).
    pub fn set_live(&self, value: u8) {
        self.mem
            .store_u8(self.live_offsets().0, value, Ordering::Release)
    }
}

impl<A: SharedAccess> SharedRing for V2Ring<A> {
    type Writer = ByteProducer<A>;
    type Reader = ByteConsumer<A>;

    fn writer(&mut self) -> &mut ByteProducer<A> {
        &mut self.tx
    }

    fn reader(&mut self) -> &mut ByteConsumer<A> {
        &mut self.rx
    }

    fn split(self) -> (ByteProducer<A>, ByteConsumer<A>) {
        (self.tx, self.rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{cases, max_ops, Guarded};
    use crate::{RingReader, RingWriter};
    use pore_core::{Error as _, ErrorKind};
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::vec;
    use std::vec::Vec;

    fn refs(g: V2Geometry) -> Vec<GrantRef> {
        (0..g.data_pages() as u32)
            .map(|i| GrantRef(100 + i))
            .collect()
    }

    #[test]
    fn header_round_trip() {
        let geo = V2Geometry::new(2, 1).unwrap();
        let g = Guarded::new(geo.region_len());
        let v = g.view();
        let a = V2Ring::active(v, geo, &refs(geo)).unwrap();
        assert_eq!(V2Geometry::read(&v).unwrap(), geo);
        let mut out = [GrantRef(0); 8];
        assert_eq!(read_grants(&v, &mut out).unwrap(), 6);
        assert_eq!(out[5], GrantRef(105));
        assert_eq!(a.peer_live(), LIVE_WAITING);
        let p = V2Ring::passive(v).unwrap();
        assert_eq!(a.peer_live(), LIVE_CONNECTED);
        assert_eq!(p.peer_live(), LIVE_CONNECTED);
        p.set_live(LIVE_GONE);
        assert_eq!(a.peer_live(), LIVE_GONE);
        assert_eq!(p.geometry(), geo);
        assert_eq!(p.role(), Side::Passive);
        assert_eq!(geo.pages(), 7);
        assert!(V2Geometry::new(9, 0).is_err());
        assert_eq!(
            V2Geometry::symmetric_bytes(32768).unwrap(),
            V2Geometry::new(3, 3).unwrap()
        );
        assert!(V2Geometry::symmetric_bytes(3 * 4096).is_err());
        assert!(read_grants(&v, &mut [GrantRef(0); 2]).is_err());
        g.assert_guards();
    }

    #[test]
    fn an_agreed_geometry_is_checked_not_trusted() {
        let geo = V2Geometry::new(1, 0).unwrap();
        let g = Guarded::new(geo.region_len());
        let v = g.view();
        V2Ring::active(v, geo, &refs(geo)).unwrap();
        let mut out = [GrantRef(0); 3];
        assert_eq!(read_grants_expecting(&v, geo, &mut out).unwrap(), 3);
        assert_eq!(out, [GrantRef(100), GrantRef(101), GrantRef(102)]);
        // The peer advertises a smaller ring than agreed: refused, however the region looks.
        let other = V2Geometry::new(0, 0).unwrap();
        for (want, found) in [(other, geo), (geo, other)] {
            v.store_u32(A2P_ORDER, found.a2p_order() as u32, Ordering::Relaxed);
            v.store_u32(P2A_ORDER, found.p2a_order() as u32, Ordering::Relaxed);
            assert!(matches!(
                read_grants_expecting(&v, want, &mut out),
                Err(RingError::BadHeader(_))
            ));
            assert!(matches!(
                V2Ring::passive_expecting(v, want),
                Err(RingError::BadHeader(_))
            ));
            // Plain attach follows whatever the header says.
            assert_eq!(V2Ring::passive(v).unwrap().geometry(), found);
        }
        g.assert_guards();
    }

    #[test]
    fn passive_rejects_garbage_headers() {
        let geo = V2Geometry::new(1, 1).unwrap();
        let g = Guarded::new(geo.region_len());
        let v = g.view();
        assert!(matches!(V2Ring::passive(v), Err(RingError::BadHeader(_))));
        V2Ring::active(v, geo, &refs(geo)).unwrap();
        v.store_u32(A2P_ORDER, 30, Ordering::Relaxed);
        assert!(matches!(V2Ring::passive(v), Err(RingError::BadHeader(_))));
        v.store_u32(A2P_ORDER, 8, Ordering::Relaxed);
        assert!(matches!(
            V2Ring::passive(v),
            Err(RingError::RegionTooSmall { .. })
        ));
        v.store_u32(A2P_ORDER, 1, Ordering::Relaxed);
        v.store_u32(VERSION, 2, Ordering::Relaxed);
        assert!(matches!(V2Ring::passive(v), Err(RingError::BadHeader(_))));
        v.store_u32(VERSION, 1, Ordering::Relaxed);
        v.store_u32(A2P_PROD, 1 << 20, Ordering::Relaxed);
        assert_eq!(V2Ring::passive(v).unwrap_err().kind(), ErrorKind::Protocol);
        v.store_u32(A2P_PROD, 0, Ordering::Relaxed);
        assert!(V2Ring::passive(v).is_ok());
        assert!(V2Ring::active(v, geo, &[]).is_err());
        let small = Guarded::new(4096);
        assert!(V2Ring::active(small.view(), geo, &refs(geo)).is_err());
        g.assert_guards();
    }

    #[test]
    fn suppression_notifies_only_sleepers() {
        let geo = V2Geometry::new(0, 0).unwrap();
        let g = Guarded::new(geo.region_len());
        let v = g.view();
        let (mut atx, mut arx) = V2Ring::active(v, geo, &refs(geo)).unwrap().split();
        let (mut ptx, mut prx) = V2Ring::passive(v).unwrap().split();
        let _ = (&mut ptx, &mut arx);
        // Nobody waits: no events.
        atx.write(b"abc").unwrap();
        assert!(!RingWriter::take_notify(&mut atx));
        let mut buf = [0u8; 8];
        assert_eq!(prx.read(&mut buf).unwrap(), 3);
        assert!(!RingReader::take_notify(&mut prx));
        // The consumer is about to sleep: it asks, re-checks (empty), so the next write notifies
        // once and clears the request.
        assert!(!RingReader::prepare_wait(&mut prx).unwrap());
        atx.write(b"d").unwrap();
        assert!(RingWriter::take_notify(&mut atx));
        atx.write(b"e").unwrap();
        assert!(!RingWriter::take_notify(&mut atx));
        // The re-check sees data published before the request.
        assert!(RingReader::prepare_wait(&mut prx).unwrap());
        let mut two = [0u8; 2];
        assert_eq!(prx.read(&mut two).unwrap(), 2);
        // `publish` makes bytes visible without the wake-up check; `commit` does the check.
        assert!(!RingReader::prepare_wait(&mut prx).unwrap());
        atx.write_deferred(b"f").unwrap();
        RingWriter::publish(&mut atx).unwrap();
        assert!(!RingWriter::take_notify(&mut atx));
        assert_eq!(prx.readable().unwrap(), 1);
        atx.commit().unwrap();
        assert!(RingWriter::take_notify(&mut atx));
        assert_eq!(prx.read(&mut two).unwrap(), 1);
        // Producer waiting for room: fill, ask, consumer's release notifies.
        let big = vec![1u8; 5000];
        while atx.write(&big).unwrap() > 0 {}
        assert!(!RingWriter::prepare_wait(&mut atx).unwrap());
        assert_eq!(prx.read(&mut buf).unwrap(), 8);
        // Threshold: a waiting producer is woken once half the ring is free, not before.
        assert!(!RingReader::take_notify(&mut prx));
        assert!(
            RingWriter::prepare_wait(&mut atx).unwrap(),
            "but it sees the room on re-check"
        );
        let mut half = vec![0u8; 2048];
        assert_eq!(prx.read(&mut half).unwrap(), 2048);
        assert!(RingReader::take_notify(&mut prx));
        g.assert_guards();
    }

    #[test]
    fn polling_mode_never_notifies_nor_waits() {
        let geo = V2Geometry::new(0, 0).unwrap();
        let g = Guarded::new(geo.region_len());
        let v = g.view();
        let mut active = V2Ring::active(v, geo, &refs(geo)).unwrap();
        active.set_polling(true);
        let (mut atx, mut arx) = active.split();
        let (_ptx, mut prx) = V2Ring::passive(v).unwrap().split();
        assert!(atx.is_polling() && arx.is_polling() && !prx.is_polling());
        // The consumer (not polling) asks to be woken; the polling producer does not look.
        assert!(!RingReader::prepare_wait(&mut prx).unwrap());
        atx.write(b"abc").unwrap();
        assert!(!RingWriter::take_notify(&mut atx));
        assert_eq!(
            v.load_u8(A2P_WANT_WRITE, Ordering::Relaxed),
            1,
            "flag left set"
        );
        let mut buf = [0u8; 8];
        assert_eq!(prx.read(&mut buf).unwrap(), 3);
        assert!(matches!(
            RingWriter::prepare_wait(&mut atx),
            Err(RingError::InvalidInput(_))
        ));
        assert!(matches!(
            RingReader::prepare_wait(&mut arx),
            Err(RingError::InvalidInput(_))
        ));
        // Off again: the usual check, which finds the flag and notifies.
        atx.set_polling(false);
        atx.write(b"d").unwrap();
        assert!(RingWriter::take_notify(&mut atx));
        g.assert_guards();
    }

    #[test]
    fn hostile_peer_indices() {
        let geo = V2Geometry::new(0, 0).unwrap();
        let g = Guarded::new(geo.region_len());
        let v = g.view();
        let mut a = V2Ring::active(v, geo, &refs(geo)).unwrap();
        let mut buf = [0u8; 64];
        // Claims more than a ring's worth of data.
        v.store_u32(P2A_PROD, 4097, Ordering::Relaxed);
        assert_eq!(
            a.reader().read(&mut buf).unwrap_err().kind(),
            ErrorKind::Protocol
        );
        assert_eq!(a.reader().read(&mut buf), Err(RingError::Broken));
        // Consumes bytes we never published.
        v.store_u32(A2P_CONS, 10, Ordering::Relaxed);
        assert_eq!(
            a.writer().writable().unwrap_err().kind(),
            ErrorKind::Protocol
        );
        assert!(a.writer().is_broken());
        g.assert_guards();
    }

    #[test]
    fn two_threads_stream() {
        let geo = V2Geometry::new(0, 0).unwrap();
        let g = Guarded::new(geo.region_len());
        let v = g.view();
        let (mut tx, _) = V2Ring::active(v, geo, &refs(geo)).unwrap().split();
        let (_, mut rx) = V2Ring::passive(v).unwrap().split();
        let total: usize = if cfg!(miri) { 3_000 } else { 1_000_000 };
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut sent = 0usize;
                let chunk: Vec<u8> = (0..977).map(|i| i as u8).collect();
                while sent < total {
                    let want = (total - sent).min(chunk.len());
                    let start = sent % 977;
                    let end = (start + want).min(977);
                    sent += tx.write(&chunk[start..end]).unwrap();
                    std::thread::yield_now();
                }
            });
            let mut got = 0usize;
            let mut buf = vec![0u8; 1500];
            while got < total {
                let n = rx.read(&mut buf).unwrap();
                for (i, b) in buf[..n].iter().enumerate() {
                    assert_eq!(*b, ((got + i) % 977) as u8);
                }
                got += n;
                std::thread::yield_now();
            }
        });
        g.assert_guards();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        /// Random deferred writes, commits, publishes, reads and releases against `VecDeque` models.
        #[test]
        fn model(ops in proptest::collection::vec((0u8..6, any::<bool>(), 0usize..10000), 1..max_ops(50))) {
            let geo = V2Geometry::new(1, 0).unwrap();
            let g = Guarded::new(geo.region_len());
            let v = g.view();
            let mut a = V2Ring::active(v, geo, &refs(geo)).unwrap();
            let mut p = V2Ring::passive(v).unwrap();
            // Per direction: (published bytes, staged bytes, read-but-unreleased count)
            let mut models = [(VecDeque::new(), Vec::new(), 0usize), (VecDeque::new(), Vec::new(), 0usize)];
            let sizes = [geo.a2p_bytes(), geo.p2a_bytes()];
            let mut counter = 0u8;
            for (op, a_to_p, len) in ops {
                let d = usize::from(!a_to_p);
                let (w, r) = if a_to_p { (&mut a, &mut p) } else { (&mut p, &mut a) };
                let (published, staged, unreleased) = &mut models[d];
                let in_ring = published.len() + staged.len() + *unreleased;
                match op {
                    0 => {
                        let data: Vec<u8> = (0..len).map(|_| { counter = counter.wrapping_add(1); counter }).collect();
                        let n = w.writer().write_deferred(&data).unwrap();
                        prop_assert_eq!(n, len.min(sizes[d] - in_ring));
                        staged.extend_from_slice(&data[..n]);
                    }
                    1 => { w.writer().commit().unwrap(); published.extend(staged.drain(..)); }
                    4 => { RingWriter::publish(w.writer()).unwrap(); published.extend(staged.drain(..)); }
                    5 => { RingReader::publish(r.reader()).unwrap(); *unreleased = 0; }
                    2 => {
                        let mut buf = vec![0u8; len];
                        let n = r.reader().read_deferred(&mut buf).unwrap();
                        prop_assert_eq!(n, len.min(published.len()));
                        let want: Vec<u8> = published.drain(..n).collect();
                        prop_assert_eq!(&buf[..n], &want[..]);
                        *unreleased += n;
                    }
                    _ => { r.reader().release().unwrap(); *unreleased = 0; }
                }
            }
            g.assert_guards();
        }

        /// A hostile passive side writes arbitrary indices and flags between our operations.
        #[test]
        fn hostile(ops in proptest::collection::vec((0u8..5, any::<u32>(), 0usize..9000), 1..max_ops(40))) {
            let geo = V2Geometry::new(1, 0).unwrap();
            let g = Guarded::new(geo.region_len());
            let v = g.view();
            let mut a = V2Ring::active(v, geo, &refs(geo)).unwrap();
            let mut buf = vec![0u8; 9000];
            for (op, value, len) in ops {
                let value = if value % 4 == 0 { value } else { value % 16384 };
                match op {
                    0 => v.store_u32(P2A_PROD, value, Ordering::Relaxed),
                    1 => v.store_u32(A2P_CONS, value, Ordering::Relaxed),
                    2 => v.store_u8(A2P_WANT_WRITE, value as u8, Ordering::Relaxed),
                    3 => { if let Ok(n) = a.writer().write(&buf[..len]) { prop_assert!(n <= len); } }
                    _ => { if let Ok(n) = a.reader().read(&mut buf[..len]) { prop_assert!(n <= len); } }
                }
            }
            g.assert_guards();
        }
    }
}
