//! A xenstored: the node tree with owners and permissions, transactions with C
//! xenstored's conflict detection, watches, per-domain quotas, and domains introduced
//! through a [`DomainConnector`] given by the embedder (D13). It answers like Debian's C
//! `xenstored` 4.17 (reply names included; `docs/xenstored-behaviours.md`).
//!
//! * [`Store`]: the sans-IO core. Feed it request [`Message`](crate::codec::Message)s
//!   per connection, get reply and watch-event bytes per connection back.
//! * [`Server`]: the std layer: one event loop serving every unix socket and every guest
//!   ring whose [`GuestLink`] has a [`GuestReadiness`] (D25), a thread per other guest ring,
//!   guest rings reached through a [`DomainConnector`], bounded event queues, clean shutdown.
//!
//! Guests reach it in two ways: a [`DomainConnector`] given to [`Server::new`] maps a
//! guest's ring when dom0 sends `INTRODUCE` (D13), or the embedder (the simulator's
//! toolstack, D19) calls [`Server::introduce_domain`] with a [`GuestLink`] it already
//! has (`GuestLink::from_pore(page, channel)` over pore-core memory and event channels;
//! the ring is `pore_ring::xenstore`'s server side). [`Server::release_domain`] is
//! domain death.
//!
//! Known differences from C xenstored 4.17: a path without its NUL gets `EINVAL` (C reads
//! past the buffer); CONTROL knows only `help`; no `-K`, live update or outstanding-request
//! quota (requests are handled one at a time per connection, and a connection whose
//! replies cannot be delivered is not read); the memory quota only counts what a
//! connection's transactions hold and answers `ENOMEM` (C counts more and stops reading
//! the ring); a SET_PERMS owner need not exist, and an entry naming a domain not (yet)
//! introduced counts (C asks the hypervisor, and ignores entries naming a domain that
//! does not exist); DIRECTORY_PART generations are our own numbers. Entries naming a
//! released domain are ignored from its release on, in the tree and in open
//! transactions' copies (C decides by generation when it reads a node, but commits a
//! transaction's copy unchecked). RELEASE of the target of a stub domain releases it and
//! ends the relation (C acknowledges it but keeps the domain introduced until a second
//! RELEASE). A watch event over 4096 bytes is not sent, as in C, but also counted
//! ([`Store::oversized_events_dropped`]). The differential test (random sequences over sockets and a guest
//! ring, compared with C) passes 6000 steps; longer runs end when C itself aborts
//! (`consider_message: Assertion 'conn->in == NULL'`).
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
mod event_loop;
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
pub use ring::{GuestLink, GuestReadiness};
pub use service::{DomainConnector, Server};
#[cfg(feature = "fuzzing")]
pub use store::fuzzing;
pub use store::{AcceptDomains, DomainHooks, OutKind, Outgoing, Store};
pub use unix::Listener;

/// Identifies one connection of a [`Store`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);
