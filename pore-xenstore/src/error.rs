//! Errors: the daemon's error replies by name, codec errors and client errors.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use core::fmt;

use pore_core::{CoreError, ErrorKind};

/// The errno *name* carried by an `ERROR` reply (`xsd_errors[]`, plus oxenstored's `EQUOTA`).
///
/// Names this crate does not know are kept as [`ErrorName::Other`], never rejected.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // errno names
pub enum ErrorName {
    EINVAL,
    EACCES,
    EEXIST,
    EISDIR,
    ENOENT,
    ENOMEM,
    ENOSPC,
    EIO,
    ENOTEMPTY,
    ENOSYS,
    EROFS,
    EBUSY,
    EAGAIN,
    EISCONN,
    E2BIG,
    EPERM,
    /// oxenstored only (quota exceeded).
    EQUOTA,
    /// A name this crate does not know, kept verbatim.
    Other(String),
}

impl ErrorName {
    /// Parses a name (without its NUL).
    pub fn from_name(name: &str) -> Self {
        use ErrorName::*;
        match name {
            "EINVAL" => EINVAL,
            "EACCES" => EACCES,
            "EEXIST" => EEXIST,
            "EISDIR" => EISDIR,
            "ENOENT" => ENOENT,
            "ENOMEM" => ENOMEM,
            "ENOSPC" => ENOSPC,
            "EIO" => EIO,
            "ENOTEMPTY" => ENOTEMPTY,
            "ENOSYS" => ENOSYS,
            "EROFS" => EROFS,
            "EBUSY" => EBUSY,
            "EAGAIN" => EAGAIN,
            "EISCONN" => EISCONN,
            "E2BIG" => E2BIG,
            "EPERM" => EPERM,
            "EQUOTA" => EQUOTA,
            other => Other(String::from(other)),
        }
    }

    /// The wire name.
    pub fn as_str(&self) -> &str {
        use ErrorName::*;
        match self {
            EINVAL => "EINVAL",
            EACCES => "EACCES",
            EEXIST => "EEXIST",
            EISDIR => "EISDIR",
            ENOENT => "ENOENT",
            ENOMEM => "ENOMEM",
            ENOSPC => "ENOSPC",
            EIO => "EIO",
            ENOTEMPTY => "ENOTEMPTY",
            ENOSYS => "ENOSYS",
            EROFS => "EROFS",
            EBUSY => "EBUSY",
            EAGAIN => "EAGAIN",
            EISCONN => "EISCONN",
            E2BIG => "E2BIG",
            EPERM => "EPERM",
            EQUOTA => "EQUOTA",
            Other(s) => s,
        }
    }

    /// True for the replies that mean "over a quota" in either daemon
    /// (C: ENOSPC, E2BIG for watches; O: EQUOTA).
    pub fn is_quota(&self) -> bool {
        matches!(
            self,
            ErrorName::ENOSPC | ErrorName::EQUOTA | ErrorName::E2BIG
        )
    }
}

impl fmt::Display for ErrorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message that cannot be framed, encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A header announces more payload than the limit allows (checked before allocating).
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Announced or requested length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A message type this crate does not know.
    #[error("unknown message type {0}")]
    UnknownType(u32),
    /// A reply whose type matches neither the request nor ERROR.
    #[error("reply of type {got} to a {expected} request")]
    UnexpectedType {
        /// The request's type.
        expected: u32,
        /// The reply's type.
        got: u32,
    },
    /// A payload that does not have the shape its type requires.
    #[error("malformed {what}")]
    Malformed {
        /// What was malformed.
        what: &'static str,
    },
    /// An argument that cannot be put on the wire (e.g. a path containing NUL).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// An error raised by a generic layer (pore-core).
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl CodecError {
    pub(crate) fn malformed(what: &'static str) -> Self {
        CodecError::Malformed { what }
    }
}

/// What came off the wire is the peer's: `Protocol`, a payload over the limit included (a
/// request the caller made too large is classified `InvalidInput` by [`Error`], which knows
/// which side it came from).
impl pore_core::Error for CodecError {
    fn kind(&self) -> ErrorKind {
        match self {
            CodecError::PayloadTooLarge { .. }
            | CodecError::UnknownType(_)
            | CodecError::UnexpectedType { .. }
            | CodecError::Malformed { .. } => ErrorKind::Protocol,
            CodecError::InvalidArgument(_) => ErrorKind::InvalidInput,
            CodecError::Core(e) => pore_core::Error::kind(e),
        }
    }
}

