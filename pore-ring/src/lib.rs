#![doc = include_str!("../README.md")]
//!
//! ## Rings and publication
//!
//! Modules: [`xenstore`], [`ling`], [`v2`], [`frame`], [`wait`], [`window`] (in-place access).
//!
//! Every ring half implements pore-core's [`RingWriter`] or [`RingReader`] (re-exported here,
//! with their error type [`RingError`]); each full ring implements [`SharedRing`] and splits
//! into a writer and a reader usable from two threads. Publication has three speeds
//! (`write`, `write_deferred` + `publish`, `write_deferred` + `commit`, and the same on the
//! reading side): see [`pore_core::RingWriter`].
//!
//! The peer is untrusted (`docs/protocol-facts.md` §6): each index it controls is read once per
//! operation and validated; a bad one breaks the ring ([`RingError`] of kind `Protocol`), never
//! panics and never leads to an access outside the ring.
//!
//! Citations in this crate's comments and docs: `Dn` is decision *n* of the repository's
//! `docs/decisions.md`; `docs/...` paths are relative to the repository's root.
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;
#[cfg(any(feature = "std", loom, test))]
extern crate std;

pub mod blocking;
mod error;
pub mod frame;
mod free;
pub mod ling;
#[cfg(loom)]
pub mod loom_access;
pub mod on_pore;
pub mod spin;
pub mod v2;
pub mod wait;
pub mod window;
pub mod xenstore;

pub use error::RingError;
pub use free::{ByteConsumer, ByteProducer};
pub use on_pore::{OpenError, PoreRing};

/// Which side of a straw ring (LING or v2) we are. The pair used across pore's API (see
/// `docs/glossary.md` for the other names the two sides go by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The granting side (`pore_straw:open/1`; strawman's listener): it grants the pages and
    /// allocates the unbound port. LING: writes `output`, reads `input`; v2: writes a2p, reads
    /// p2a.
    Active,
    /// The mapping side (`pore_straw:open/3`; strawman's opener): it maps the peer's pages and
    /// binds to its port. LING: writes `input`, reads `output`; v2: writes p2a, reads a2p.
    Passive,
}

/// The ring traits, for `use pore_ring::prelude::*;` (their methods need them in scope).
pub mod prelude {
    pub use pore_core::{RingReader, RingWriter, SharedRing};
}
pub use pore_core::{RingReader, RingWriter, SharedRing};

#[cfg(test)]
mod testutil;

/// The repository README's examples, run as doctests.
#[cfg(all(doctest, feature = "std"))]
#[doc = include_str!("../../README.md")]
pub struct RepositoryReadme;
