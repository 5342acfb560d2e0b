//! The one audited way to touch memory a peer can write (D1, D2; `docs/peer-memory.md`).
//!
//! Memory granted to or mapped from another domain can change under our feet at any moment,
//! so it is never put behind a Rust `&`/`&mut` reference to plain data. Instead:
//!
//! * [`SharedMemory`] is implemented (unsafely, once per backend) by the handles that own such
//!   memory; it promises a stable, valid region;
//! * [`SharedView`] is a bounds-checked window on such a region: `u32`/`u8` control words are
//!   accessed atomically with the caller's ordering; byte copies (ring bodies) are done word by
//!   word with relaxed atomic loads/stores (bytes at the unaligned head and tail), or, on
//!   **foreign** memory ([`SharedMemory::is_foreign`]: memory outside every Rust allocation,
//!   such as pages mapped from another domain or process), with wide volatile accesses
//!   (vector-sized in the aligned body). Both are defined behaviour under a racing peer; the
//!   argument, with the rule it rests on, is in `docs/volatile-copies.md`;
//! * [`SharedAccess`] is the accessor trait ring code is written against, so that a loom model
//!   can stand in for real pages (loom cannot run on raw pages).
//!
//! Offsets and lengths given to these accessors come from *our* code, after the ring has
//! validated whatever the peer wrote; an out-of-range offset is therefore a bug in the caller and
//! panics, like slice indexing. Peer-controlled values must never reach them unvalidated.

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

/// A region of memory that a peer may write concurrently.
///
/// # Safety
///
/// Implementors guarantee that for as long as `self` is alive: `as_ptr()` is non-null, valid
/// for reads and writes of `len()` bytes, and the region is only ever accessed through atomic
/// operations (volatile copies too, on foreign memory: see below) or by the peer (never through
/// Rust references to plain data).
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
///
/// # Foreign memory
///
/// [`SharedMemory::is_foreign`] may return `true` only if the whole region is memory **outside
/// every Rust allocation** in the sense of [`core::ptr::read_volatile`]'s documentation: pages
/// mapped from another domain or another process (gntdev, gntalloc, a shared `memfd`), never
/// memory from Rust's allocator, a static or a stack, and never touched in this process except
/// through pore-core's accessors. Copies on such a region use volatile accesses (see
/// `docs/volatile-copies.md`); on Rust memory (the loopback's heap pages) that would be a data
/// race with the peer, so the default is `false`, which keeps the atomic word copy.
pub unsafe trait SharedMemory: Send + Sync {
    /// Start of the region.
    fn as_ptr(&self) -> NonNull<u8>;
    /// Length of the region in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether the region is memory outside every Rust allocation (see "Foreign memory" above):
    /// its bulk copies then use wide volatile accesses. `false` unless the implementor promises
    /// otherwise.
    fn is_foreign(&self) -> bool {
        false
    }
    /// A bounds-checked view of the whole region.
    fn view(&self) -> SharedView<'_> {
        // SAFETY: the trait's contract guarantees a stable region valid for `len()` bytes,
        // accessed only through pore-core's accessors, for as long as `self` (and so the
        // returned borrow) lives, and `is_foreign()` only for memory outside every Rust
        // allocation.
        unsafe {
            if self.is_foreign() {
                SharedView::from_foreign_parts(self.as_ptr(), self.len())
            } else {
                SharedView::from_raw_parts(self.as_ptr(), self.len())
            }
        }
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
    /// Memory outside every Rust allocation: bulk copies are wide and volatile.
    foreign: bool,
    _owner: PhantomData<&'a [AtomicU8]>,
}

// SAFETY: a view only performs atomic operations on the region, which are thread-safe, or, on
// foreign memory, volatile copies of its bodies, which the target defines under any race
// (`docs/volatile-copies.md`); the region's owner is `Send + Sync` (`SharedMemory`'s
// supertraits) and outlives the view.
unsafe impl Send for SharedView<'_> {}
// SAFETY: as for `Send`: every access through `&SharedView` is atomic or, on foreign memory,
// volatile.
unsafe impl Sync for SharedView<'_> {}

