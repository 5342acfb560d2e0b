//! The LING straw ring, bit-exact with the original (`docs/protocol-facts.md` §0.2, D3).
//!
//! Eight contiguous pages: a header of four `int32` indices `in_prod, in_cons, out_cons,
//! out_prod` (offsets 0, 4, 8, 12), then `input[16376]` at 16 and `output[16376]` at 16392.
//! Indices are *wrapped*, kept in `[0, 16376)`, and one byte is always left empty to tell full
//! from empty (at most 16375 bytes in flight). The granting (active) side writes `output` and
//! `out_prod` and reads `input`; the mapping (passive) side does the reverse.
//!
//! A hostile peer can fake full or empty and send garbage bytes; an index `>= 16376` breaks the
//! ring. LING pokes after every write and every read, so [`RingWriter::take_notify`] and
//! [`RingReader::take_notify`] are `true` after every call that moved bytes (no suppression,
//! no batching benefit beyond the copies).
//!
//! ```
//! use pore_core::{loopback::Loopback, DomId, Grants, SharedMemory};
//! use pore_ring::prelude::*;
//! use pore_ring::ling::{LingRing, LING_REGION};
//!
//! let xen = Loopback::new();
//! let pages = xen.domain(DomId(1)).grant(DomId(2), 8)?;
//! assert_eq!(pages.len(), LING_REGION);
//! let mut granter = LingRing::active(pages.view())?;
//! let mut mapper = LingRing::passive(pages.view())?;
//! granter.writer().write(b"ping")?;
//! let mut buf = [0u8; 8];
//! assert_eq!(mapper.reader().read(&mut buf)?, 4);
//! assert!(mapper.reader().take_notify(), "LING pokes after every read");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::cell::Cell;
use core::mem::offset_of;
use core::sync::atomic::Ordering;

use pore_core::{SharedAccess, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::window::{
    lend_read, lend_write, ReadInPlace, SharedSlice, SharedSliceMut, WriteInPlace,
};
use crate::{RingError, RingReader, RingWriter, SharedRing, Side};

/// Pages of a LING straw (`NUM_STRAW_REFS`).
pub const LING_PAGES: usize = 8;
/// Bytes of each ring (`STRAW_RING_SIZE`): not a power of two.
pub const LING_RING_SIZE: usize = LING_PAGES / 2 * PAGE_SIZE - 8;
/// Bytes of the whole region.
pub const LING_REGION: usize = LING_PAGES * PAGE_SIZE;

/// The layout of the LING straw pages (`straw_ring_t`).
///
/// It documents and pins the offsets; the ring never makes a reference to it over shared
/// memory.
#[repr(C)]
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct LingStrawRing {
    /// Producer index of `input` (mapping side writes).
    pub in_prod: i32,
    /// Consumer index of `input` (granting side writes).
    pub in_cons: i32,
    /// Consumer index of `output` (mapping side writes).
    pub out_cons: i32,
    /// Producer index of `output` (granting side writes).
    pub out_prod: i32,
    /// Mapping side to granting side.
    pub input: [u8; LING_RING_SIZE],
    /// Granting side to mapping side.
    pub output: [u8; LING_RING_SIZE],
}

/// Offset of `in_prod`.
pub const IN_PROD: usize = offset_of!(LingStrawRing, in_prod);
/// Offset of `in_cons`.
pub const IN_CONS: usize = offset_of!(LingStrawRing, in_cons);
/// Offset of `out_cons`.
pub const OUT_CONS: usize = offset_of!(LingStrawRing, out_cons);
/// Offset of `out_prod`.
pub const OUT_PROD: usize = offset_of!(LingStrawRing, out_prod);
/// Offset of `input`.
pub const INPUT: usize = offset_of!(LingStrawRing, input);
/// Offset of `output`.
pub const OUTPUT: usize = offset_of!(LingStrawRing, output);

const _: () = {
    assert!(IN_PROD == 0 && IN_CONS == 4 && OUT_CONS == 8 && OUT_PROD == 12);
    assert!(INPUT == 16 && OUTPUT == 16392);
    assert!(LING_RING_SIZE == 16376);
    assert!(core::mem::size_of::<LingStrawRing>() == LING_REGION);
};

const SIZE: u32 = LING_RING_SIZE as u32;

#[derive(Debug, Clone, Copy)]
struct Dir {
    data: usize,
    prod: usize,
    cons: usize,
}

fn load_index(mem: &impl SharedAccess, off: usize, what: &'static str) -> Result<u32, RingError> {
    let v = mem.load_u32(off, Ordering::Acquire);
    if v >= SIZE {
        return Err(RingError::BadIndex { what, value: v });
    }
    Ok(v)
}

/// The producer half of a LING straw.
pub struct LingProducer<A: SharedAccess> {
    mem: A,
    dir: Dir,
    prod: u32,
    cons: Cell<u32>,
    broken: Cell<bool>,
    dirty: bool,
    notify: bool,
}

/// The consumer half of a LING straw.
pub struct LingConsumer<A: SharedAccess> {
    mem: A,
    dir: Dir,
    cons: u32,
    prod: Cell<u32>,
    broken: Cell<bool>,
    dirty: bool,
    notify: bool,
}

impl<A: SharedAccess> core::fmt::Debug for LingProducer<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LingProducer")
            .field("prod", &self.prod)
            .field("cons", &self.cons.get())
            .field("broken", &self.broken.get())
            .finish()
    }
}

