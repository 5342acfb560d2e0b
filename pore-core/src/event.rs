//! Event channels: the doorbell half of a pore.
//!
//! Waiting is uniform (the seed's open question): every channel can be waited on alone
//! ([`EventChannel::wait`], [`EventChannel::try_wait`]) and many at once with
//! [`Events::select`], which says which fired. Where the backend has an OS readiness handle
//! (an evtchn device fd, an eventfd), [`Events::readiness_fd`] exposes it so pores plug into
//! epoll, mio or tokio.
//!
//! Semantics shared by every backend (D6): a wait consumes the pending event and re-arms
//! (unmasks) the port before returning; spurious wake-ups are allowed, so callers re-check their
//! ring after every wake.

use alloc::vec::Vec;
use core::time::Duration;

use crate::{DomId, Error, Port};

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// An event arrived (possibly spuriously: re-check the shared state).
    Event,
    /// The timeout elapsed with no event.
    Timeout,
}

/// One end of an interdomain event channel.
///
/// Closing is explicit ([`EventChannel::close`]); dropping a channel closes it quietly.
pub trait EventChannel: Send + Sync {
    /// The backend's error type.
    type Error: Error;

    /// Our local port.
    fn port(&self) -> Port;

    /// Signals the peer.
    fn notify(&self) -> Result<(), Self::Error>;

    /// Consumes a pending event without blocking: `true` if one was pending. Re-arms the port.
    fn try_wait(&self) -> Result<bool, Self::Error>;

    /// Blocks until an event arrives or `timeout` elapses. Re-arms the port before returning.
    fn wait(&self, timeout: Duration) -> Result<WaitOutcome, Self::Error>;

    /// Closes the port, reporting any failure (dropping the channel ignores it).
    fn close(self) -> Result<(), Self::Error>
    where
        Self: Sized;
}

/// The event-channel capability of a backend.
pub trait Events {
    /// The backend's error type.
    type Error: Error;
    /// The backend's event channel type.
    type Channel: EventChannel<Error = Self::Error>;

    /// Allocates a port that `remote` may bind to (`EVTCHNOP_alloc_unbound`).
    fn alloc_unbound(&self, remote: DomId) -> Result<Self::Channel, Self::Error>;

    /// Binds to the unbound port `remote_port` that `remote` allocated for us
    /// (`EVTCHNOP_bind_interdomain`).
    fn bind_interdomain(
        &self,
        remote: DomId,
        remote_port: Port,
    ) -> Result<Self::Channel, Self::Error>;

    /// Waits until at least one of `channels` fires or `timeout` elapses.
    ///
    /// `fired` is cleared, then receives the index in `channels` of every channel whose event
    /// was consumed (all those pending); it is empty on timeout. Each fired channel is
    /// re-armed. A channel's error (its peer gone) is returned only when none fired, so no
    /// consumed event is lost. A backend may refuse channels that are not its own
    /// ([`crate::ErrorKind::InvalidInput`]).
    fn select(
        &self,
        channels: &[&Self::Channel],
        timeout: Duration,
        fired: &mut Vec<usize>,
    ) -> Result<(), Self::Error>;

    /// The OS readiness handle of this backend's event device, if it has one: it becomes
    /// readable when any channel of this backend may have fired.
    #[cfg(all(feature = "std", unix))]
    fn readiness_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}

/// Forwards every method to `T`, so that one backend can be shared by reference or by `Arc`
/// (e.g. `Pore<&MyXen>`, or `Pore<Arc<MyXen>>` across threads).
macro_rules! forward_events {
    () => {
        type Error = T::Error;
        type Channel = T::Channel;

        fn alloc_unbound(&self, remote: DomId) -> Result<Self::Channel, Self::Error> {
            (**self).alloc_unbound(remote)
        }
        fn bind_interdomain(
            &self,
            remote: DomId,
            remote_port: Port,
        ) -> Result<Self::Channel, Self::Error> {
            (**self).bind_interdomain(remote, remote_port)
        }
        fn select(
            &self,
            channels: &[&Self::Channel],
            timeout: Duration,
            fired: &mut Vec<usize>,
        ) -> Result<(), Self::Error> {
            (**self).select(channels, timeout, fired)
        }
        #[cfg(all(feature = "std", unix))]
        fn readiness_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
            (**self).readiness_fd()
        }
    };
}

impl<T: Events + ?Sized> Events for &T {
    forward_events!();
}

impl<T: Events + ?Sized> Events for alloc::sync::Arc<T> {
    forward_events!();
}
