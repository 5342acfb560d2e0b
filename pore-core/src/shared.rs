//! The one audited way to touch memory a peer can write (D1, D2; `docs/peer-memory.md`).
//!
//! Memory granted to or mapped from another domain can change under our feet at any moment,
//! so it is never put behind a Rust `&`/`&mut` reference to plain data. Instead:
//!
//! * [`SharedMemory`] is implemented (unsafely, once per backend) by the handles that own such
//!   memory; it promises a stable, valid region;
//! * [`SharedView`] is a bounds-checked window on such a region whose accessors are atomic:
//!   `u32`/`u8` loads and stores with the caller's ordering, and byte copies done word by word
//!   with relaxed atomic loads/stores (bytes at the unaligned head and tail). Defined behaviour
//!   under a racing peer, clean under miri, and as fast as `memcpy` in practice;
//! * [`SharedAccess`] is the accessor trait ring code is written against, so that a loom model
//!   can stand in for real pages (loom cannot run on raw pages).
//!
//! Offsets and lengths given to these accessors come from *our* code, after the ring has
//! validated whatever the peer wrote; an out-of-range offset is therefore a bug in the caller and
//! panics, like slice indexing. Peer-controlled values must never reach them unvalidated.

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

/// A region of memory that a peer may write concurrently.
///
/// # Safety
///
/// Implementors guarantee that for as long as `self` is alive: `as_ptr()` is non-null, valid
/// for reads and writes of `len()` bytes, and the region is only ever accessed through atomic
/// operations or by the peer (never through Rust references to plain data).
///
/// The address must not depend on where the handle itself lives: it stays the same every call
/// **and across moves of the handle** (memory from `mmap`, or a heap allocation the handle points
/// to; never a buffer stored inline in the handle). [`crate::Pore`] relies on this: it caches the
/// address once and is moved around afterwards (into an `Arc`, a thread).
///
/// # Alignment
///
/// Pages a backend hands out (granted, mapped, the store page) start **page-aligned**
/// ([`crate::PAGE_SIZE`]), as Xen's pages do: the shared layouts put on them (the xenstore
/// ring, the straw rings) place their fields by offset from the page start. Any region must be
/// at least 4-aligned: [`SharedView`]'s `u32` accessors panic on a misaligned address (its byte
/// copies take any alignment). Alignment is not a safety condition, since those accessors check
/// it and panic rather than misbehave.
pub unsafe trait SharedMemory: Send + Sync {
    /// Start of the region.
    fn as_ptr(&self) -> NonNull<u8>;
    /// Length of the region in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A bounds-checked atomic view of the whole region.
    fn view(&self) -> SharedView<'_> {
        // SAFETY: the trait's contract guarantees a stable region valid for `len()` bytes,
        // accessed only atomically, for as long as `self` (and so the returned borrow) lives.
        unsafe { SharedView::from_raw_parts(self.as_ptr(), self.len()) }
    }
}

/// Atomic access to a region a peer can write: what ring code is written against (D2).
///
/// Offsets are in bytes from the start of the region. `u32` accesses need 4-byte alignment of
/// the resulting address. Out-of-range offsets panic (they are caller bugs, see the module docs).
pub trait SharedAccess {
    /// Length of the region.
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Atomically loads the `u32` at `offset`.
    fn load_u32(&self, offset: usize, order: Ordering) -> u32;
    /// Atomically stores `value` at `offset`.
    fn store_u32(&self, offset: usize, value: u32, order: Ordering);
    /// Atomically loads the byte at `offset`.
    fn load_u8(&self, offset: usize, order: Ordering) -> u8;
    /// Atomically stores the byte at `offset`.
    fn store_u8(&self, offset: usize, value: u8, order: Ordering);
    /// Atomically swaps the byte at `offset`, returning the old value.
    fn swap_u8(&self, offset: usize, value: u8, order: Ordering) -> u8;
    /// Atomically ORs `bits` into the byte at `offset`, returning the old value.
    fn fetch_or_u8(&self, offset: usize, bits: u8, order: Ordering) -> u8;
    /// Copies `dst.len()` bytes starting at `offset` into private memory (relaxed).
    fn read_bytes(&self, offset: usize, dst: &mut [u8]);
    /// Copies `src` into the region at `offset` (relaxed).
    fn write_bytes(&self, offset: usize, src: &[u8]);
    /// A memory fence (loom models replace it with theirs).
    fn fence(&self, order: Ordering) {
        core::sync::atomic::fence(order);
    }
}

