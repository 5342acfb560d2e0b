//! [`SharedMemory`] for the handles that own a mapping of shared pages: the crate's only
//! `unsafe` outside `crate::sys`. Each handle owns its [`crate::sys::mmap::Mmap`] (never
//! replaced, unmapped only when the handle drops), and the crate touches the pages only
//! atomically (through `Mmap`'s accessors or pore-core's `SharedView`).

use std::ptr::NonNull;

use pore_core::SharedMemory;

use crate::pages::{SimGrant, SimMapping, SimStorePage};

// SAFETY: the mapping is owned by this handle and stable until it drops (an `mmap` region, so
// its address does not move with the handle); the simulator and the peer only touch it
// atomically, and this crate hands it out only as `SharedView`s.
unsafe impl SharedMemory for SimGrant {
    fn as_ptr(&self) -> NonNull<u8> {
        self.mapping().ptr()
    }
    fn len(&self) -> usize {
        self.mapping().len()
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
}

// SAFETY: as for `SimGrant`: an owned, stable mapping only accessed atomically.
unsafe impl SharedMemory for SimStorePage {
    fn as_ptr(&self) -> NonNull<u8> {
        self.mapping().ptr()
    }
    fn len(&self) -> usize {
        self.mapping().len()
    }
}
