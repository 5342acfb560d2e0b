//! In-place access to a ring: a reader lends the bytes it may read, a writer the space it may
//! fill, so that data moves between the ring and its final place in one copy.
//!
//! A window ([`SharedSlice`], [`SharedSliceMut`]) is a handle on up to two pieces of a ring's
//! data area (two when the window wraps round the end of the ring). The peer can write that
//! memory at any moment, so a window never becomes a Rust reference: its only accessors are
//! copies out of it ([`SharedSlice::copy_to`]) or into it ([`SharedSliceMut::copy_from`]),
//! through pore-core's audited copies (D1). The window's bounds come from a peer index read
//! once and validated, exactly as for `read_deferred` and `write_deferred`; the accessors take
//! their lengths from the caller's buffers and never reach outside the window, so nothing the
//! peer writes can make them panic.
//!
//! [`ReadInPlace::read_in_place`] lends a window of readable bytes to a closure, which copies
//! what it wants and returns how many bytes it consumed; [`WriteInPlace::write_in_place`]
//! lends free space, which the closure fills from the front and returns how many bytes it
//! wrote. Both are deferred operations: the ring's `release` / `commit` publishes them.
//!
//! ```
//! use pore_core::{loopback::Loopback, DomId, GrantRef, Grants, SharedMemory};
//! use pore_ring::prelude::*;
//! use pore_ring::v2::{V2Geometry, V2Ring};
//! use pore_ring::window::{ReadInPlace, WriteInPlace};
//!
//! let xen = Loopback::new();
//! let geometry = V2Geometry::new(0, 0)?;
//! let pages = xen.domain(DomId(1)).grant(DomId(2), geometry.pages())?;
//! let mut active = V2Ring::active(pages.view(), geometry, &[GrantRef(1), GrantRef(2)])?;
//! let mut passive = V2Ring::passive(pages.view())?;
//!
//! // A header and a payload gathered straight into the ring, no staging buffer.
//! let payload = b"hello";
//! let wrote = active.writer().write_in_place(4 + payload.len(), |w| {
//!     let n = w.copy_from(&(payload.len() as u32).to_be_bytes());
//!     n + w.get(n..).map_or(0, |rest| rest.copy_from(payload))
//! })?;
//! assert_eq!(wrote, 9);
//! active.writer().commit()?;
//!
//! // The reader copies the payload straight into its final buffer.
//! let mut out = Vec::new();
//! passive.reader().read_in_place(64, |r| {
//!     let body = r.get(4..).unwrap();
//!     out.resize(body.len(), 0);
//!     body.copy_to(&mut out);
//!     r.len()
//! })?;
//! passive.reader().release()?;
//! assert_eq!(out, b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::ops::{Bound, RangeBounds};

use pore_core::SharedAccess;

use crate::RingError;

/// Where a window lies in its region: `first_len` bytes at `first`, then the rest at `second`
/// (the start of the ring's data area) when it wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pieces {
    first: usize,
    first_len: usize,
    second: usize,
    len: usize,
}

impl Pieces {
    /// The window of `len` bytes starting `off` bytes into a data area of `size` bytes at
    /// `data` (`off < size` and `len <= size`, from our validated indices).
    fn new(data: usize, size: usize, off: usize, len: usize) -> Self {
        debug_assert!(off < size.max(1) && len <= size);
        Pieces {
            first: data + off,
            first_len: len.min(size - off),
            second: data,
            len,
        }
    }

