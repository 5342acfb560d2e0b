#![doc = include_str!("../README.md")]
//!
//! ## Contents
//!
//! * ids and page constants ([`DomId`], [`Port`], [`GrantRef`], [`PAGE_SIZE`]);
//! * an error contract that lets a backend bring its own error type ([`Error`], [`ErrorKind`]);
//! * the backend capability traits, split by capability: event channels ([`Events`],
//!   [`EventChannel`]), granting pages ([`Grants`]), mapping a peer's pages ([`Maps`]) and the
//!   domain's own xenstore page ([`StoreAccess`]), bundled as [`Backend`];
//! * [`Pore`]: pages + one event channel, opened active, passive or pre-existing;
//! * [`SharedRing`]: the trait the rings of `pore-ring` implement;
//! * [`shared`]: the one audited way to touch memory a peer can write.
//!
//! With the `test-utils` feature, `loopback` provides a tiny in-memory backend for doc
//! examples and first tests.
//!
//! Citations in this crate's comments and docs: `Dn` is decision *n* of the repository's
//! `docs/decisions.md`; `docs/...` paths are relative to the repository's root.
#![cfg_attr(not(feature = "std"), no_std)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;

mod backend;
mod error;
mod event;
mod ids;
mod memory;
mod pore;
mod ring;
pub mod shared;
mod store;

// Documented even without the feature (docs.rs and `cargo doc` show it, labelled), compiled
// into normal builds only with it.
#[cfg(any(feature = "test-utils", all(doc, not(doctest), feature = "std")))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-utils")))]
pub mod loopback;

pub use backend::{Backend, BackendError};
pub use error::{CoreError, Error, ErrorKind};
pub use event::{EventChannel, Events, WaitOutcome};
pub use ids::{DomId, GrantRef, Port, PAGE_SHIFT, PAGE_SIZE};
pub use memory::{GrantedPages, Grants, MappedPages, Maps, UnmapNotify};
pub use pore::{Pore, PoreInfo, PoreRole};
pub use ring::{Interest, SharedRing};
pub use shared::{SharedAccess, SharedMemory, SharedView};
pub use store::{NoStore, StoreAccess};