impl<A: SharedAccess> core::fmt::Debug for LingConsumer<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LingConsumer")
            .field("cons", &self.cons)
            .field("prod", &self.prod.get())
            .field("broken", &self.broken.get())
            .finish()
    }
}

impl<A: SharedAccess> LingProducer<A> {
    fn refresh(&self) -> Result<u32, RingError> {
        if self.broken.get() {
            return Err(RingError::Broken);
        }
        match load_index(&self.mem, self.dir.cons, "consumer") {
            Ok(c) => {
                self.cons.set(c);
                Ok(c)
            }
            Err(e) => {
                self.broken.set(true);
                Err(e)
            }
        }
    }

    fn free_with(&self, cons: u32) -> u32 {
        // Both indices are in [0, SIZE): `used` is in [0, SIZE).
        let used = (self.prod + SIZE - cons) % SIZE;
        SIZE - 1 - used
    }
}

impl<A: SharedAccess> RingWriter for LingProducer<A> {
    type Error = RingError;

    fn capacity(&self) -> usize {
        LING_RING_SIZE - 1
    }

    fn writable(&self) -> Result<usize, RingError> {
        let c = self.refresh()?;
        Ok(self.free_with(c) as usize)
    }

    fn write_deferred(&mut self, buf: &[u8]) -> Result<usize, RingError> {
        self.write_in_place(buf.len(), |w| w.copy_from(buf))
    }

    fn commit(&mut self) -> Result<(), RingError> {
        if self.broken.get() {
            return Err(RingError::Broken);
        }
        if self.dirty {
            self.mem
                .store_u32(self.dir.prod, self.prod, Ordering::Release);
            self.dirty = false;
            self.notify = true;
        }
        Ok(())
    }

    fn take_notify(&mut self) -> bool {
        core::mem::take(&mut self.notify)
    }

    fn prepare_wait(&mut self) -> Result<bool, RingError> {
        // No notify flags in LING: the peer pokes after every read. Commit what is staged first.
        self.commit()?;
        let c = self.refresh()?;
        Ok(self.free_with(c) > 0)
    }

    fn is_broken(&self) -> bool {
        self.broken.get()
    }
}

impl<A: SharedAccess> LingConsumer<A> {
    fn refresh(&self) -> Result<u32, RingError> {
        if self.broken.get() {
            return Err(RingError::Broken);
        }
        match load_index(&self.mem, self.dir.prod, "producer") {
            Ok(p) => {
                self.prod.set(p);
                Ok(p)
            }
            Err(e) => {
                self.broken.set(true);
                Err(e)
            }
        }
    }

