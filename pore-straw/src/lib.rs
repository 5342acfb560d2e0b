//! The strawman channel: two domains negotiate a pore through xenstore and exchange framed messages (filled in by the pore-straw issue).
//!
//! This crate is part of the `pore` family; see the workspace README.
#![cfg_attr(not(feature = "std"), no_std)]
