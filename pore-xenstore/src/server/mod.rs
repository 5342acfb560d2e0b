//! A xenstored: the node tree with owners and permissions, transactions with C
//! xenstored's conflict detection, watches, per-domain quotas, and domains introduced
//! through a [`DomainConnector`] given by the embedder (D13). It answers like Debian's C
//! `xenstored` 4.17 (reply names included; `reference/xenstored/behaviours.md`).
//!
//! * [`Store`]: the sans-IO core. Feed it request [`Message`](crate::codec::Message)s
//!   per connection, get reply and watch-event bytes per connection back.
//! * [`Server`]: the std layer: a thread per connection, unix-socket listeners, guest
//!   rings reached through a [`DomainConnector`], bounded event queues, clean shutdown.
//!
//! ```no_run
//! use pore_xenstore::server::{Config, Server};
//!
//! let server = Server::new(Config::default(), None);
//! let listener = server.listen_unix("/tmp/xs.sock").unwrap();
//! // ... XENSTORED_PATH=/tmp/xs.sock xenstore-write /a 1 ...
//! server.shutdown();
//! listener.join();
//! ```

mod conn;
mod path;
mod quota;
mod ring;
mod service;
mod store;
mod transaction;
mod tree;
mod unix;
mod watch;

#[cfg(test)]
mod store_tests;

pub use quota::{Config, Quotas};
pub use ring::{GuestEvents, GuestLink, GuestRing, ServerRing};
pub use service::{ConnectError, DomainConnector, Server};
pub use store::{AcceptDomains, DomainHooks, OutKind, Outgoing, Store};
pub use unix::Listener;

/// Identifies one connection of a [`Store`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);