    fn avail_with(&self, prod: u32) -> u32 {
        (prod + SIZE - self.cons) % SIZE
    }
}

impl<A: SharedAccess> RingReader for LingConsumer<A> {
    type Error = RingError;

    fn capacity(&self) -> usize {
        LING_RING_SIZE - 1
    }

    fn readable(&self) -> Result<usize, RingError> {
        let p = self.refresh()?;
        Ok(self.avail_with(p) as usize)
    }

    fn read_deferred(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        self.read_in_place(buf.len(), |w| w.copy_to(buf))
    }

    fn release(&mut self) -> Result<(), RingError> {
        if self.broken.get() {
            return Err(RingError::Broken);
        }
        if self.dirty {
            self.mem
                .store_u32(self.dir.cons, self.cons, Ordering::Release);
            self.dirty = false;
            self.notify = true;
        }
        Ok(())
    }

    fn take_notify(&mut self) -> bool {
        core::mem::take(&mut self.notify)
    }

    fn prepare_wait(&mut self) -> Result<bool, RingError> {
        // No notify flags in LING: the peer pokes after every write. Release what was read first.
        self.release()?;
        let p = self.refresh()?;
        Ok(self.avail_with(p) > 0)
    }

    fn is_broken(&self) -> bool {
        self.broken.get()
    }
}

impl<A: SharedAccess> WriteInPlace for LingProducer<A> {
    type Mem = A;

    #[inline]
    fn write_in_place(
        &mut self,
        max: usize,
        f: impl FnOnce(SharedSliceMut<'_, A>) -> usize,
    ) -> Result<usize, RingError> {
        if self.broken.get() {
            return Err(RingError::Broken);
        }
        let mut free = self.free_with(self.cons.get());
        if (free as usize) < max {
            let c = self.refresh()?;
            free = self.free_with(c);
        }
        let len = max.min(free as usize);
        let off = self.prod as usize;
        let n = lend_write(&self.mem, self.dir.data, LING_RING_SIZE, off, len, f)?;
        if n > 0 {
            self.prod = ((off + n) % LING_RING_SIZE) as u32;
            self.dirty = true;
        }
        Ok(n)
    }
}

impl<A: SharedAccess> ReadInPlace for LingConsumer<A> {
    type Mem = A;

    #[inline]
    fn read_in_place(
        &mut self,
        max: usize,
        f: impl FnOnce(SharedSlice<'_, A>) -> usize,
    ) -> Result<usize, RingError> {
        if self.broken.get() {
            return Err(RingError::Broken);
        }
        let mut avail = self.avail_with(self.prod.get());
        if (avail as usize) < max {
            let p = self.refresh()?;
            avail = self.avail_with(p);
        }
        let len = max.min(avail as usize);
        let off = self.cons as usize;
        let n = lend_read(&self.mem, self.dir.data, LING_RING_SIZE, off, len, f)?;
        if n > 0 {
            self.cons = ((off + n) % LING_RING_SIZE) as u32;
            self.dirty = true;
        }
        Ok(n)
    }
}

/// One side of a LING straw: a producer on one ring and a consumer on the other.
pub struct LingRing<A: SharedAccess> {
    role: Side,
    pub(crate) tx: LingProducer<A>,
    pub(crate) rx: LingConsumer<A>,
}

impl<A: SharedAccess> core::fmt::Debug for LingRing<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LingRing")
            .field("role", &self.role)
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .finish()
    }
}

impl<A: SharedAccess + Clone> LingRing<A> {
    /// The granting side of the 8 pages `mem` ([`LING_REGION`] bytes or more).
    ///
    /// # Errors
    ///
    /// [`RingError::RegionTooSmall`], or [`RingError::BadIndex`] if the header holds an index
    /// `>= 16376`.
    pub fn active(mem: A) -> Result<Self, RingError> {
        Self::new(mem, Side::Active)
    }

