//! The errors of a straw's data path.
//!
//! [`StrawError`] implements [`pore_core::Error`]: [`pore_core::Error::is_peer_gone`] and
//! [`pore_core::Error::is_retryable`] work on it as on a backend's error. A backend's error is
//! kept, whole, as the [source](core::error::Error::source) of [`StrawError::Backend`].

use std::string::String;
use std::sync::Arc;

use pore_core::{CoreError, ErrorKind};
use pore_ring::RingError;

use crate::handshake::HandshakeError;

/// Why a straw operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrawError {
    /// The timeout elapsed.
    #[error("timed out")]
    TimedOut,
    /// A non-blocking call could not proceed now.
    #[error("would block")]
    WouldBlock,
    /// A send timed out after its frame began: the frame stays queued and is finished by the
    /// next send or flush (do not send it again).
    #[error("timed out with the frame partly sent (it stays queued)")]
    Queued,
    /// The peer closed the straw (or finished its sending direction) and everything it sent
    /// has been received.
    #[error("end of stream: the peer closed the straw")]
    Eof,
    /// We closed the straw.
    #[error("the straw is closed")]
    Closed,
    /// The peer died, vanished from xenstore or unmapped the pages.
    #[error("peer gone")]
    PeerGone,
    /// The peer broke the ring protocol (the straw is dead).
    #[error("ring: {0}")]
    Ring(#[source] RingError),
    /// The backend failed; its error is the source.
    #[error("backend: {0}")]
    Backend(#[source] BackendError),
    /// A frame longer than [`super::StrawConfig::max_frame`].
    #[error("frame of {0} bytes exceeds the maximum")]
    TooLarge(usize),
    /// A message that cannot be encoded as JSON.
    #[error("json: {0}")]
    Json(String),
    /// The handshake or close protocol failed.
    #[error("strawman: {0}")]
    Handshake(#[source] HandshakeError),
}

impl StrawError {
    /// A backend's error: [`StrawError::PeerGone`] if it says the peer is gone, else
    /// [`StrawError::Backend`] holding it.
    pub(crate) fn backend<E: pore_core::Error>(e: E) -> Self {
        if e.is_peer_gone() {
            return StrawError::PeerGone;
        }
        StrawError::Backend(BackendError::new(e))
    }
}

/// [`ErrorKind::TimedOut`], [`ErrorKind::WouldBlock`], [`ErrorKind::PeerGone`] and
/// [`ErrorKind::Closed`] for the variants of those names, [`ErrorKind::Closed`] for
/// [`StrawError::Eof`] too, the kind of the ring's, backend's or handshake's error, and
/// [`ErrorKind::InvalidInput`] for a frame or message we cannot send.
impl pore_core::Error for StrawError {
    fn kind(&self) -> ErrorKind {
        match self {
            StrawError::TimedOut | StrawError::Queued => ErrorKind::TimedOut,
            StrawError::WouldBlock => ErrorKind::WouldBlock,
            StrawError::Eof | StrawError::Closed => ErrorKind::Closed,
            StrawError::PeerGone => ErrorKind::PeerGone,
            StrawError::Ring(e) => e.kind(),
            StrawError::Backend(e) => e.kind(),
            StrawError::TooLarge(_) | StrawError::Json(_) => ErrorKind::InvalidInput,
            StrawError::Handshake(e) => e.kind(),
        }
    }
}

/// A generic layer's error: the variant of its kind where there is one, else
/// [`StrawError::Backend`] holding it.
impl From<CoreError> for StrawError {
    fn from(e: CoreError) -> Self {
        use pore_core::Error as _;
        match e.kind() {
            ErrorKind::TimedOut => StrawError::TimedOut,
            ErrorKind::WouldBlock => StrawError::WouldBlock,
            ErrorKind::PeerGone => StrawError::PeerGone,
            ErrorKind::Closed => StrawError::Closed,
            _ => StrawError::Backend(BackendError::new(e)),
        }
    }
}

impl From<RingError> for StrawError {
    fn from(e: RingError) -> Self {
        StrawError::Ring(e)
    }
}

impl From<HandshakeError> for StrawError {
    fn from(e: HandshakeError) -> Self {
        StrawError::Handshake(e)
    }
}

/// A backend's error inside a [`StrawError`]: shared (so that the straw error stays `Clone`),
/// classified by its [`ErrorKind`], displayed as the backend displays it, and reachable
/// whole through [`BackendError::get_ref`] (e.g. to downcast it to the backend's type).
///
/// Two are equal when one is a clone of the other.
#[derive(Clone)]
pub struct BackendError {
    kind: ErrorKind,
    error: Arc<dyn core::error::Error + Send + Sync + 'static>,
}

impl BackendError {
    /// Wraps a backend's error.
    pub fn new<E: pore_core::Error>(e: E) -> Self {
        BackendError {
            kind: e.kind(),
            error: Arc::new(e),
        }
    }

    /// The backend's error itself.
    ///
    /// ```
    /// use pore_core::{CoreError, ErrorKind};
    /// use pore_straw::straw::BackendError;
    ///
    /// let e = BackendError::new(CoreError::new(ErrorKind::Busy, "revoking a grant"));
    /// let inner = e.get_ref().downcast_ref::<CoreError>().unwrap();
    /// assert_eq!(inner.context(), "revoking a grant");
    /// ```
    pub fn get_ref(&self) -> &(dyn core::error::Error + Send + Sync + 'static) {
        &*self.error
    }
}

impl core::fmt::Debug for BackendError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(&*self.error, f)
    }
}

impl core::fmt::Display for BackendError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(&*self.error, f)
    }
}

/// Transparent: the backend error's own source.
impl core::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        self.error.source()
    }
}

impl PartialEq for BackendError {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.error, &other.error)
    }
}

impl Eq for BackendError {}

impl pore_core::Error for BackendError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl From<CoreError> for BackendError {
    fn from(e: CoreError) -> Self {
        BackendError::new(e)
    }
}

#[cfg(test)]
mod tests {
    use pore_core::{CoreError, Error as _, ErrorKind};

    use super::*;

    #[test]
    fn every_layer_classifies_a_lost_peer() {
        let gone = CoreError::new(ErrorKind::PeerGone, "waiting");
        assert!(StrawError::backend(gone).is_peer_gone());
        assert!(StrawError::from(gone).is_peer_gone());
        assert!(StrawError::Handshake(HandshakeError::PeerGone).is_peer_gone());
        assert!(StrawError::Handshake(HandshakeError::PeerClosed).is_peer_gone());
        assert!(!StrawError::TimedOut.is_peer_gone());
        assert!(StrawError::TimedOut.is_retryable());
        assert!(StrawError::Queued.is_retryable());
    }

    #[test]
    fn a_backend_error_stays_the_source() {
        let busy = CoreError::new(ErrorKind::Busy, "revoking");
        let e = StrawError::backend(busy);
        assert_eq!(e.kind(), ErrorKind::Busy);
        let StrawError::Backend(inner) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(inner.get_ref().downcast_ref::<CoreError>(), Some(&busy));
        let src = core::error::Error::source(&e).unwrap();
        assert_eq!(src.to_string(), busy.to_string());
        assert_eq!(e.clone(), e);
        assert_ne!(StrawError::backend(busy), e);
    }
}