/// A bounds-checked window on peer-writable memory, borrowed from its owner for `'a`.
#[derive(Clone, Copy)]
pub struct SharedView<'a> {
    base: NonNull<u8>,
    len: usize,
    _owner: PhantomData<&'a [AtomicU8]>,
}

// SAFETY: a view only performs atomic operations on the region, which are thread-safe; the
// region's owner is `Send + Sync` (`SharedMemory`'s supertraits) and outlives the view.
unsafe impl Send for SharedView<'_> {}
// SAFETY: as for `Send`: every access through `&SharedView` is atomic.
unsafe impl Sync for SharedView<'_> {}

impl core::fmt::Debug for SharedView<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedView")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

impl<'a> SharedView<'a> {
    /// Creates a view of `len` bytes at `base`.
    ///
    /// # Safety
    ///
    /// For all of `'a`, `base` must be valid for reads and writes of `len` bytes and the region
    /// must only be accessed atomically (by us) or by the peer; nothing may hold a Rust reference
    /// to plain data in it.
    pub unsafe fn from_raw_parts(base: NonNull<u8>, len: usize) -> Self {
        SharedView {
            base,
            len,
            _owner: PhantomData,
        }
    }

    /// The sub-region `[offset, offset + len)`, or `None` if it does not fit.
    pub fn subview(&self, offset: usize, len: usize) -> Option<SharedView<'a>> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `offset <= self.len`, so the result stays within (or one past) the region.
        let base = unsafe { self.base.add(offset) };
        Some(SharedView {
            base,
            len,
            _owner: PhantomData,
        })
    }

    /// Start address (for diagnostics and alignment checks).
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.base
    }

    #[inline(always)]
    fn range_ptr(&self, offset: usize, size: usize) -> *mut u8 {
        match offset.checked_add(size) {
            Some(end) if end <= self.len => {}
            _ => out_of_range(offset, size, self.len),
        }
        // SAFETY: `offset + size <= len`, so the pointer is inside the region.
        unsafe { self.base.as_ptr().add(offset) }
    }

    #[inline(always)]
    fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        let ptr = self.range_ptr(offset, 4);
        if (ptr as usize) % 4 != 0 {
            misaligned(offset);
        }
        // SAFETY: in range and 4-aligned (checked above); the region is valid for `'a` and only
        // accessed atomically (the contract of `from_raw_parts`), which `from_ptr` requires.
        unsafe { AtomicU32::from_ptr(ptr.cast()) }
    }

    #[inline(always)]
    fn atomic_u8(&self, offset: usize) -> &AtomicU8 {
        let ptr = self.range_ptr(offset, 1);
        // SAFETY: in range; bytes need no alignment; accessed only atomically (see above).
        unsafe { AtomicU8::from_ptr(ptr) }
    }
}

#[cold]
#[inline(never)]
fn out_of_range(offset: usize, size: usize, len: usize) -> ! {
    panic!("shared memory access [{offset}, +{size}) outside a region of {len} bytes (a bug in the caller, not the peer)")
}

#[cold]
#[inline(never)]
fn misaligned(offset: usize) -> ! {
    panic!("misaligned u32 access at offset {offset} in shared memory (a bug in the caller)")
}

const WORD: usize = core::mem::size_of::<u64>();

