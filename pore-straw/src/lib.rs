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
//! * [`fuzz`]: a deterministic entry point for a cargo-fuzz target.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod endpoint;
pub mod fuzz;
pub mod handshake;
#[cfg(feature = "std")]
pub mod manager;
pub mod ops;
pub mod parse;
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