    /// The sub-window `[start, start + len)`, `None` if it does not lie inside this one.
    fn get(&self, range: impl RangeBounds<usize>) -> Option<Pieces> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.checked_add(1)?,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.checked_add(1)?,
            Bound::Excluded(&e) => e,
            Bound::Unbounded => self.len,
        };
        if start > end || end > self.len {
            return None;
        }
        let len = end - start;
        Some(if start < self.first_len {
            Pieces {
                first: self.first + start,
                first_len: len.min(self.first_len - start),
                second: self.second,
                len,
            }
        } else {
            // Entirely in the second piece: one piece, which never wraps again.
            let at = self.second + (start - self.first_len);
            Pieces {
                first: at,
                first_len: len,
                second: at + len,
                len,
            }
        })
    }

    /// Calls `each(region offset, index in the window, length)` for the (at most two) pieces
    /// covering the first `n` bytes.
    #[inline(always)]
    fn walk(&self, n: usize, mut each: impl FnMut(usize, usize, usize)) {
        let n = n.min(self.len);
        let a = n.min(self.first_len);
        if a > 0 {
            each(self.first, 0, a);
        }
        if n > a {
            each(self.second, a, n - a);
        }
    }
}

/// Readable bytes of a ring, lent by [`ReadInPlace::read_in_place`]: copy them out with
/// [`SharedSlice::copy_to`]. Never a reference to the ring's memory (the peer may change it).
#[derive(Clone, Copy)]
pub struct SharedSlice<'a, A: SharedAccess + ?Sized> {
    mem: &'a A,
    at: Pieces,
}

impl<A: SharedAccess + ?Sized> core::fmt::Debug for SharedSlice<'_, A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedSlice")
            .field("len", &self.at.len)
            .finish()
    }
}

impl<'a, A: SharedAccess + ?Sized> SharedSlice<'a, A> {
    fn new(mem: &'a A, at: Pieces) -> Self {
        SharedSlice { mem, at }
    }

    /// Bytes in the window.
    pub fn len(&self) -> usize {
        self.at.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.at.len == 0
    }

    /// The sub-window over `range` (positions within this window), or `None` if it reaches
    /// past the window's end (never a panic: lengths parsed from the peer's bytes may be
    /// checked with it).
    pub fn get(&self, range: impl RangeBounds<usize>) -> Option<SharedSlice<'a, A>> {
        Some(SharedSlice::new(self.mem, self.at.get(range)?))
    }

    /// Copies the window's first bytes into `dst` (as many as both hold) and returns how many:
    /// a private copy, which may be parsed.
    #[inline]
    pub fn copy_to(&self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.at.len);
        self.at.walk(n, |off, i, len| {
            self.mem.read_bytes(off, &mut dst[i..i + len]);
        });
        n
    }

    /// Appends the whole window to `out` (grown by exactly the window's length, which the
    /// caller bounded when it asked for the window).
    pub fn append_to(&self, out: &mut alloc::vec::Vec<u8>) {
        let start = out.len();
        out.resize(start + self.at.len, 0);
        self.copy_to(&mut out[start..]);
    }
}

/// Free space of a ring, lent by [`WriteInPlace::write_in_place`]: fill it with
/// [`SharedSliceMut::copy_from`]. Never a reference to the ring's memory.
pub struct SharedSliceMut<'a, A: SharedAccess + ?Sized> {
    mem: &'a A,
    at: Pieces,
}

impl<A: SharedAccess + ?Sized> core::fmt::Debug for SharedSliceMut<'_, A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedSliceMut")
            .field("len", &self.at.len)
            .finish()
    }
}

impl<'a, A: SharedAccess + ?Sized> SharedSliceMut<'a, A> {
    fn new(mem: &'a A, at: Pieces) -> Self {
        SharedSliceMut { mem, at }
    }

    /// Bytes of space in the window.
    pub fn len(&self) -> usize {
        self.at.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.at.len == 0
    }

    /// The sub-window over `range`, or `None` if it reaches past the window's end.
    pub fn get(&self, range: impl RangeBounds<usize>) -> Option<SharedSliceMut<'a, A>> {
        Some(SharedSliceMut::new(self.mem, self.at.get(range)?))
    }

    /// Copies the start of `src` into the window's first bytes (as many as both hold) and
    /// returns how many.
    #[inline]
    pub fn copy_from(&self, src: &[u8]) -> usize {
        let n = src.len().min(self.at.len);
        self.at.walk(n, |off, i, len| {
            self.mem.write_bytes(off, &src[i..i + len]);
        });
        n
    }
}

