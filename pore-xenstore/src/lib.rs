#![doc = include_str!("../README.md")]
//!
//! ## Contents
//!
//! * [`codec`]: the [`WireHeader`], typed [`Request`]s and [`Reply`]s, and an incremental
//!   [`Parser`](codec::Parser) that checks payload lengths (D11) before it allocates. Error
//!   replies are kept by name ([`ErrorName`]), unknown names included.
//! * [`core`]: the sans-IO client state machine (D10), with the cap on open transactions (D12).
//! * [`ring`]: a minimal accessor-trait view of the xenstore page (offsets, both indices); the
//!   client's ring transport uses `pore_ring::xenstore` instead.
//! * With the `std` feature: the client (request timeouts, D9), `transport` and `server`.
//!
//! Citations in this crate's comments and docs: `Dn` is decision *n* of the repository's
//! `docs/decisions.md`; `docs/...` paths are relative to the repository's root.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;

pub mod codec;
pub mod core;
pub mod error;
pub mod perms;
pub mod ring;
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