impl SharedAccess for SharedView<'_> {
    fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        self.atomic_u32(offset).load(order)
    }

    #[inline]
    fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        self.atomic_u32(offset).store(value, order)
    }

    #[inline]
    fn load_u8(&self, offset: usize, order: Ordering) -> u8 {
        self.atomic_u8(offset).load(order)
    }

    #[inline]
    fn store_u8(&self, offset: usize, value: u8, order: Ordering) {
        self.atomic_u8(offset).store(value, order)
    }

    #[inline]
    fn swap_u8(&self, offset: usize, value: u8, order: Ordering) -> u8 {
        self.atomic_u8(offset).swap(value, order)
    }

    #[inline]
    fn fetch_or_u8(&self, offset: usize, bits: u8, order: Ordering) -> u8 {
        self.atomic_u8(offset).fetch_or(bits, order)
    }

    #[inline]
    fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        let src = self.range_ptr(offset, dst.len());
        let head = src.align_offset(WORD).min(dst.len());
        let (head_bytes, rest) = dst.split_at_mut(head);
        let whole = rest.len() / WORD * WORD;
        let (words, tail_bytes) = rest.split_at_mut(whole);
        for (i, byte) in head_bytes.iter_mut().enumerate() {
            // SAFETY: `i < head <= len`, inside the checked range; bytes need no alignment.
            *byte = unsafe { AtomicU8::from_ptr(src.add(i)) }.load(Ordering::Relaxed);
        }
        // SAFETY: `head <= len`, inside (or one past) the checked range.
        let word_src = unsafe { src.add(head) }.cast::<u64>();
        let load = |k: usize| {
            // SAFETY: `word_src` is 8-aligned (past the head) and word `k` lies inside the
            // checked range (callers pass `k < whole / 8`); the region is only accessed
            // atomically.
            unsafe { AtomicU64::from_ptr(word_src.add(k)) }.load(Ordering::Relaxed)
        };
        // Four words per step: independent loads the CPU can overlap.
        let mut quads = words.chunks_exact_mut(4 * WORD);
        let mut k = 0;
        for quad in &mut quads {
            let w = [load(k), load(k + 1), load(k + 2), load(k + 3)];
            for (out, word) in quad.chunks_exact_mut(WORD).zip(w) {
                out.copy_from_slice(&word.to_ne_bytes());
            }
            k += 4;
        }
        for out in quads.into_remainder().chunks_exact_mut(WORD) {
            out.copy_from_slice(&load(k).to_ne_bytes());
            k += 1;
        }
        let tail = head + whole;
        for (j, byte) in tail_bytes.iter_mut().enumerate() {
            // SAFETY: `tail + j < len`, inside the checked range.
            *byte = unsafe { AtomicU8::from_ptr(src.add(tail + j)) }.load(Ordering::Relaxed);
        }
    }

    #[inline]
    fn write_bytes(&self, offset: usize, src: &[u8]) {
        let dst = self.range_ptr(offset, src.len());
        let head = dst.align_offset(WORD).min(src.len());
        let (head_bytes, rest) = src.split_at(head);
        let whole = rest.len() / WORD * WORD;
        let (words, tail_bytes) = rest.split_at(whole);
        for (i, &byte) in head_bytes.iter().enumerate() {
            // SAFETY: `i < head <= len`, inside the checked range.
            unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(byte, Ordering::Relaxed);
        }
        // SAFETY: `head <= len`, inside (or one past) the checked range.
        let word_dst = unsafe { dst.add(head) }.cast::<u64>();
        let store = |k: usize, bytes: &[u8]| {
            let mut word = [0u8; WORD];
            word.copy_from_slice(bytes);
            // SAFETY: `word_dst` is 8-aligned and word `k` lies inside the checked range
            // (callers pass `k < whole / 8`); the region is only accessed atomically.
            unsafe { AtomicU64::from_ptr(word_dst.add(k)) }
                .store(u64::from_ne_bytes(word), Ordering::Relaxed);
        };
        for (k, chunk) in words.chunks_exact(WORD).enumerate() {
            store(k, chunk);
        }
        let tail = head + whole;
        for (j, &byte) in tail_bytes.iter().enumerate() {
            // SAFETY: `tail + j < len`, inside the checked range.
            unsafe { AtomicU8::from_ptr(dst.add(tail + j)) }.store(byte, Ordering::Relaxed);
        }
    }
}

