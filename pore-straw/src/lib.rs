//! # pore-straw
//!
//! The strawman channel of the LING project, in Rust: two Xen domains find each other through
//! xenstore and exchange framed messages over a pore (shared pages plus one event channel).
//!
//! * [`handshake`]: the xenstore handshake and close protocol as a sans-IO state machine
//!   (`no_std` + `alloc`, D10): exactly the seed's keys, paths, transactions and states for the
//!   empty endpoint name, named endpoints (D14), layout negotiation (D15), formats (D16), the
//!   close chart (D17) and narrowed permissions (D18).
//! * [`endpoint`]: endpoints `(domid, name)` and their paths; [`parse`]: strict parsers for every
//!   value a peer writes; [`ops`]: the xenstore operations the machine asks for.
//! * [`fuzz`]: a deterministic entry point for a cargo-fuzz target
//!   ([`fuzz::drive_handshake`]).
//!
//! With the `std` feature (default):
//!
//! * [`straw`]: [`straw::Straw`], frames ([`bytes::Bytes`]) over a LING or v2 ring from
//!   `pore-ring`: blocking with timeouts or not at all, split into a sender and a receiver,
//!   frames larger than the ring streamed, the JSON envelope delivered to mailboxes, a close
//!   that drains first, peer-loss detection;
//! * [`manager`]: [`manager::Manager`], one per endpoint, a thread per straw, generic over a
//!   small [`manager::StoreClient`] trait;
//! * `xenstore` (feature `xenstore`): `XsAdapter`, the `StoreClient` of pore-xenstore's
//!   client;
//! * `asynch` (feature `tokio`): a straw's halves bridged to tokio channels.
//!
//! # How a lost peer is noticed
//!
//! Xen tells nobody when a peer closes its event channel or dies, so a straw learns of it two
//! ways, each within about a second, whichever comes first:
//!
//! * **xenstore**: the manager watches the peer's straw directory; a peer whose state leaves
//!   Connected, or whose directory (or whole domain, removed by the toolstack) disappears, is
//!   [`StrawError::PeerGone`].
//! * **the data path** (D8): each side arms unmap-notify on the pore. With the v2 layout the
//!   dying side's unmap clears its live byte in the control page and sends an event, so even a
//!   process of a domain that lives on (its xenstore nodes unchanged) is seen gone. The LING
//!   layout has no spare byte for that: its unmap-notify only sends an event, and a straw that
//!   finds its ring unchanged cannot tell it from a spurious wake-up. On real Xen a LING straw
//!   therefore notices a dead peer *domain* through xenstore, but not a dead peer *process*
//!   of a domain that lives on (its receives and sends time out instead).
//!   `pore_backend_sim::PeerClose::Silent` reproduces exactly that in tests.
//!
//! ```no_run
//! # #[cfg(feature = "xenstore")] {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use bytes::Bytes;
//! use pore_core::DomId;
//! use pore_straw::manager::{Manager, ManagerConfig};
//! use pore_straw::xenstore::XsAdapter;
//! use pore_straw::Endpoint;
//!
//! # fn backend() -> pore_core::loopback::LoopbackDomain { unimplemented!() }
//! let xs = XsAdapter::new(Arc::new(pore_xenstore::Client::open_default().unwrap()));
//! let me = Endpoint::new(DomId(1), "chat").unwrap();
//! let m = Manager::start(backend(), xs, me, ManagerConfig::default()).unwrap();
//! let straw = m.open(&Endpoint::new(DomId(2), "chat").unwrap()).unwrap();
//! straw.sender().send(Bytes::from_static(b"hello")).unwrap();
//! let reply = straw.receiver().recv_timeout(Duration::from_secs(5)).unwrap();
//! straw.close().unwrap();
//! # let _ = reply; }
//! ```
//!
//! Citations in this crate's comments and docs: `Dn` is decision *n* of the repository's
//! `docs/decisions.md`; `docs/...` paths are relative to the repository's root.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;

#[cfg(feature = "tokio")]
pub mod asynch;
pub mod endpoint;
pub mod fuzz;
pub mod handshake;
#[cfg(feature = "std")]
pub mod manager;
pub mod ops;
pub mod parse;
#[cfg(feature = "std")]
mod reasm;
#[cfg(feature = "std")]
mod spin;
#[cfg(feature = "std")]
pub mod straw;
#[cfg(feature = "xenstore")]
pub mod xenstore;

pub use endpoint::{Endpoint, Name, StrawPaths};
pub use handshake::{Action, Config, Connection, Input, Layout, Role, StrawError, StrawMachine};
pub use parse::{Format, XenbusState};

#[cfg(all(test, feature = "std"))]
mod manager_tests;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
