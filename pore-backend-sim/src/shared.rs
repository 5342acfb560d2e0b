//! [`SharedMemory`] for the handles that own a mapping of shared pages: the crate's only
//! `unsafe` outside `crate::sys`. Each handle owns its [`crate::sys::mmap::Mmap`] (never
//! replaced, unmapped only when the handle drops), and the crate touches the pages only
//! atomically (through `Mmap`'s accessors or pore-core's `SharedView`).

use std::ptr::NonNull;

use pore_core::SharedMemory;

use crate::pages::{SimGrant, SimMapping, SimStorePage};

// SAFETY: the mapping is owned by this handle and stable until it drops (an `mmap` region, so
// its address does not move with the handle); the simulator touches only control words, with
// atomics, and hands the mapping out only as `SharedView`s. A `memfd` mapping is outside every
// Rust allocation, so `is_foreign` holds.
unsafe impl SharedMemory for SimGrant {
    fn as_ptr(&self) -> NonNull<u8> {
        self.mapping().ptr()
    }
    fn len(&self) -> usize {
        self.mapping().len()
    }
    // A shared `memfd` mapping: outside every Rust allocation, touched only through pore-core and
    // control-word atomics of the simulator; its ring bodies get the wide volatile copies.
    fn is_foreign(&self) -> bool {
        true
    }
}

// SAFETY: as for `SimGrant`: an owned, stable mapping only accessed atomically.
unsafe impl SharedMemory for SimMapping {
    fn as_ptr(&self) -> NonNull<u8> {
        self.mapping().ptr()
    }
    fn len(&self) -> usize {
        self.mapping().len()
    }
    // A shared `memfd` mapping: outside every Rust allocation, touched only through pore-core and
    // control-word atomics of the simulator; its ring bodies get the wide volatile copies.
    fn is_foreign(&self) -> bool {
        true
    }
}

// SAFETY: as for `SimGrant`: an owned, stable mapping only accessed atomically.
unsafe impl SharedMemory for SimStorePage {
    fn as_ptr(&self) -> NonNull<u8> {
        self.mapping().ptr()
    }
    fn len(&self) -> usize {
        self.mapping().len()
    }
    // A shared `memfd` mapping: outside every Rust allocation, touched only through pore-core and
    // control-word atomics of the simulator; its ring bodies get the wide volatile copies.
    fn is_foreign(&self) -> bool {
        true
    }
}