    /// The mapping side. See [`LingRing::active`].
    ///
    /// # Errors
    ///
    /// As for [`LingRing::active`].
    pub fn passive(mem: A) -> Result<Self, RingError> {
        Self::new(mem, Side::Passive)
    }

    /// Our side of the straw `mem`, starting from the indices the header holds (zero on fresh
    /// pages).
    ///
    /// # Errors
    ///
    /// As for [`LingRing::active`].
    pub fn new(mem: A, role: Side) -> Result<Self, RingError> {
        if mem.len() < LING_REGION {
            return Err(RingError::RegionTooSmall {
                need: LING_REGION,
                have: mem.len(),
            });
        }
        let output = Dir {
            data: OUTPUT,
            prod: OUT_PROD,
            cons: OUT_CONS,
        };
        let input = Dir {
            data: INPUT,
            prod: IN_PROD,
            cons: IN_CONS,
        };
        let (tx, rx) = match role {
            Side::Active => (output, input),
            Side::Passive => (input, output),
        };
        let tx_prod = load_index(&mem, tx.prod, "producer")?;
        let tx_cons = load_index(&mem, tx.cons, "consumer")?;
        let rx_prod = load_index(&mem, rx.prod, "producer")?;
        let rx_cons = load_index(&mem, rx.cons, "consumer")?;
        Ok(LingRing {
            role,
            tx: LingProducer {
                mem: mem.clone(),
                dir: tx,
                prod: tx_prod,
                cons: Cell::new(tx_cons),
                broken: Cell::new(false),
                dirty: false,
                notify: false,
            },
            rx: LingConsumer {
                mem,
                dir: rx,
                cons: rx_cons,
                prod: Cell::new(rx_prod),
                broken: Cell::new(false),
                dirty: false,
                notify: false,
            },
        })
    }
}

impl<A: SharedAccess> LingRing<A> {
    /// Our role.
    pub fn role(&self) -> Side {
        self.role
    }
}

impl<A: SharedAccess> SharedRing for LingRing<A> {
    type Writer = LingProducer<A>;
    type Reader = LingConsumer<A>;

    fn writer(&mut self) -> &mut LingProducer<A> {
        &mut self.tx
    }

    fn reader(&mut self) -> &mut LingConsumer<A> {
        &mut self.rx
    }