/// An error of a client operation (and of the server's guest links).
///
/// It implements [`pore_core::Error`]: [`kind`](pore_core::Error::kind) classifies it, so
/// `e.is_peer_gone()` and `e.is_retryable()` work at this layer too. A backend's or a ring's
/// error is kept as the [`source`](core::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The daemon answered with an `ERROR` reply.
    #[error("xenstore error {0}")]
    Xs(ErrorName),
    /// Framing, encoding or decoding failed (a malformed reply included).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// No reply within the timeout.
    #[error("timed out")]
    TimedOut,
    /// The connection is closed: by the peer (no source), or after the fatal error that is
    /// its source.
    #[error("connection closed")]
    Closed(#[source] Option<Arc<Error>>),
    /// The connection already has as many open transactions as allowed (D12).
    #[error("too many open transactions (limit {0})")]
    TooManyTransactions(usize),
    /// A transaction kept conflicting (EAGAIN) after the allowed number of attempts.
    #[error("transaction still conflicting after {0} attempts")]
    Conflict(u32),
    /// The shared ring broke (a bad index from the peer), or the page's `error` or
    /// `connection` field stopped it.
    #[error("xenstore ring: {0}")]
    Ring(#[from] pore_ring::RingError),
    /// The server set the ring page's `error` field (`XENSTORE_ERROR_*`).
    #[error("xenstore ring error {0} set by the server")]
    RingFault(u32),
    /// The ring page's `connection` field says a reconnection is in progress.
    #[error("xenstore ring reconnecting")]
    Reconnecting,
    /// The backend failed (an event channel, a mapping), classified by `kind`.
    #[error("{context}")]
    Backend {
        /// The backend error's classification.
        kind: ErrorKind,
        /// What was being done.
        context: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn core::error::Error + Send + Sync>,
    },
    /// An error raised by a generic layer (pore-core).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// I/O error of a transport.
    #[cfg(feature = "std")]
    #[error(transparent)]
    Io(std::io::Error),
}

impl Error {
    /// A backend error `e` raised while doing `context`, keeping its classification.
    pub fn backend<E: pore_core::Error>(context: &'static str, e: E) -> Self {
        Error::Backend {
            kind: e.kind(),
            context,
            source: Box::new(e),
        }
    }

    /// The daemon's error name, if this is an error reply.
    pub fn name(&self) -> Option<&ErrorName> {
        match self {
            Error::Xs(n) => Some(n),
            _ => None,
        }
    }

    /// True if the node does not exist (`ENOENT`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Xs(ErrorName::ENOENT))
    }

    /// True if access was denied (`EACCES`, or `EPERM` for an ownership change in C).
    pub fn is_access_denied(&self) -> bool {
        matches!(self, Error::Xs(ErrorName::EACCES | ErrorName::EPERM))
    }

    /// True for a quota error in either daemon (ENOSPC, E2BIG, EQUOTA).
    pub fn is_quota(&self) -> bool {
        matches!(self, Error::Xs(n) if n.is_quota())
    }

    /// True for a transaction conflict (`EAGAIN`).
    pub fn is_again(&self) -> bool {
        matches!(self, Error::Xs(ErrorName::EAGAIN))
    }
}

impl pore_core::Error for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::Xs(n) => match n {
                ErrorName::ENOENT => ErrorKind::NotFound,
                ErrorName::EACCES | ErrorName::EPERM => ErrorKind::PermissionDenied,
                ErrorName::ENOSPC | ErrorName::EQUOTA | ErrorName::E2BIG | ErrorName::ENOMEM => {
                    ErrorKind::ResourceExhausted
                }
                ErrorName::EAGAIN | ErrorName::EBUSY => ErrorKind::Busy,
                ErrorName::EINVAL => ErrorKind::InvalidInput,
                ErrorName::ENOSYS => ErrorKind::Unsupported,
                _ => ErrorKind::Other,
            },
            // A call returns a codec error for its own request (too large, a bad argument)
            // or for its reply (malformed); the stream's framing errors close the
            // connection (`Closed`).
            Error::Codec(CodecError::InvalidArgument(_) | CodecError::PayloadTooLarge { .. }) => {
                ErrorKind::InvalidInput
            }
            Error::Codec(e) => pore_core::Error::kind(e),
            Error::TimedOut => ErrorKind::TimedOut,
            Error::Closed(None) => ErrorKind::PeerGone,
            Error::Closed(Some(e)) if pore_core::Error::is_peer_gone(&**e) => ErrorKind::PeerGone,
            Error::Closed(Some(_)) => ErrorKind::Closed,
            Error::TooManyTransactions(_) => ErrorKind::ResourceExhausted,
            Error::Conflict(_) => ErrorKind::Busy,
            Error::Ring(e) => e.kind(),
            Error::RingFault(_) => ErrorKind::Protocol,
            Error::Reconnecting => ErrorKind::Busy,
            Error::Backend { kind, .. } => *kind,
            Error::Core(e) => e.kind(),
            #[cfg(feature = "std")]
            Error::Io(e) => io_kind(e.kind()),
        }
    }
}