impl core::fmt::Debug for SharedView<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedView")
            .field("base", &self.base)
            .field("len", &self.len)
            .field("foreign", &self.foreign)
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
            foreign: false,
            _owner: PhantomData,
        }
    }

    /// Creates a view of `len` bytes at `base` on **foreign** memory: its bulk copies use wide
    /// volatile accesses (`docs/volatile-copies.md`).
    ///
    /// # Safety
    ///
    /// As for [`SharedView::from_raw_parts`], and the region must be memory outside every Rust
    /// allocation (mapped from another domain or process; see [`SharedMemory`]'s "Foreign
    /// memory"), whose bytes this process touches only through pore-core's accessors.
    pub unsafe fn from_foreign_parts(base: NonNull<u8>, len: usize) -> Self {
        SharedView {
            base,
            len,
            foreign: true,
            _owner: PhantomData,
        }
    }

    /// Whether bulk copies on this view are wide and volatile (foreign memory).
    pub fn is_foreign(&self) -> bool {
        self.foreign
    }

    /// The sub-region `[offset, offset + len)`, or `None` if it does not fit.
    pub fn subview(&self, offset: usize, len: usize) -> Option<SharedView<'a>> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // `offset <= self.len` and the region does not wrap around the address space, so the
        // result stays within (or one past) the region and is not null. Wrapping arithmetic:
        // foreign memory is not a Rust allocation, so `add`'s in-bounds rule does not apply.
        let base = NonNull::new(self.base.as_ptr().wrapping_add(offset))?;
        Some(SharedView {
            base,
            len,
            foreign: self.foreign,
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
        // `offset + size <= len`: inside the region (wrapping arithmetic, as in `subview`).
        self.base.as_ptr().wrapping_add(offset)
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
        if self.foreign {
            // SAFETY: `src` is valid for `dst.len()` bytes (range checked above) and lies in
            // memory outside every Rust allocation (the contract of `from_foreign_parts`);
            // `dst` is private memory of that length.
            unsafe { wide::read(src, dst) }
        } else {
            // SAFETY: `src` is valid for `dst.len()` bytes (range checked above) and only
            // accessed atomically (the contract of `from_raw_parts`).
            unsafe { words::read(src, dst) }
        }
    }

    #[inline]
    fn write_bytes(&self, offset: usize, src: &[u8]) {
        let dst = self.range_ptr(offset, src.len());
        if self.foreign {
            // SAFETY: as in `read_bytes`, for writes of `src.len()` bytes.
            unsafe { wide::write(dst, src) }
        } else {
            // SAFETY: as in `read_bytes`, for writes of `src.len()` bytes.
            unsafe { words::write(dst, src) }
        }
    }
}

/// The word copy (D1): relaxed atomic `u64` loads and stores in the aligned body, relaxed atomic
/// bytes at the unaligned head and tail. Defined under a racing peer on any memory, Rust's own
/// included, and understood by miri and loom; used everywhere except on foreign memory.
mod words {
    use super::WORD;
    use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

    /// Copies `dst.len()` bytes from `src` into `dst`.
    ///
    /// # Safety
    ///
    /// `src` must be valid for reads of `dst.len()` bytes for the duration of the call, and
    /// only accessed atomically (by us and the peer).
    #[inline]
    pub(super) unsafe fn read(src: *mut u8, dst: &mut [u8]) {
        let head = src.align_offset(WORD).min(dst.len());
        let (head_bytes, rest) = dst.split_at_mut(head);
        let whole = rest.len() / WORD * WORD;
        let (words, tail_bytes) = rest.split_at_mut(whole);
        for (i, byte) in head_bytes.iter_mut().enumerate() {
            // SAFETY: `i < head <= len`, inside the caller's range; bytes need no alignment.
            *byte = unsafe { AtomicU8::from_ptr(src.add(i)) }.load(Ordering::Relaxed);
        }
        // SAFETY: `head <= len`, inside (or one past) the caller's range.
        let word_src = unsafe { src.add(head) }.cast::<u64>();
        let load = |k: usize| {
            // SAFETY: `word_src` is 8-aligned (past the head) and word `k` lies inside the
            // caller's range (callers pass `k < whole / 8`); the region is only accessed
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
            // SAFETY: `tail + j < len`, inside the caller's range.
            *byte = unsafe { AtomicU8::from_ptr(src.add(tail + j)) }.load(Ordering::Relaxed);
        }
    }