    fn split(self) -> (LingProducer<A>, LingConsumer<A>) {
        (self.tx, self.rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{cases, max_ops, Guarded};
    use pore_core::{Error as _, ErrorKind};
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::vec;
    use std::vec::Vec;
    use zerocopy::FromZeros;

    #[test]
    fn layout_matches_ling() {
        let mut r = LingStrawRing::new_zeroed();
        r.in_prod = 1;
        r.in_cons = 2;
        r.out_cons = 3;
        r.out_prod = 4;
        r.input[0] = 0xaa;
        r.output[0] = 0xbb;
        let b = r.as_bytes();
        assert_eq!(&b[0..16], &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]);
        assert_eq!(b[16], 0xaa);
        assert_eq!(b[16392], 0xbb);
    }

    #[test]
    fn roles_and_one_empty_byte() {
        let g = Guarded::new(LING_REGION);
        let v = g.view();
        let mut a = LingRing::active(v).unwrap();
        let mut p = LingRing::passive(v).unwrap();
        let big = vec![3u8; 20000];
        assert_eq!(a.writer().write(&big).unwrap(), 16375);
        // The granting side wrote `output` and `out_prod`.
        assert_eq!(v.load_u32(OUT_PROD, Ordering::Relaxed), 16375);
        assert_eq!(v.load_u8(OUTPUT, Ordering::Relaxed), 3);
        assert_eq!(v.load_u32(IN_PROD, Ordering::Relaxed), 0);
        assert!(a.take_notify());
        let mut buf = vec![0u8; 20000];
        assert_eq!(p.reader().read(&mut buf).unwrap(), 16375);
        assert_eq!(v.load_u32(OUT_CONS, Ordering::Relaxed), 16375);
        // Wrap around.
        assert_eq!(a.writer().write(&big[..100]).unwrap(), 100);
        assert_eq!(v.load_u32(OUT_PROD, Ordering::Relaxed), 99);
        assert_eq!(p.reader().read(&mut buf).unwrap(), 100);
        // The mapping side writes `input`.
        assert_eq!(p.writer().write(b"back").unwrap(), 4);
        assert_eq!(v.load_u32(IN_PROD, Ordering::Relaxed), 4);
        assert_eq!(a.reader().read(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"back");
        assert_eq!(a.role(), Side::Active);
        g.assert_guards();
    }

    #[test]
    fn hostile_indices_break_the_ring() {
        let g = Guarded::new(LING_REGION);
        let v = g.view();
        let mut a = LingRing::active(v).unwrap();
        v.store_u32(IN_PROD, 16376, Ordering::Relaxed);
        let mut buf = [0u8; 8];
        let e = a.reader().read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert_eq!(a.reader().read(&mut buf), Err(RingError::Broken));
        v.store_u32(OUT_CONS, u32::MAX, Ordering::Relaxed);
        assert!(a.writer().writable().is_err());
        // A passive side opening over a garbage header refuses it.
        assert!(LingRing::passive(v).is_err());
        g.assert_guards();
    }

    #[test]
    fn region_too_small() {
        let g = Guarded::new(LING_REGION - 1);
        assert!(matches!(
            LingRing::active(g.view()),
            Err(RingError::RegionTooSmall { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        /// Random writes and reads both ways against `VecDeque` models.
        #[test]
        fn model(ops in proptest::collection::vec((any::<bool>(), any::<bool>(), 0usize..20000), 1..max_ops(40))) {
            let g = Guarded::new(LING_REGION);
            let v = g.view();
            let mut a = LingRing::active(v).unwrap();
            let mut p = LingRing::passive(v).unwrap();
            let (mut out, mut inp) = (VecDeque::new(), VecDeque::new());
            let mut counter = 0u8;
            for (a_to_p, write, len) in ops {
                let (w, r, model) = if a_to_p { (&mut a, &mut p, &mut out) } else { (&mut p, &mut a, &mut inp) };
                if write {
                    let data: Vec<u8> = (0..len).map(|_| { counter = counter.wrapping_add(1); counter }).collect();
                    let n = w.writer().write(&data).unwrap();
                    prop_assert_eq!(n, len.min(LING_RING_SIZE - 1 - model.len()));
                    model.extend(&data[..n]);
                } else {
                    let mut buf = vec![0u8; len];
                    let n = r.reader().read(&mut buf).unwrap();
                    prop_assert_eq!(n, len.min(model.len()));
                    let want: Vec<u8> = model.drain(..n).collect();
                    prop_assert_eq!(&buf[..n], &want[..]);
                }
            }
            g.assert_guards();
        }

        /// A hostile mapping side writes arbitrary indices between our operations.
        #[test]
        fn hostile(ops in proptest::collection::vec((0u8..4, any::<u32>(), 0usize..17000), 1..max_ops(30))) {
            let g = Guarded::new(LING_REGION);
            let v = g.view();
            let mut a = LingRing::active(v).unwrap();
            let mut buf = vec![0u8; 17000];
            for (op, value, len) in ops {
                // Mostly in-range values (fake full/empty), sometimes garbage.
                let value = if value % 4 == 0 { value } else { value % SIZE };
                match op {
                    0 => v.store_u32(IN_PROD, value, Ordering::Relaxed),
                    1 => v.store_u32(OUT_CONS, value, Ordering::Relaxed),
                    2 => { if let Ok(n) = a.writer().write(&buf[..len]) { prop_assert!(n <= len); } }
                    _ => { if let Ok(n) = a.reader().read(&mut buf[..len]) { prop_assert!(n <= len); } }
                }
            }
            g.assert_guards();
        }
    }
}
