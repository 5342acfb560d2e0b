#![doc = include_str!("../README.md")]
//!
//! ## Contents
//!
//! * [`handshake`]: the handshake and close protocol (sans-IO, D10): the seed's keys, paths,
//!   transactions and states for the empty endpoint name, named endpoints (D14), layout
//!   negotiation (D15), formats (D16), the close chart (D17) and narrowed permissions (D18).
//! * [`endpoint`], [`parse`], [`ops`]. With the `fuzzing` feature (for the fuzz targets, not
//!   part of the API), `fuzz`: a deterministic entry point for a cargo-fuzz target.
//! * With `std`: `straw` (the JSON envelope delivered to mailboxes, too) and `manager`, generic
//!   over a small `StoreClient` trait, with two of them: `memstore`, an in-memory xenstore (a
//!   straw without a xenstored, e.g. in tests), and `xenstore` (pore-xenstore's client,
//!   feature `xenstore`); `asynch` (tokio) behind its feature.
//!
//! # How a lost peer is noticed
//!
//! Xen tells nobody when a peer closes its event channel or dies, so a straw learns of it two
//! ways, each within about a second, whichever comes first:
//!
//! * **xenstore**: the manager watches the peer's straw directory; a peer whose state leaves
//!   Connected, or whose directory (or whole domain, removed by the toolstack) disappears, is
//!   [`HandshakeError::PeerGone`].
//! * **the data path** (D8): each side arms unmap-notify on the pore. With the v2 layout the
//!   dying side's unmap clears its live byte in the control page and sends an event, so even a
//!   process of a domain that lives on (its xenstore nodes unchanged) is seen gone. The LING
//!   layout has no spare byte for that: its unmap-notify only sends an event, and a straw that
//!   finds its ring unchanged cannot tell it from a spurious wake-up. On real Xen a LING straw
//!   therefore notices a dead peer *domain* through xenstore, but not a dead peer *process*
//!   of a domain that lives on (its receives and sends time out instead).
//!   `pore_backend_sim::PeerClose::Silent` reproduces exactly that in tests.
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
#[cfg(any(test, feature = "fuzzing"))]
#[cfg_attr(docsrs, doc(cfg(feature = "fuzzing")))]
pub mod fuzz;
pub mod handshake;
#[cfg(feature = "std")]
pub mod manager;
#[cfg(feature = "std")]
pub mod memstore;
#[cfg(any(test, feature = "std"))]
mod memtree;
pub mod ops;
pub mod parse;
#[cfg(feature = "std")]
mod reasm;
#[cfg(feature = "std")]
pub mod straw;
#[cfg(feature = "xenstore")]
pub mod xenstore;

pub use endpoint::{Endpoint, Name, StrawPaths};
pub use handshake::{
    Action, Connection, HandshakeConfig, HandshakeError, Input, Layout, Role, StrawMachine,
};
pub use parse::{Format, XenbusState};

#[cfg(test)]
mod testkit;
