//! Xen from a bare-metal guest: hypercalls, shared_info event dispatch, the grant table and the xenstore page (not yet implemented).
//!
//! This crate is part of the `pore` family; see the workspace README.
#![cfg_attr(not(feature = "std"), no_std)]
#![cfg_attr(docsrs, feature(doc_cfg))]
