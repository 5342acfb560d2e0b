//! The operating-system layer: the only modules of the crate with `unsafe`.

pub(crate) mod mmap;
pub(crate) mod socket;
