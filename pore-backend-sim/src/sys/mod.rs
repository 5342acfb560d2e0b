//! The operating-system layer: memfd pages and their mappings, the broker's socket. Its `mmap`
//! holds the crate's memory `unsafe` (the only other `unsafe` is `crate::shared`).

pub(crate) mod mmap;
pub(crate) mod socket;
