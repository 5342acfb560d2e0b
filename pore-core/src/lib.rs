#![doc = include_str!("../README.md")]
//!
//! ## Contents
//!
//! * ids and page constants ([`DomId`], [`Port`], [`GrantRef`], [`PAGE_SIZE`]);
//! * an error contract that lets a backend bring its own error type ([`Error`], [`ErrorKind`]);
//! * the backend capability traits, split by capability: event channels ([`Events`],
//!   [`EventChannel`]), granting pages ([`Grants`]), mapping a peer's pages ([`Maps`]) and the
//!   domain's own xenstore page ([`StoreAccess`]), bundled as [`Backend`];
//! * [`Pore`]: pages + one event channel, opened active, passive or pre-existing;
//! * the ring traits the rings of `pore-ring` implement ([`RingWriter`], [`RingReader`],
//!   [`SharedRing`]);
//! * [`shared`]: the one audited way to touch memory a peer can write.
//!
//! With the `test-utils` feature, [`loopback`] provides a tiny in-memory backend for doc
//! examples and first tests.
//!
//! ## Writing a backend
//!
//! A backend is one type with the four capabilities, [`Events`], [`Grants`], [`Maps`] and
//! [`StoreAccess`], sharing one error type; it is then a [`Backend`], and [`Pore`] and every
//! crate above it run on it. This crate's `examples/custom_backend.rs` is a complete one to copy
//! (in memory, two domains in one process). The others are `pore-backend-linux` (Xen from Linux
//! user space), `pore-backend-sim` (a simulated Xen) and [`loopback`]. To share one backend
//! between pores or threads, pass `&backend` or an `Arc` of it: the four traits are implemented
//! for both.
//!
//! The checklist (the existing backends meet it; where they differ, both ways are allowed):
//!
//! **Errors**
//! * One error type implementing [`Error`]: a [`kind`](Error::kind) that the layers above act
//!   on, and `From<CoreError>`, through which they raise their own errors (timeouts, protocol
//!   violations) in it. [`CoreError`] itself does if nothing richer is needed.
//! * The kinds: `InvalidInput` for a bad request (zero pages, say); `NotFound` for a grant or
//!   port that does not exist; `PermissionDenied` for one offered to another domain (where the
//!   backend can tell: on Linux such a map is `NotFound`); `Busy` for pages the peer still
//!   maps; `PeerGone` when the backend knows that the peer closed or died; `Closed` for a
//!   handle already closed; `Unsupported` for what the backend does not offer;
//!   `ResourceExhausted` for a limit that may free up. See [`ErrorKind`].
//! * No panic on anything a peer can cause, nor on a bad request to the backend, in `Drop`
//!   least of all: either is an error of the right kind. Every wait is bounded by its timeout.
//!
//! **Memory** ([`Grants`], [`Maps`], [`SharedMemory`])
//! * [`Grants::grant`] allocates fresh pages, **zeroed** (a recycled page would show the peer
//!   its old contents, XSA-403) and **contiguous** in our address space, one [`GrantRef`] per
//!   page, in page order.
//! * Every region handed out starts **page-aligned** ([`PAGE_SIZE`], 4096 bytes) and is a whole
//!   number of pages. It keeps its address for the handle's whole life, even when the handle
//!   moves (memory from `mmap` or the heap, never inline in the handle), and is only touched
//!   atomically: that is the contract of [`SharedMemory`], the one `unsafe impl` a backend
//!   needs.
//! * [`Maps::map`] maps every ref given, contiguously and in the order given, or fails: never in
//!   part. It must accept all the refs of one grant in page order (what [`Pore::open_passive`]
//!   passes). A map it cannot place contiguously (a subset of a grant, another order, refs of
//!   several grants) it may refuse with `Unsupported`: [`loopback`] maps whole grants only,
//!   `pore-backend-sim` runs of pages of up to 64 grants, Linux any refs. No refs at all is
//!   `InvalidInput`.
//! * Ending access to pages the peer still maps ([`GrantedPages::end_access`], or dropping the
//!   handle) never frees them under the peer (XSA-396; D7). A backend that can tell fails with
//!   `Busy` and keeps the pages on a revoke-later list until the peer's last unmap
//!   (`pore-backend-sim`, [`loopback`]); one that cannot tell returns `Ok`, the layer below
//!   deferring them (Linux, whose kernel does). Dropping the handle defers quietly. Where the
//!   backend sees deferred pages, its accounting reports them, and it refuses to map them anew
//!   (`NotFound`).
//! * Unmap-notify ([`UnmapNotify`], D8): armed on either handle, it fires whenever our side of
//!   the pages goes away (ended, unmapped, dropped, or our process or domain dead): the byte is
//!   cleared in the shared pages, then the port (one of ours) is signalled. A backend that
//!   cannot do it refuses with `Unsupported` ([`loopback`]), never accepts and ignores it.
//!
//! **Events** ([`Events`], [`EventChannel`])
//! * [`Events::alloc_unbound`] offers a port to one domain; only that one may
//!   [bind](Events::bind_interdomain) it.
//! * A wait ([`wait`](EventChannel::wait), [`try_wait`](EventChannel::try_wait),
//!   [`select`](Events::select)) **consumes** the pending event and **re-arms** (unmasks) the
//!   port before returning, so the next notify is never lost; notifies sent before a wait may
//!   merge into one event (D6).
//! * **Spurious wake-ups are allowed**: a wait may report an event with nothing new behind it;
//!   callers re-check their ring after every wake-up.
//! * Running out of time is `Ok(WaitOutcome::Timeout)` (for `select`, an empty `fired`), not an
//!   error.
//! * [`Events::select`] clears `fired`, then reports every channel whose event it consumed (all
//!   of those pending, not just the first), each re-armed. A channel's error (its peer gone) is
//!   returned only when none fired, so no consumed event is lost. It may refuse channels of
//!   another instance or domain of the backend (`InvalidInput`).
//! * A peer that closed or died: an event it sent before is still delivered; then the backend
//!   reports `PeerGone` if it knows (`pore-backend-sim` by default, [`loopback`]) or, as Xen
//!   does, nothing (notifies are dropped, waits time out). Protocols learn of a dead peer from
//!   xenstore or unmap-notify, never from events alone.
//! * `close` reports failures; dropping a channel closes it quietly. Channels and pages are
//!   `Send + Sync`, and several threads may wait on different channels at once.
//! * [`Events::readiness_fd`] (optional) is a descriptor that becomes readable when a channel of
//!   the backend may have fired, for epoll, mio or tokio.
//!
//! **The store** ([`StoreAccess`]): `open_store` returns the domain's xenstore page and a
//! channel bound to the store's port, the pre-existing pore (closing it unmaps nothing). A
//! backend without one uses [`NoStore`] and returns `Unsupported`.
//!
//! Citations in this crate's comments and docs: `Dn` is decision *n* of the repository's
//! `docs/decisions.md`; `docs/...` paths are relative to the repository's root.
#![cfg_attr(not(feature = "std"), no_std)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;

mod backend;
mod error;
mod event;
mod ids;
mod memory;
mod pore;
mod ring;
pub mod shared;
mod store;

// Documented even without the feature (docs.rs and `cargo doc` show it, labelled), compiled
// into normal builds only with it.
#[cfg(any(feature = "test-utils", all(doc, not(doctest), feature = "std")))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-utils")))]
pub mod loopback;

pub use backend::{Backend, BackendError};
pub use error::{CoreError, Error, ErrorKind};
pub use event::{EventChannel, Events, WaitOutcome};
pub use ids::{DomId, GrantRef, Port, PAGE_SHIFT, PAGE_SIZE};
pub use memory::{GrantedPages, Grants, MappedPages, Maps, UnmapNotify};
pub use pore::{Pore, PoreInfo, PoreRole};
pub use ring::{RingReader, RingWriter, SharedRing};
pub use shared::{SharedAccess, SharedMemory, SharedView};
pub use store::{NoStore, StoreAccess};
