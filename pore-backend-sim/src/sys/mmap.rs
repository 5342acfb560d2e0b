//! Shared page mappings: memfd allocation and `mmap`/`munmap` (the crate's memory `unsafe`).
//!
//! Every page the simulator hands out lives in a memfd, so the same code serves domains that
//! are threads (each maps the fd) and domains that are processes (the fd travels by
//! SCM_RIGHTS). A [`Mmap`] owns one contiguous mapping; it is only ever accessed through
//! atomics (`SharedView`, or the `&AtomicU32`/`&AtomicU8` it hands out), never through
//! references to plain data, because another domain may write it at any time.
//!
//! A memfd is shared with domain processes, which may be hostile: one that shrank its memfd
//! would turn every other mapping of the lost pages into SIGBUS on the next touch, killing the
//! peer or the simulated hypervisor itself. So every memfd is sealed against shrinking and
//! growing (and against further seals) before anyone else sees it, and [`Mmap`] maps only
//! descriptors that carry those seals and are long enough: whatever descriptor arrives, from
//! wherever, a mapping of it can never lose its pages.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU8};

use pore_core::PAGE_SIZE;
use rustix::fs::{fcntl_add_seals, fcntl_get_seals, fstat, ftruncate, memfd_create};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};

/// The seals every memfd of the simulator carries, and every descriptor it maps must carry:
/// its size is fixed for good (no shrink, no grow) and no other seal can be added (a later
/// `F_SEAL_WRITE` or `F_SEAL_FUTURE_WRITE` would make further writable mappings fail).
const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// Creates a memfd of `pages` zero-filled pages, sealed ([`SEALS`]) before it is returned.
pub(crate) fn memfd(name: &str, pages: usize) -> io::Result<OwnedFd> {
    let len = pages
        .checked_mul(PAGE_SIZE)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fd = memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    // A fresh memfd is empty; growing it with ftruncate gives zero-filled pages.
    ftruncate(&fd, len as u64)?;
    fcntl_add_seals(&fd, SEALS)?;
    Ok(fd)
}

/// Checks that `fd` is a sealed memfd ([`SEALS`]) of at least `len` bytes, so that a mapping
/// of its first `len` bytes can never lose pages (SIGBUS). A descriptor that cannot carry
/// seals (not a memfd: `EINVAL`), one without them, or one too short is refused with
/// `PermissionDenied` or `InvalidData`.
pub(crate) fn check_sealed(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    // Seals first: they are never removed, so once `SHRINK` is seen, the size read after it
    // can only stay (a size read before could still have shrunk in between).
    let seals = fcntl_get_seals(fd).map_err(|e| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("refusing to map a descriptor that cannot be sealed ({e})"),
        )
    })?;
    if !seals.contains(SEALS) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "refusing to map a memfd not sealed against shrinking",
        ));
    }
    let size = fstat(fd)?.st_size;
    if u64::try_from(size).map_or(true, |size| size < len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "refusing to map pages beyond the end of a memfd",
        ));
    }
    Ok(())
}

/// One contiguous read-write shared mapping, unmapped on drop.
pub(crate) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a `Mmap` is plain shared memory owned by this handle; every access to it goes through
// atomics, which are thread-safe, so it may move to and be shared between threads.
unsafe impl Send for Mmap {}
// SAFETY: as for `Send`: all access through `&Mmap` is atomic.
unsafe impl Sync for Mmap {}