    /// Copies `src` to `dst`.
    ///
    /// # Safety
    ///
    /// `dst` must be valid for writes of `src.len()` bytes for the duration of the call, and
    /// only accessed atomically (by us and the peer).
    #[inline]
    pub(super) unsafe fn write(dst: *mut u8, src: &[u8]) {
        let head = dst.align_offset(WORD).min(src.len());
        let (head_bytes, rest) = src.split_at(head);
        let whole = rest.len() / WORD * WORD;
        let (words, tail_bytes) = rest.split_at(whole);
        for (i, &byte) in head_bytes.iter().enumerate() {
            // SAFETY: `i < head <= len`, inside the caller's range.
            unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(byte, Ordering::Relaxed);
        }
        // SAFETY: `head <= len`, inside (or one past) the caller's range.
        let word_dst = unsafe { dst.add(head) }.cast::<u64>();
        let store = |k: usize, bytes: &[u8]| {
            let mut word = [0u8; WORD];
            word.copy_from_slice(bytes);
            // SAFETY: `word_dst` is 8-aligned and word `k` lies inside the caller's range
            // (callers pass `k < whole / 8`); the region is only accessed atomically.
            unsafe { AtomicU64::from_ptr(word_dst.add(k)) }
                .store(u64::from_ne_bytes(word), Ordering::Relaxed);
        };
        for (k, chunk) in words.chunks_exact(WORD).enumerate() {
            store(k, chunk);
        }
        let tail = head + whole;
        for (j, &byte) in tail_bytes.iter().enumerate() {
            // SAFETY: `tail + j < len`, inside the caller's range.
            unsafe { AtomicU8::from_ptr(dst.add(tail + j)) }.store(byte, Ordering::Relaxed);
        }
    }
}

/// The wide copy, for foreign memory only (`docs/volatile-copies.md`): volatile accesses of one
/// vector register (16 bytes on x86-64 and AArch64, whose baselines have SSE2 and NEON; 32 on
/// x86-64 with AVX, detected at run time with `std`, from 256 bytes on; 8 bytes elsewhere) in
/// the aligned body, four per step, and naturally aligned volatile accesses of 1, 2, 4, …
/// bytes at the head and tail. The private side is read or written with
/// unaligned plain accesses. No atomic operation ever touches these bytes.
mod wide {
    use core::ptr;

    #[cfg(target_arch = "x86_64")]
    type Vector = core::arch::x86_64::__m128i;
    #[cfg(target_arch = "aarch64")]
    type Vector = core::arch::aarch64::uint8x16_t;
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    type Vector = u64;

    /// Copies at least this long use 32-byte AVX accesses where the CPU has AVX (x86-64 with
    /// `std`, which detects it at run time); shorter ones are not worth the dispatch.
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    const AVX_FROM: usize = 256;

    /// One volatile load of a `T` from foreign `src` (aligned for `T`), stored unaligned into
    /// private `dst`.
    ///
    /// # Safety
    ///
    /// `src` is aligned for `T` and inside a foreign range valid for reads of
    /// `size_of::<T>()` bytes; `dst` is valid for writes of as many private bytes. `T` is a
    /// plain-data type (every bit pattern valid).
    #[inline(always)]
    unsafe fn load<T: Copy>(src: *const u8, dst: *mut u8) {
        // SAFETY: the caller's contract: an aligned, in-range volatile read of memory outside
        // every Rust allocation (target semantics: one load, whatever the peer left there; any
        // bit pattern is a valid `T`), then a plain write to private memory.
        unsafe { ptr::write_unaligned(dst.cast::<T>(), ptr::read_volatile(src.cast::<T>())) }
    }

    /// One plain unaligned load of a `T` from private `src`, stored with a volatile write to
    /// foreign `dst` (aligned for `T`).
    ///
    /// # Safety
    ///
    /// As for [`load`], with the directions swapped.
    #[inline(always)]
    unsafe fn store<T: Copy>(src: *const u8, dst: *mut u8) {
        // SAFETY: the caller's contract, mirrored: a plain read of private memory, then an
        // aligned, in-range volatile write to memory outside every Rust allocation.
        unsafe { ptr::write_volatile(dst.cast::<T>(), ptr::read_unaligned(src.cast::<T>())) }
    }

    /// Splits a copy of `len` bytes at `foreign` (the side whose alignment is followed) into
    /// pieces: `piece(q, i)` moves `q` bytes at offset `i`, with `foreign + i` aligned to `q`
    /// (for the four-vector step, to `v`), `q` one of 1, 2, 4, …, `v` (the vector size, a
    /// power of two) or `4 * v`.
    #[inline(always)]
    fn plan(v: usize, foreign: *const u8, len: usize, mut piece: impl FnMut(usize, usize)) {
        let mut i = 0;
        // Head: single pieces of 1, 2, 4, … bytes bring the foreign address to `v`
        // alignment. After the piece of q bytes the address is aligned to 2q.
        let mut q = 1;
        while q < v {
            if (foreign as usize).wrapping_add(i) & q != 0 {
                if len - i < q {
                    break;
                }
                piece(q, i);
                i += q;
            }
            q *= 2;
        }
        // Body (only once aligned): four vectors per step, then single vectors.
        if (foreign as usize).wrapping_add(i) % v == 0 {
            while len - i >= 4 * v {
                piece(4 * v, i);
                i += 4 * v;
            }
            while len - i >= v {
                piece(v, i);
                i += v;
            }
        }
        // Tail: fewer bytes than the alignment of the current address, so descending pieces
        // stay aligned (the address is aligned to every piece larger than what remains).
        let mut q = v / 2;
        while q > 0 {
            if (len - i) & q != 0 {
                piece(q, i);
                i += q;
            }
            q /= 2;
        }
        debug_assert_eq!(i, len);
    }

