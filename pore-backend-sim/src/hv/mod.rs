//! The simulated hypervisor: domains, grant tables, event channels and their accounting.
//!
//! All bookkeeping sits behind one mutex; the fast paths (notify, wait, touching pages) never
//! come here. Every request is checked against Xen's rules and refused with an error, never a
//! panic, whatever a caller or a domain process sends.
//!
//! [`state`] holds the records and the lock; [`ports`] and [`grants`] work on them,
//! [`toolstack`] sets up dom0's store connections (with [`ports`]), [`domains`] creates and
//! releases domains (with all three), [`requests`] dispatches a domain's requests (to
//! [`ports`] and [`grants`]), [`accounting`] counts what is held.

mod accounting;
mod domains;
mod grants;
mod ports;
mod requests;
mod state;
mod toolstack;

pub use accounting::Outstanding;
pub use state::PeerClose;
pub(crate) use state::{CtxId, Hv, StoreHook, StoreParts, DOMAIN_CTX};