impl std::fmt::Debug for Mmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mmap")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl Mmap {
    /// Maps `pages` pages of `fd` starting at page `first`, shared and read-write.
    pub(crate) fn map_fd(fd: BorrowedFd<'_>, first: usize, pages: usize) -> io::Result<Mmap> {
        Self::map_pages(&[(fd, first, pages)])
    }

    /// Maps runs of pages `(fd, first page, page count)` back to back into one contiguous
    /// region, in order. Every fd must be a sealed memfd holding its run ([`check_sealed`]).
    pub(crate) fn map_pages(runs: &[(BorrowedFd<'_>, usize, usize)]) -> io::Result<Mmap> {
        let total: usize = runs.iter().map(|r| r.2).sum();
        let len = total
            .checked_mul(PAGE_SIZE)
            .filter(|&l| l > 0)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let offsets: Vec<u64> = runs
            .iter()
            .map(|&(_, first, _)| {
                first
                    .checked_mul(PAGE_SIZE)
                    .map(|o| o as u64)
                    .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
            })
            .collect::<io::Result<_>>()?;
        for (&(fd, _, pages), &offset) in runs.iter().zip(&offsets) {
            let end = pages
                .checked_mul(PAGE_SIZE)
                .and_then(|l| offset.checked_add(l as u64))
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
            check_sealed(fd, end)?;
        }
        if let [(fd, _, _)] = runs {
            // SAFETY: a fresh mapping chosen by the kernel (null hint, no MAP_FIXED) aliases no
            // existing Rust object; `len > 0`; the fd is valid for the call.
            let ptr = unsafe {
                mmap(
                    std::ptr::null_mut(),
                    len,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::SHARED,
                    fd.as_fd(),
                    offsets[0],
                )
            }?;
            return Self::from_raw(ptr.cast(), len);
        }
        // Several runs: reserve the whole range, then place each run over it with MAP_FIXED.
        // SAFETY: an anonymous PROT_NONE reservation chosen by the kernel aliases nothing.
        let base = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::empty(),
                MapFlags::PRIVATE,
            )
        }?;
        // From here on the reservation is owned by `region` and released on any error.
        let region = Self::from_raw(base.cast(), len)?;
        let mut at = 0usize;
        for (&(fd, _, pages), &offset) in runs.iter().zip(&offsets) {
            let run_len = pages * PAGE_SIZE;
            // SAFETY: `at + run_len <= len`, so the target lies inside our own reservation,
            // which no Rust reference points into; MAP_FIXED replaces exactly those pages of it.
            let placed = unsafe {
                mmap(
                    region.ptr.as_ptr().add(at).cast(),
                    run_len,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::SHARED | MapFlags::FIXED,
                    fd,
                    offset,
                )
            }?;
            debug_assert_eq!(placed as usize, region.ptr.as_ptr() as usize + at);
            at += run_len;
        }
        Ok(region)
    }

    fn from_raw(ptr: *mut u8, len: usize) -> io::Result<Mmap> {
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(Mmap { ptr, len })
    }

    /// Start of the mapping (stable for the life of `self`).
    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The 4-byte word at `offset` as an atomic, or `None` if out of range or misaligned.
    pub(crate) fn u32_at(&self, offset: usize) -> Option<&AtomicU32> {
        if offset % 4 != 0 || offset.checked_add(4)? > self.len {
            return None;
        }
        // SAFETY: in range (checked), 4-aligned (the mapping is page-aligned and `offset % 4 ==
        // 0`), valid while `&self` lives, and the region is only ever accessed atomically.
        Some(unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast()) })
    }

    /// The byte at `offset` as an atomic, or `None` if out of range.
    pub(crate) fn u8_at(&self, offset: usize) -> Option<&AtomicU8> {
        if offset >= self.len {
            return None;
        }
        // SAFETY: in range (checked), valid while `&self` lives, only accessed atomically.
        Some(unsafe { AtomicU8::from_ptr(self.ptr.as_ptr().add(offset)) })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping this handle created and owns; every
        // borrow of it (atomics, views) is tied to `&self`, so none outlives this call.
        if let Err(e) = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) } {
            tracing::warn!(error = %e, "munmap of a simulated page mapping failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn runs_of_several_fds_are_contiguous_and_shared() {
        let a = memfd("t", 2).unwrap();
        let b = memfd("t", 1).unwrap();
        let whole_a = Mmap::map_fd(a.as_fd(), 0, 2).unwrap();
        let whole_b = Mmap::map_fd(b.as_fd(), 0, 1).unwrap();
        let mixed = Mmap::map_pages(&[(b.as_fd(), 0, 1), (a.as_fd(), 1, 1)]).unwrap();
        assert_eq!(mixed.len(), 2 * PAGE_SIZE);
        whole_b.u32_at(8).unwrap().store(7, Ordering::SeqCst);
        whole_a
            .u32_at(PAGE_SIZE + 12)
            .unwrap()
            .store(9, Ordering::SeqCst);
        assert_eq!(mixed.u32_at(8).unwrap().load(Ordering::SeqCst), 7);
        assert_eq!(
            mixed.u32_at(PAGE_SIZE + 12).unwrap().load(Ordering::SeqCst),
            9
        );
        assert!(mixed.u32_at(2 * PAGE_SIZE).is_none());
        assert!(mixed.u32_at(2).is_none());
        assert_eq!(whole_a.u8_at(0).unwrap().load(Ordering::SeqCst), 0);
    }

    #[test]
    fn memfds_are_sealed_against_resizing() {
        let fd = memfd("t", 1).unwrap();
        let map = Mmap::map_fd(fd.as_fd(), 0, 1).unwrap();
        assert!(ftruncate(&fd, 0).is_err());
        assert!(ftruncate(&fd, 2 * PAGE_SIZE as u64).is_err());
        // No seal can be added or removed (F_SEAL_SEAL): not even one that would stop writes.
        assert!(fcntl_add_seals(&fd, SealFlags::FUTURE_WRITE).is_err());
        map.u32_at(PAGE_SIZE - 4)
            .unwrap()
            .store(3, Ordering::SeqCst);
        assert_eq!(fstat(&fd).unwrap().st_size, PAGE_SIZE as i64);
    }

    #[test]
    fn only_sealed_memfds_long_enough_are_mapped() {
        // An unsealed memfd (one a hostile process made itself): a peer could shrink it.
        let unsealed = memfd_create("t", MemfdFlags::CLOEXEC).unwrap();
        ftruncate(&unsealed, PAGE_SIZE as u64).unwrap();
        let e = Mmap::map_fd(unsealed.as_fd(), 0, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        // Sealing allowed but only against growing: still refused.
        let grow_only = memfd_create("t", MemfdFlags::ALLOW_SEALING).unwrap();
        ftruncate(&grow_only, PAGE_SIZE as u64).unwrap();
        fcntl_add_seals(&grow_only, SealFlags::GROW | SealFlags::SEAL).unwrap();
        let e = Mmap::map_fd(grow_only.as_fd(), 0, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        // Not a memfd at all.
        let (pipe, _w) = rustix::pipe::pipe().unwrap();
        let e = Mmap::map_fd(pipe.as_fd(), 0, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        // Sealed, but shorter than the pages asked for (beyond its end would SIGBUS).
        let short = memfd("t", 1).unwrap();
        let e = Mmap::map_fd(short.as_fd(), 0, 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let e = Mmap::map_fd(short.as_fd(), 1, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let other = memfd("t", 1).unwrap();
        let e = Mmap::map_pages(&[(other.as_fd(), 0, 1), (short.as_fd(), 1, 1)]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(Mmap::map_fd(short.as_fd(), 0, 1).is_ok());
    }
}