macro_rules! forward_shared_access {
    () => {
        fn len(&self) -> usize {
            (**self).len()
        }
        fn load_u32(&self, o: usize, ord: Ordering) -> u32 {
            (**self).load_u32(o, ord)
        }
        fn store_u32(&self, o: usize, v: u32, ord: Ordering) {
            (**self).store_u32(o, v, ord)
        }
        fn load_u8(&self, o: usize, ord: Ordering) -> u8 {
            (**self).load_u8(o, ord)
        }
        fn store_u8(&self, o: usize, v: u8, ord: Ordering) {
            (**self).store_u8(o, v, ord)
        }
        fn swap_u8(&self, o: usize, v: u8, ord: Ordering) -> u8 {
            (**self).swap_u8(o, v, ord)
        }
        fn fetch_or_u8(&self, o: usize, v: u8, ord: Ordering) -> u8 {
            (**self).fetch_or_u8(o, v, ord)
        }
        fn read_bytes(&self, o: usize, dst: &mut [u8]) {
            (**self).read_bytes(o, dst)
        }
        fn write_bytes(&self, o: usize, src: &[u8]) {
            (**self).write_bytes(o, src)
        }
        fn fence(&self, ord: Ordering) {
            (**self).fence(ord)
        }
    };
}

impl<T: SharedAccess + ?Sized> SharedAccess for &T {
    forward_shared_access!();
}

impl<T: SharedAccess + ?Sized> SharedAccess for alloc::sync::Arc<T> {
    forward_shared_access!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// Private test memory standing in for a peer page.
    struct TestPage(Vec<AtomicU64>);

    impl TestPage {
        fn new(bytes: usize) -> Self {
            TestPage((0..bytes.div_ceil(8)).map(|_| AtomicU64::new(0)).collect())
        }
    }

    // SAFETY: the Vec's buffer is stable while `self` lives, is valid for its length, and is
    // only accessed through atomics.
    unsafe impl SharedMemory for TestPage {
        fn as_ptr(&self) -> NonNull<u8> {
            NonNull::new(self.0.as_ptr() as *mut u8).expect("vec pointer is non-null")
        }
        fn len(&self) -> usize {
            self.0.len() * 8
        }
    }

    #[test]
    fn copies_round_trip_at_every_alignment() {
        let page = TestPage::new(256);
        let view = page.view();
        for offset in 0..17 {
            for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 63, 100] {
                let src: Vec<u8> = (0..len).map(|i| (i * 7 + offset) as u8).collect();
                view.write_bytes(offset, &src);
                let mut dst = vec![0u8; len];
                view.read_bytes(offset, &mut dst);
                assert_eq!(src, dst, "offset {offset} len {len}");
            }
        }
    }

    #[test]
    fn writes_stay_inside_their_range() {
        let page = TestPage::new(64);
        let view = page.view();
        view.write_bytes(0, &[0xaa; 64]);
        view.write_bytes(3, &[0x55; 11]);
        let mut all = [0u8; 64];
        view.read_bytes(0, &mut all);
        assert!(all[..3].iter().all(|&b| b == 0xaa));
        assert!(all[3..14].iter().all(|&b| b == 0x55));
        assert!(all[14..].iter().all(|&b| b == 0xaa));
    }

    #[test]
    fn integers_and_subviews() {
        let page = TestPage::new(64);
        let view = page.view();
        let sub = view.subview(16, 16).expect("fits");
        sub.store_u32(4, 0xdead_beef, Ordering::Release);
        assert_eq!(view.load_u32(20, Ordering::Acquire), 0xdead_beef);
        assert_eq!(sub.fetch_or_u8(0, 0b10, Ordering::SeqCst), 0);
        assert_eq!(sub.swap_u8(0, 0, Ordering::SeqCst), 0b10);
        assert!(view.subview(60, 5).is_none());
        assert!(view.subview(usize::MAX, 2).is_none());
    }

    #[test]
    #[should_panic(expected = "outside a region")]
    fn out_of_range_is_a_caller_bug() {
        let page = TestPage::new(16);
        page.view().read_bytes(10, &mut [0u8; 8]);
    }

    #[test]
    fn forwarding_impls_reach_the_view() {
        let page = TestPage::new(16);
        let view = page.view();
        let arc = alloc::sync::Arc::new(view);
        let by_ref: &SharedView<'_> = &arc;
        SharedAccess::store_u8(&by_ref, 1, 9, Ordering::Relaxed);
        assert_eq!(arc.load_u8(1, Ordering::Relaxed), 9);
        assert_eq!(SharedAccess::len(&arc), 16);
    }
}
