//! # pore-xenstore
//!
//! The xenstore wire protocol and a client, for talking to a xenstored (Debian's C
//! `xenstored`, `oxenstored`, or pore's own).
//!
//! * [`codec`]: sans-IO, `no_std` + `alloc`. The 16-byte [`WireHeader`], every message
//!   type, typed [`Request`]s and [`Reply`]s, and an
//!   incremental [`Parser`](codec::Parser) that checks payload lengths (D11) before it
//!   allocates. Error replies are kept by name ([`ErrorName`]), unknown names included.
//! * [`core`]: the sans-IO client state machine (D10): request ids, out-of-order
//!   replies, watch events, the cap on open transactions (D12).
//! * [`ring`]: a minimal accessor-trait view of the xenstore page (offsets, both
//!   indices); the client's ring transport uses `pore_ring::xenstore` instead.
//! * With the `std` feature (default): a multiplexed, thread-safe [`Client`] (every
//!   request has a timeout, 5 s by default, D9), and its transports: unix socket,
//!   the Linux `/dev/xen/xenbus` device, and the shared ring page (`pore_ring::xenstore`)
//!   over any pore-core backend.
//!
//! ```no_run
//! # #[cfg(feature = "std")] {
//! use std::time::Duration;
//! use pore_xenstore::Client;
//!
//! let xs = Client::open_default().unwrap();
//! xs.write("/vm/state", b"running").unwrap();
//! assert_eq!(xs.read("/vm/state").unwrap(), b"running");
//! xs.transaction(|tx| {
//!     let n: u32 = String::from_utf8_lossy(&tx.read("/vm/count")?).parse().unwrap_or(0);
//!     tx.write("/vm/count", (n + 1).to_string().as_bytes())
//! })
//! .unwrap();
//! let v = xs
//!     .wait_for("/vm/ready", |v| v == Some(&b"1"[..]), Duration::from_secs(10))
//!     .unwrap();
//! # }
//! ```
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