    /// Moves one piece of `q` bytes with `V` as the vector type: `q` is 1, 2, 4, 8, 16, the
    /// size of `V`, or four times that.
    ///
    /// # Safety
    ///
    /// `f` is [`load`] or [`store`] instantiated per type; its contract holds for `q` bytes at
    /// `s`/`d` with the foreign side aligned to `min(q, size_of::<V>())`.
    #[inline(always)]
    unsafe fn piece<V: Copy>(q: usize, s: *const u8, d: *mut u8, load_not_store: bool) {
        let v = core::mem::size_of::<V>();
        macro_rules! go {
            ($t:ty, $s:expr, $d:expr) => {
                if load_not_store {
                    // SAFETY: the caller's contract for this piece.
                    unsafe { load::<$t>($s, $d) }
                } else {
                    // SAFETY: the caller's contract for this piece.
                    unsafe { store::<$t>($s, $d) }
                }
            };
        }
        match q {
            1 => go!(u8, s, d),
            2 => go!(u16, s, d),
            4 => go!(u32, s, d),
            8 => go!(u64, s, d),
            16 => go!(Vector, s, d),
            q if q == v => go!(V, s, d),
            _ => {
                // Four independent vector accesses per step.
                for k in 0..4 {
                    go!(V, s.wrapping_add(k * v), d.wrapping_add(k * v));
                }
            }
        }
    }

    /// Copies `dst.len()` bytes from foreign `src` into `dst`, `V` wide in the body.
    ///
    /// # Safety
    ///
    /// As for [`read`]; `V` is a plain-data type of 8, 16 or 32 bytes whose instructions the
    /// CPU has.
    #[inline(always)]
    unsafe fn read_with<V: Copy>(src: *const u8, dst: &mut [u8]) {
        let out = dst.as_mut_ptr();
        plan(core::mem::size_of::<V>(), src, dst.len(), |q, i| {
            // SAFETY: `plan` passes `i + q <= len` with `src + i` aligned as `piece` needs;
            // `out + i` is inside `dst`; the caller's contract covers the foreign side.
            unsafe { piece::<V>(q, src.wrapping_add(i), out.wrapping_add(i), true) }
        });
    }

    /// Copies `src` to foreign `dst`, `V` wide in the body.
    ///
    /// # Safety
    ///
    /// As for [`write`]; `V` as for [`read_with`].
    #[inline(always)]
    unsafe fn write_with<V: Copy>(dst: *mut u8, src: &[u8]) {
        let from = src.as_ptr();
        plan(core::mem::size_of::<V>(), dst, src.len(), |q, i| {
            // SAFETY: as in `read_with`, with `dst + i` the aligned foreign side and
            // `from + i` inside `src`.
            unsafe { piece::<V>(q, from.wrapping_add(i), dst.wrapping_add(i), false) }
        });
    }

    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    #[target_feature(enable = "avx")]
    unsafe fn read_avx(src: *const u8, dst: &mut [u8]) {
        // SAFETY: the caller's contract, and the caller checked that the CPU has AVX.
        unsafe { read_with::<core::arch::x86_64::__m256i>(src, dst) }
    }

    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    #[target_feature(enable = "avx")]
    unsafe fn write_avx(dst: *mut u8, src: &[u8]) {
        // SAFETY: the caller's contract, and the caller checked that the CPU has AVX.
        unsafe { write_with::<core::arch::x86_64::__m256i>(dst, src) }
    }

    /// Whether the 32-byte path may run (and is worth it) for `len` bytes.
    #[inline(always)]
    fn avx(len: usize) -> bool {
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        {
            len >= AVX_FROM && std::arch::is_x86_feature_detected!("avx")
        }
        #[cfg(not(all(target_arch = "x86_64", feature = "std")))]
        {
            let _ = len;
            false
        }
    }

