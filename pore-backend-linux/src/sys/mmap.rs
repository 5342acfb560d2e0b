//! Shared mappings of Xen device files (`mmap`/`munmap`) and the `SharedMemory` promises
//! the crate's page handles make on top of them.
//!
//! A [`Mapping`] is one contiguous `MAP_SHARED` read-write region of a device file: granted
//! pages (gntalloc), a peer's pages (gntdev) or the store page (`/proc/xen/xsd_kva`). Another
//! domain may write it at any time, so it is only ever reached through atomics
//! (`pore_core::SharedView`), never through Rust references to plain data.

use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use pore_core::SharedMemory;
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

use crate::grant::{LinuxGrant, LinuxMapping};
use crate::store::LinuxStorePage;

/// One `MAP_SHARED` read-write mapping of a device file, unmapped on drop (or by
/// [`Mapping::unmap`]).
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    mapped: bool,
}

// SAFETY: the mapping is memory owned by this handle (and shared with a peer domain); every
// access goes through atomics, which are thread-safe, so the handle may move between threads.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`: all access through `&Mapping` is atomic.
unsafe impl Sync for Mapping {}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl Mapping {
    /// Maps `len` bytes of `fd` at byte `offset`, shared and read-write.
    pub(crate) fn map_shared(fd: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: a fresh mapping chosen by the kernel (null hint, no MAP_FIXED) aliases no
        // existing Rust object; `len > 0`; the fd is valid for the call.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                offset,
            )
        }?;
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Mapping {
            ptr,
            len,
            mapped: true,
        })
    }

    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Unmaps now (idempotent). The region must no longer be used: callers only do this while
    /// tearing down the handle that owns the mapping, holding it exclusively.
    pub(crate) fn unmap(&mut self) -> io::Result<()> {
        if !self.mapped {
            return Ok(());
        }
        self.mapped = false;
        // SAFETY: `ptr`/`len` describe a mapping made by `map_shared` and not unmapped yet;
        // the caller holds the owning handle exclusively (`&mut`), so no view borrowed from it
        // is alive, and nothing else refers to the region.
        unsafe { munmap(self.ptr.as_ptr().cast(), self.len) }?;
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Err(e) = self.unmap() {
            tracing::warn!(error = %e, "munmap of a Xen device mapping failed");
        }
    }
}

// SAFETY: the grant owns its `Mapping` for as long as it lives and only unmaps it while being
// consumed (`end_access`, `Drop`); the region is `mmap`ed memory, so its address does not move
// with the handle, and it is valid for `len()` bytes. All access goes through `SharedView`; a
// device mapping is outside every Rust allocation, so `is_foreign` holds.
unsafe impl SharedMemory for LinuxGrant {
    fn as_ptr(&self) -> NonNull<u8> {
        self.mapping().ptr()
    }
    fn len(&self) -> usize {
        self.mapping().len()
    }
    // A gntalloc/gntdev (or xenstore page) mapping: outside every Rust allocation, touched only
    // through pore-core; its ring bodies get the wide volatile copies.
    fn is_foreign(&self) -> bool {
        true
    }
}

// SAFETY: as for `LinuxGrant`: the mapping is owned, stable, valid while the handle lives,
// and unmapped only while the handle is consumed.
unsafe impl SharedMemory for LinuxMapping {
    fn as_ptr(&self) -> NonNull<u8> {
        self.mapping().ptr()
    }
    fn len(&self) -> usize {
        self.mapping().len()
    }
    // A gntalloc/gntdev (or xenstore page) mapping: outside every Rust allocation, touched only
    // through pore-core; its ring bodies get the wide volatile copies.
    fn is_foreign(&self) -> bool {
        true
    }
}

// SAFETY: as for `LinuxGrant`: the store page mapping is owned, stable and valid while the
// handle lives.
unsafe impl SharedMemory for LinuxStorePage {
    fn as_ptr(&self) -> NonNull<u8> {
        self.mapping().ptr()
    }
    fn len(&self) -> usize {
        self.mapping().len()
    }
    // A gntalloc/gntdev (or xenstore page) mapping: outside every Rust allocation, touched only
    // through pore-core; its ring bodies get the wide volatile copies.
    fn is_foreign(&self) -> bool {
        true
    }
}