/// A ring reader that lends its readable bytes in place.
pub trait ReadInPlace {
    /// The shared memory the ring lives in.
    type Mem: SharedAccess;

    /// Lends up to `max` readable bytes (fewer if fewer are there; possibly none) to `f`, which
    /// returns how many of them it consumed. Consumed bytes are read as by `read_deferred`:
    /// `release` (or `publish`) hands their space back to the peer. The peer's index is read
    /// at most once (only when the bytes known to be there are fewer than `max`) and
    /// validated. Returns what `f` returned.
    ///
    /// # Errors
    ///
    /// Ring errors (a peer index out of range breaks the ring; `f` is not called then), or
    /// [`RingError::InvalidInput`] if `f` claims more bytes than it was lent (nothing is
    /// consumed then).
    fn read_in_place(
        &mut self,
        max: usize,
        f: impl FnOnce(SharedSlice<'_, Self::Mem>) -> usize,
    ) -> Result<usize, RingError>;
}

/// A ring writer that lends its free space in place.
pub trait WriteInPlace {
    /// The shared memory the ring lives in.
    type Mem: SharedAccess;

    /// Lends up to `max` bytes of free space (fewer if the ring has less; possibly none) to
    /// `f`, which fills it from the front and returns how many bytes it wrote. Written bytes
    /// are staged as by `write_deferred`: `commit` (or `publish`) shows them to the peer. The
    /// peer's index is read at most once (only when the space known to be free is less than
    /// `max`) and validated. Returns what `f` returned.
    ///
    /// # Errors
    ///
    /// Ring errors (`f` is not called then), or [`RingError::InvalidInput`] if `f` claims
    /// more bytes than it was lent (nothing is staged then).
    fn write_in_place(
        &mut self,
        max: usize,
        f: impl FnOnce(SharedSliceMut<'_, Self::Mem>) -> usize,
    ) -> Result<usize, RingError>;
}

impl<T: ReadInPlace + ?Sized> ReadInPlace for &mut T {
    type Mem = T::Mem;
    fn read_in_place(
        &mut self,
        max: usize,
        f: impl FnOnce(SharedSlice<'_, Self::Mem>) -> usize,
    ) -> Result<usize, RingError> {
        (**self).read_in_place(max, f)
    }
}

impl<T: WriteInPlace + ?Sized> WriteInPlace for &mut T {
    type Mem = T::Mem;
    fn write_in_place(
        &mut self,
        max: usize,
        f: impl FnOnce(SharedSliceMut<'_, Self::Mem>) -> usize,
    ) -> Result<usize, RingError> {
        (**self).write_in_place(max, f)
    }
}

/// Lends the window of `len` bytes at `off` of a data area (`data`, `size`) of `mem` to `f`
/// for reading; `Ok(consumed)` once checked against the window.
#[inline]
pub(crate) fn lend_read<A: SharedAccess>(
    mem: &A,
    data: usize,
    size: usize,
    off: usize,
    len: usize,
    f: impl FnOnce(SharedSlice<'_, A>) -> usize,
) -> Result<usize, RingError> {
    let n = f(SharedSlice::new(mem, Pieces::new(data, size, off, len)));
    if n > len {
        return Err(RingError::InvalidInput(
            "consumed more bytes than the window lent",
        ));
    }
    Ok(n)
}

/// As [`lend_read`], for writing.
#[inline]
pub(crate) fn lend_write<A: SharedAccess>(
    mem: &A,
    data: usize,
    size: usize,
    off: usize,
    len: usize,
    f: impl FnOnce(SharedSliceMut<'_, A>) -> usize,
) -> Result<usize, RingError> {
    let n = f(SharedSliceMut::new(mem, Pieces::new(data, size, off, len)));
    if n > len {
        return Err(RingError::InvalidInput(
            "wrote more bytes than the window lent",
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ling::{LingRing, LING_REGION, LING_RING_SIZE};
    use crate::testutil::{cases, max_ops, Guarded};
    use crate::v2::{self, V2Geometry, V2Ring};
    use crate::xenstore::{XenstoreRing, XENSTORE_RING_SIZE};
    use crate::{RingReader, RingWriter, SharedRing};
    use core::sync::atomic::Ordering;
    use pore_core::{Error as _, ErrorKind, GrantRef};
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn sub_windows_follow_the_wrap() {
        // 10 bytes starting 6 bytes before the end of a 16-byte area at 100.
        let p = Pieces::new(100, 16, 10, 10);
        assert_eq!((p.first, p.first_len, p.second, p.len), (110, 6, 100, 10));
        let inner = p.get(2..8).unwrap();
        assert_eq!((inner.first, inner.first_len, inner.len), (112, 4, 6));
        let tail = p.get(7..).unwrap();
        assert_eq!((tail.first, tail.first_len, tail.len), (101, 3, 3));
        assert_eq!(p.get(..=9).unwrap().len, 10);
        assert!(p.get(..11).is_none());
        assert!(p.get((Bound::Included(5), Bound::Excluded(4))).is_none());
        assert!(p.get(11..).is_none());
        assert!(p.get(..=usize::MAX).is_none());
        assert_eq!(p.get(10..).unwrap().len, 0);
        let mut seen = Vec::new();
        p.walk(8, |off, i, len| seen.push((off, i, len)));
        assert_eq!(seen, [(110, 0, 6), (100, 6, 2)]);
    }

    fn pattern(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + seed * 13 + 1) as u8).collect()
    }

    /// At `cur`, moves both ends `by` bytes forward with the plain copies.
    fn advance<W, R>(w: &mut W, r: &mut R, by: usize)
    where
        W: RingWriter<Error = RingError>,
        R: RingReader<Error = RingError>,
    {
        let filler = vec![0xeeu8; by];
        let mut sink = vec![0u8; by];
        let mut off = 0;
        while off < by {
            let n = w.write(&filler[off..]).unwrap();
            assert_eq!(r.read(&mut sink[off..off + n]).unwrap(), n);
            off += n;
        }
    }

    /// At every position of the ring from `start` by `step` (every wrap position when 1), frames
    /// of several lengths written in place and read back with `read_deferred`, and written with
    /// `write_deferred` and read back in place: byte for byte the same.
    fn in_place_agrees_with_the_copies<W, R>(
        w: &mut W,
        r: &mut R,
        size: usize,
        capacity: usize,
        positions: impl IntoIterator<Item = usize>,
    ) where
        W: RingWriter<Error = RingError> + WriteInPlace,
        R: RingReader<Error = RingError> + ReadInPlace,
    {
        let lens: &[usize] = if cfg!(miri) {
            &[3, 33, capacity / 2 + 5]
        } else {
            &[1, 3, 8, 33, capacity / 2 + 5, capacity]
        };
        let mut cur = 0usize;
        let mut seed = 0;
        for pos in positions {
            for &len in lens {
                advance(w, r, (pos + size - cur) % size);
                seed += 1;
                let data = pattern(len, seed);
                // In place, gathered from two slices, then read with the copy.
                let k = len / 3;
                let wrote = w
                    .write_in_place(len, |win| {
                        assert_eq!(win.len(), len);
                        let a = win.copy_from(&data[..k]);
                        a + win.get(a..).unwrap().copy_from(&data[k..])
                    })
                    .unwrap();
                assert_eq!(wrote, len);
                w.commit().unwrap();
                let mut back = vec![0u8; len];
                assert_eq!(r.read(&mut back).unwrap(), len);
                assert_eq!(back, data, "in-place write at {pos}, {len} bytes");
                // With the copy, then read in place: in two pieces, and whole.
                let data = pattern(len, seed + 1000);
                assert_eq!(w.write(&data).unwrap(), len);
                let mut back = vec![0u8; len];
                let took = r
                    .read_in_place(k, |win| {
                        assert_eq!(win.len(), k);
                        win.copy_to(&mut back[..k])
                    })
                    .unwrap();
                assert_eq!(took, k);
                let took = r
                    .read_in_place(usize::MAX, |win| {
                        assert_eq!(win.len(), len - k);
                        let mut whole = Vec::new();
                        win.append_to(&mut whole);
                        back[k..].copy_from_slice(&whole);
                        win.len()
                    })
                    .unwrap();
                assert_eq!(took, len - k);
                r.release().unwrap();
                assert_eq!(back, data, "in-place read at {pos}, {len} bytes");
                cur = (pos + 2 * len) % size;
            }
        }
    }

    /// Every position, or two under miri (one of them wraps every length below).
    fn every(size: usize) -> impl Iterator<Item = usize> {
        (0..size).step_by(if cfg!(miri) { size / 2 + 1 } else { 1 })
    }

    #[test]
    fn v2_in_place_agrees_at_every_wrap_position() {
        let geo = V2Geometry::new(0, 0).unwrap();
        let g = Guarded::new(geo.region_len());
        let (mut tx, _) = V2Ring::active(g.view(), geo, &[GrantRef(1), GrantRef(2)])
            .unwrap()
            .split();
        let (_, mut rx) = V2Ring::passive(g.view()).unwrap().split();
        in_place_agrees_with_the_copies(&mut tx, &mut rx, 4096, 4096, every(4096));
        g.assert_guards();
    }

    #[test]
    fn xenstore_in_place_agrees_at_every_wrap_position() {
        let g = Guarded::new(4096);
        let mut c = XenstoreRing::client(g.view()).unwrap();
        let mut s = XenstoreRing::server(g.view()).unwrap();
        let size = XENSTORE_RING_SIZE;
        in_place_agrees_with_the_copies(c.writer(), s.reader(), size, size, every(size));
        g.assert_guards();
    }

    #[test]
    fn ling_in_place_agrees_at_wrap_positions() {
        let g = Guarded::new(LING_REGION);
        let mut a = LingRing::active(g.view()).unwrap();
        let mut p = LingRing::passive(g.view()).unwrap();
        // LING's ring is not a power of two and keeps one byte empty: every 7th position, and
        // every position near the end.
        let size = LING_RING_SIZE;
        let (step, near_end) = if cfg!(miri) { (size / 2, 1) } else { (7, 40) };
        let positions = (0..size - near_end)
            .step_by(step)
            .chain(size - near_end..size);
        in_place_agrees_with_the_copies(a.writer(), p.reader(), size, size - 1, positions);
        g.assert_guards();
    }

    #[test]
    fn v2_in_place_against_hostile_indices() {
        let geo = V2Geometry::new(0, 0).unwrap();
        let g = Guarded::new(geo.region_len());
        let v = g.view();
        let mut a = V2Ring::active(v, geo, &[GrantRef(1), GrantRef(2)]).unwrap();
        let mut called = false;
        // The producer claims more than a ring's worth of data: an error, and no window.
        v.store_u32(v2::P2A_PROD, 4097, Ordering::Relaxed);
        let e = a.reader().read_in_place(10, |_| {
            called = true;
            0
        });
        assert_eq!(e.unwrap_err().kind(), ErrorKind::Protocol);
        assert_eq!(
            a.reader().read_in_place(10, |_| {
                called = true;
                0
            }),
            Err(RingError::Broken)
        );
        // The consumer releases bytes we never published (read when more than the free space
        // we know of is asked for).
        v.store_u32(v2::A2P_CONS, 10, Ordering::Relaxed);
        assert_eq!(a.writer().write_in_place(10, |w| w.len()), Ok(10));
        let e = a.writer().write_in_place(5000, |_| {
            called = true;
            0
        });
        assert_eq!(e.unwrap_err().kind(), ErrorKind::Protocol);
        assert!(a.writer().is_broken());
        assert!(!called);
        // Indices that pass (a full ring, an empty one) lend windows inside the ring only.
        let mut b = V2Ring::active(v, geo, &[GrantRef(1), GrantRef(2)]).unwrap();
        v.store_u32(v2::P2A_PROD, 4096, Ordering::Relaxed);
        let n = b.reader().read_in_place(usize::MAX, |w| w.len()).unwrap();
        assert_eq!(n, 4096);
        g.assert_guards();
    }

    #[test]
    fn ling_in_place_against_hostile_indices() {
        let g = Guarded::new(LING_REGION);
        let v = g.view();
        let mut a = LingRing::active(v).unwrap();
        let mut called = false;
        v.store_u32(
            crate::ling::IN_PROD,
            LING_RING_SIZE as u32,
            Ordering::Relaxed,
        );
        let e = a.reader().read_in_place(10, |_| {
            called = true;
            0
        });
        assert_eq!(e.unwrap_err().kind(), ErrorKind::Protocol);
        v.store_u32(crate::ling::OUT_CONS, u32::MAX, Ordering::Relaxed);
        let e = a.writer().write_in_place(20_000, |_| {
            called = true;
            0
        });
        assert_eq!(e.unwrap_err().kind(), ErrorKind::Protocol);
        assert!(!called);
        g.assert_guards();
    }

    #[test]
    fn a_closure_claiming_too_much_takes_nothing() {
        let geo = V2Geometry::new(0, 0).unwrap();
        let g = Guarded::new(geo.region_len());
        let (mut tx, _) = V2Ring::active(g.view(), geo, &[GrantRef(1), GrantRef(2)])
            .unwrap()
            .split();
        let (_, mut rx) = V2Ring::passive(g.view()).unwrap().split();
        assert!(matches!(
            tx.write_in_place(8, |w| w.len() + 1),
            Err(RingError::InvalidInput(_))
        ));
        assert_eq!(tx.staged(), 0);
        assert_eq!(tx.write(b"abc").unwrap(), 3);
        assert!(matches!(
            rx.read_in_place(8, |w| w.len() + 1),
            Err(RingError::InvalidInput(_))
        ));
        assert_eq!(rx.unreleased(), 0);
        // Copies never reach past the window, whatever the buffer's length.
        let mut big = [0u8; 16];
        let n = rx.read_in_place(8, |w| w.copy_to(&mut big)).unwrap();
        assert_eq!((n, &big[..4]), (3, &b"abc\0"[..]));
        let n = tx.write_in_place(2, |w| w.copy_from(b"xyz")).unwrap();
        assert_eq!(n, 2);
        g.assert_guards();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        /// A hostile passive side writes arbitrary indices between our in-place operations:
        /// errors, never a panic, and every window lies inside the ring.
        #[test]
        fn hostile_in_place(ops in proptest::collection::vec((0u8..4, any::<u32>(), 0usize..9000), 1..max_ops(40))) {
            let geo = V2Geometry::new(1, 0).unwrap();
            let g = Guarded::new(geo.region_len());
            let v = g.view();
            let mut a = V2Ring::active(v, geo, &[GrantRef(1), GrantRef(2), GrantRef(3)]).unwrap();
            let junk = vec![0x5au8; 9000];
            let mut buf = vec![0u8; 9000];
            for (op, value, len) in ops {
                let value = if value % 4 == 0 { value } else { value % 16384 };
                match op {
                    0 => v.store_u32(v2::P2A_PROD, value, Ordering::Relaxed),
                    1 => v.store_u32(v2::A2P_CONS, value, Ordering::Relaxed),
                    2 => {
                        if let Ok(n) = a.writer().write_in_place(len, |w| {
                            assert!(w.len() <= len.min(geo.a2p_bytes()));
                            w.copy_from(&junk)
                        }) {
                            prop_assert!(n <= len);
                        }
                    }
                    _ => {
                        if let Ok(n) = a.reader().read_in_place(len, |w| {
                            assert!(w.len() <= len.min(geo.p2a_bytes()));
                            w.copy_to(&mut buf)
                        }) {
                            prop_assert!(n <= len);
                        }
                    }
                }
            }
            g.assert_guards();
        }
    }
}