    /// Copies `dst.len()` bytes from foreign `src` into `dst`.
    ///
    /// # Safety
    ///
    /// `src` must be valid for reads of `dst.len()` bytes in the target's sense and lie in
    /// memory outside every Rust allocation, touched in this process only by volatile accesses.
    #[inline]
    pub(super) unsafe fn read(src: *const u8, dst: &mut [u8]) {
        if avx(dst.len()) {
            #[cfg(all(target_arch = "x86_64", feature = "std"))]
            // SAFETY: the caller's contract; `avx` checked the CPU.
            return unsafe { read_avx(src, dst) };
        }
        // SAFETY: the caller's contract; the baseline vector needs no detection.
        unsafe { read_with::<Vector>(src, dst) }
    }

    /// Copies `src` to foreign `dst`.
    ///
    /// # Safety
    ///
    /// `dst` must be valid for writes of `src.len()` bytes in the target's sense and lie in
    /// memory outside every Rust allocation, touched in this process only by volatile accesses.
    #[inline]
    pub(super) unsafe fn write(dst: *mut u8, src: &[u8]) {
        if avx(src.len()) {
            #[cfg(all(target_arch = "x86_64", feature = "std"))]
            // SAFETY: the caller's contract; `avx` checked the CPU.
            return unsafe { write_avx(dst, src) };
        }
        // SAFETY: the caller's contract; the baseline vector needs no detection.
        unsafe { write_with::<Vector>(dst, src) }
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
    use core::sync::atomic::AtomicU64;

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

    /// Heap memory viewed as foreign. Single-threaded, so the volatile accesses are plain
    /// non-racing accesses to a Rust allocation: this checks the wide copy's plan (alignments,
    /// lengths, bounds; under miri too), not the concurrency argument, which needs no test.
    fn foreign_view(page: &TestPage) -> SharedView<'_> {
        // SAFETY: valid for the page's length while `page` lives; see above for why a heap page
        // is fine here.
        unsafe { SharedView::from_foreign_parts(page.as_ptr(), page.len()) }
    }

    #[test]
    fn wide_and_word_copies_agree_at_every_alignment_and_length() {
        // Long enough for head, several four-vector steps, single vectors and tail, with the
        // 16-byte vectors and (natively, on x86-64 with AVX) the 32-byte ones from 256 bytes.
        let (max_len, offsets) = if cfg!(miri) { (72, 17) } else { (600, 65) };
        let words_page = TestPage::new(max_len + offsets + 16);
        let wide_page = TestPage::new(max_len + offsets + 16);
        let (word, wide) = (words_page.view(), foreign_view(&wide_page));
        assert!(wide.is_foreign() && !word.is_foreign());
        let total = word.len();
        for offset in 0..offsets {
            for len in 0..=max_len {
                word.write_bytes(0, &vec![0xee; total]);
                wide.write_bytes(0, &vec![0xee; total]);
                let src: Vec<u8> = (0..len).map(|i| (i * 13 + offset + len) as u8).collect();
                word.write_bytes(offset, &src);
                wide.write_bytes(offset, &src);
                // Both pages byte for byte equal, read either way: nothing outside the range
                // changed, nothing inside it was missed.
                let (mut a, mut b, mut c) = (vec![0; total], vec![0; total], vec![0; total]);
                word.read_bytes(0, &mut a);
                wide.read_bytes(0, &mut b);
                // The wide page read by the word copy too (same thread, no race).
                // SAFETY: as for `foreign_view`.
                unsafe { SharedView::from_raw_parts(wide_page.as_ptr(), total) }
                    .read_bytes(0, &mut c);
                assert_eq!(a, b, "offset {offset} len {len}");
                assert_eq!(a, c, "offset {offset} len {len}");
                assert_eq!(
                    &a[offset..offset + len],
                    &src[..],
                    "offset {offset} len {len}"
                );
                // Reading back at the same alignment with each path.
                let (mut d, mut e) = (vec![0; len], vec![0; len]);
                word.read_bytes(offset, &mut d);
                wide.read_bytes(offset, &mut e);
                assert_eq!(d, src);
                assert_eq!(e, src);
            }
        }
    }

    #[test]
    fn wide_copies_follow_the_foreign_alignment_whatever_the_private_one() {
        let page = TestPage::new(256);
        let wide = foreign_view(&page);
        let backing: Vec<u8> = (0..=255).collect();
        for skew in 0..16 {
            let src = &backing[skew..skew + 100];
            wide.write_bytes(5, src);
            let mut out = vec![0u8; 100 + skew];
            wide.read_bytes(5, &mut out[skew..]);
            assert_eq!(&out[skew..], src, "skew {skew}");
        }
        assert!(wide.subview(8, 16).is_some_and(|v| v.is_foreign()));
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