#[cfg(feature = "std")]
fn io_kind(k: std::io::ErrorKind) -> ErrorKind {
    use std::io::ErrorKind as K;
    match k {
        K::ConnectionAborted | K::ConnectionReset | K::BrokenPipe | K::UnexpectedEof => {
            ErrorKind::PeerGone
        }
        K::TimedOut => ErrorKind::TimedOut,
        K::WouldBlock => ErrorKind::WouldBlock,
        K::NotFound => ErrorKind::NotFound,
        K::PermissionDenied => ErrorKind::PermissionDenied,
        K::InvalidInput => ErrorKind::InvalidInput,
        K::InvalidData => ErrorKind::Protocol,
        _ => ErrorKind::Io,
    }
}

/// An I/O error; one that carries an [`Error`] (as the ring transport's do) is unwrapped.
#[cfg(feature = "std")]
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            if let Some(inner) = e.into_inner() {
                if let Ok(err) = inner.downcast::<Error>() {
                    return *err;
                }
            }
            // Not reached: the payload was checked above.
            return Error::Core(CoreError::new(ErrorKind::Io, "i/o error"));
        }
        Error::Io(e)
    }
}

/// An [`Error`] as an I/O error (for the transports' `io::Result`s); [`From<io::Error>`]
/// unwraps it again.
#[cfg(feature = "std")]
impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        use std::io::ErrorKind as K;
        if let Error::Io(e) = e {
            return e;
        }
        let kind = match pore_core::Error::kind(&e) {
            ErrorKind::PeerGone => K::ConnectionAborted,
            ErrorKind::TimedOut => K::TimedOut,
            ErrorKind::Protocol => K::InvalidData,
            ErrorKind::InvalidInput => K::InvalidInput,
            _ => K::Other,
        };
        std::io::Error::new(kind, e)
    }
}

impl From<ErrorName> for Error {
    fn from(n: ErrorName) -> Self {
        Error::Xs(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_kept() {
        for n in [
            "EINVAL",
            "EACCES",
            "EEXIST",
            "EISDIR",
            "ENOENT",
            "ENOMEM",
            "ENOSPC",
            "EIO",
            "ENOTEMPTY",
            "ENOSYS",
            "EROFS",
            "EBUSY",
            "EAGAIN",
            "EISCONN",
            "E2BIG",
            "EPERM",
            "EQUOTA",
        ] {
            let e = ErrorName::from_name(n);
            assert!(!matches!(e, ErrorName::Other(_)), "{n}");
            assert_eq!(e.as_str(), n);
        }
        let e = ErrorName::from_name("EWEIRD");
        assert_eq!(e, ErrorName::Other("EWEIRD".into()));
        assert_eq!(e.as_str(), "EWEIRD");
        assert!(ErrorName::EQUOTA.is_quota() && !ErrorName::ENOENT.is_quota());
    }

    #[test]
    fn kinds_follow_the_cause() {
        use pore_core::Error as _;
        assert_eq!(Error::TimedOut.kind(), ErrorKind::TimedOut);
        assert!(Error::TimedOut.is_retryable());
        assert_eq!(Error::Xs(ErrorName::ENOENT).kind(), ErrorKind::NotFound);
        assert_eq!(
            Error::Xs(ErrorName::EQUOTA).kind(),
            ErrorKind::ResourceExhausted
        );
        let gone = Error::backend("notify", CoreError::new(ErrorKind::PeerGone, "notify"));
        assert!(gone.is_peer_gone());
        assert!(core::error::Error::source(&gone).is_some());
        assert!(Error::Closed(Some(Arc::new(gone))).is_peer_gone());
        assert!(Error::Closed(None).is_peer_gone());
        let local = Error::Closed(Some(Arc::new(Error::TimedOut)));
        assert_eq!(local.kind(), ErrorKind::Closed);
        let big = CodecError::PayloadTooLarge {
            len: 5000,
            max: 4096,
        };
        assert_eq!(big.kind(), ErrorKind::Protocol);
        assert_eq!(Error::Codec(big).kind(), ErrorKind::InvalidInput);
        assert_eq!(
            Error::Codec(CodecError::malformed("reply")).kind(),
            ErrorKind::Protocol
        );
        let bad = Error::from(pore_ring::RingError::Broken);
        assert_eq!(bad.kind(), ErrorKind::Protocol);
    }

    #[cfg(feature = "std")]
    #[test]
    fn io_round_trip_keeps_the_error() {
        use pore_core::Error as _;
        let e = Error::backend("wait", CoreError::new(ErrorKind::PeerGone, "wait"));
        let io = std::io::Error::from(e);
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionAborted);
        let back = Error::from(io);
        assert!(matches!(back, Error::Backend { .. }), "{back:?}");
        assert!(back.is_peer_gone());
        let plain = Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(plain.is_peer_gone());
    }
}
