#![doc = include_str!("../README.md")]
//!
//! ## Contents
//!
//! * [`codec`]: the [`WireHeader`], typed [`Request`]s and [`Reply`]s, and an incremental
//!   [`Parser`](codec::Parser) that checks payload lengths (D11) before it allocates. Error
//!   replies are kept by name ([`ErrorName`]), unknown names included.
//! * [`session`]: the sans-IO state machine of one client session (D10): request ids, pending
//!   requests, typed replies, watch events, the cap on open transactions (D12).
//! * With the `std` feature: the client (request timeouts, D9), `transport` and `server`.
//!   The guest ring, on both sides, is `pore_ring::xenstore` (the one audited path to memory
//!   a peer writes) and its doorbell a `pore_core::EventChannel`.
//! * [`Error`] implements `pore_core::Error`: `e.kind()`, `e.is_peer_gone()` work here too.
//!
//! Citations in this crate's comments and docs: `Dn` is decision *n* of the repository's
//! `docs/decisions.md`; `docs/...` paths are relative to the repository's root.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;

pub mod codec;
pub mod error;
pub mod perms;
pub mod session;
pub mod wire;

#[cfg(feature = "std")]
pub mod server;

#[cfg(feature = "std")]
mod client;
#[cfg(feature = "std")]
pub mod transport;

#[cfg(feature = "std")]
pub use client::{Client, Config, Transaction, Watch};
pub use codec::{Message, Reply, Request, WatchEvent};
pub use error::{CodecError, Error, ErrorName};
pub use perms::{Access, Perm};
pub use wire::{Limits, MsgType, WireHeader};
