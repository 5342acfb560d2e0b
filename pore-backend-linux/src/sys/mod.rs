//! The operating-system layer: the only modules of the crate with `unsafe` (ioctls and
//! `mmap`/`munmap`), each block with its `// SAFETY:` argument.

pub(crate) mod ioctl;
pub(crate) mod mmap;
