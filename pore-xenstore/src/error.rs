//! Errors: the daemon's error replies by name, codec errors and client errors.

use alloc::string::String;
use core::fmt;

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
}

impl CodecError {
    pub(crate) fn malformed(what: &'static str) -> Self {
        CodecError::Malformed { what }
    }
}

/// An error of a client operation.
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
    Timeout,
    /// The connection is closed (by the peer, or after a fatal error).
    #[error("connection closed")]
    Closed,
    /// The connection already has as many open transactions as allowed (D12).
    #[error("too many open transactions (limit {0})")]
    TooManyTransactions(usize),
    /// A transaction kept conflicting (EAGAIN) after the allowed number of attempts.
    #[error("transaction still conflicting after {0} attempts")]
    Conflict(u32),
    /// The shared ring broke (bad index from the peer, or its error field set).
    #[error("ring broken: {0}")]
    Ring(&'static str),
    /// I/O error of a transport.
    #[cfg(feature = "std")]
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
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
}
