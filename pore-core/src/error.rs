//! The error contract between backends and the crates above them.
//!
//! A backend brings its own error type; the protocol crates only need to *classify* it. They do
//! so through [`Error::kind`], which returns a `#[non_exhaustive]` [`ErrorKind`], and the
//! classifiers built on it ([`Error::is_peer_gone`], [`Error::is_retryable`]).

use core::fmt;

/// What went wrong, as far as a caller of a backend needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The peer domain died, closed its end or unmapped its pages.
    PeerGone,
    /// A wait ran out of time.
    TimedOut,
    /// The operation would block and the caller asked not to.
    WouldBlock,
    /// The caller passed something invalid (a zero page count, a bad offset, ...).
    InvalidInput,
    /// The named object (domain, grant, port, node) does not exist or is not offered to us.
    NotFound,
    /// The hypervisor or the peer refused us access.
    PermissionDenied,
    /// Out of grant entries, ports, memory or quota; may succeed later.
    ResourceExhausted,
    /// The object is still in use (e.g. a grant the peer still maps); retry later.
    Busy,
    /// The peer broke the protocol (an index out of range, a malformed message).
    Protocol,
    /// The object was already closed.
    Closed,
    /// The backend does not offer this capability.
    Unsupported,
    /// An operating-system error without a finer classification.
    Io,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// A short lower-case description.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::PeerGone => "peer gone",
            ErrorKind::TimedOut => "timed out",
            ErrorKind::WouldBlock => "would block",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::NotFound => "not found",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::ResourceExhausted => "resource exhausted",
            ErrorKind::Busy => "busy",
            ErrorKind::Protocol => "protocol violation by the peer",
            ErrorKind::Closed => "closed",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Io => "i/o error",
            ErrorKind::Other => "other error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The trait every backend error implements.
///
/// Besides classifying itself, a backend error can be built from a [`CoreError`]: that is how
/// generic layers (the pore, the rings, the protocol crates) raise a timeout, a protocol
/// violation or an invalid argument in the backend's own error type.
///
/// ```
/// use pore_core::{Error, ErrorKind};
///
/// #[derive(Debug, thiserror::Error)]
/// enum MyError {
///     #[error("my hypervisor said no: {0}")]
///     Hypercall(i32),
///     #[error(transparent)]
///     Core(#[from] pore_core::CoreError),
/// }
///
/// impl Error for MyError {
///     fn kind(&self) -> ErrorKind {
///         match self {
///             MyError::Hypercall(-3) => ErrorKind::NotFound,
///             MyError::Hypercall(_) => ErrorKind::Io,
///             MyError::Core(e) => e.kind(),
///         }
///     }
/// }
/// assert!(!MyError::Hypercall(-3).is_retryable());
/// let timeout = MyError::from(pore_core::CoreError::new(ErrorKind::TimedOut, "waiting"));
/// assert!(timeout.is_retryable());
/// ```
pub trait Error: core::error::Error + From<CoreError> + Send + Sync + 'static {
    /// Classifies the error.
    fn kind(&self) -> ErrorKind;

    /// The peer is gone: its domain died, it closed, or it unmapped our pages.
    fn is_peer_gone(&self) -> bool {
        self.kind() == ErrorKind::PeerGone
    }

    /// Trying again later may succeed (timeouts, busy objects, exhausted resources).
    fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::TimedOut
                | ErrorKind::WouldBlock
                | ErrorKind::Busy
                | ErrorKind::ResourceExhausted
        )
    }
}

/// A ready-made error: a kind plus a static description of what was being done.
///
/// Backends that need nothing richer can use it as their error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{context}: {kind}")]
pub struct CoreError {
    kind: ErrorKind,
    context: &'static str,
}

impl CoreError {
    /// Creates an error of `kind` raised while doing `context`.
    pub const fn new(kind: ErrorKind, context: &'static str) -> Self {
        CoreError { kind, context }
    }

    /// What was being done.
    pub const fn context(&self) -> &'static str {
        self.context
    }
}

impl Error for CoreError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifiers_follow_kind() {
        let gone = CoreError::new(ErrorKind::PeerGone, "notify");
        assert!(gone.is_peer_gone());
        assert!(!gone.is_retryable());
        let busy = CoreError::new(ErrorKind::Busy, "end access");
        assert!(busy.is_retryable());
        assert!(!busy.is_peer_gone());
        assert!(!CoreError::new(ErrorKind::Protocol, "x").is_retryable());
    }

    #[test]
    fn display_names_context_and_kind() {
        let e = CoreError::new(ErrorKind::TimedOut, "waiting for the peer");
        assert_eq!(alloc::format!("{e}"), "waiting for the peer: timed out");
    }
}
