//! The xenstore operations the sans-IO machines ask their driver to perform, and their results.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use pore_core::{CoreError, DomId, ErrorKind};

/// Rights in a xenstore permission entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`: none.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: both.
    Both,
}

/// One xenstore permission entry (`n5`, `r5`, `w5`, `b5`). In a list, the first entry names the
/// owner and the rights of every domain not listed.
///
/// ```
/// use pore_core::DomId;
/// use pore_straw::ops::{Access, Perm};
/// assert_eq!(Perm::new(Access::Both, DomId(7)).to_string(), "b7");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The rights.
    pub access: Access,
    /// The domain.
    pub domid: DomId,
}

impl Perm {
    /// A permission entry.
    pub const fn new(access: Access, domid: DomId) -> Self {
        Perm { access, domid }
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = match self.access {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        };
        write!(f, "{c}{}", self.domid.0)
    }
}

/// A xenstore operation a machine wants done. Paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// READ; replies [`StoreReply::Value`].
    Read {
        /// The node.
        path: String,
    },
    /// WRITE (creates the node and missing parents).
    Write {
        /// The node.
        path: String,
        /// The value.
        value: String,
    },
    /// MKDIR (succeeds if the node exists).
    Mkdir {
        /// The node.
        path: String,
    },
    /// RM (the node and everything below it).
    Rm {
        /// The node.
        path: String,
    },
    /// DIRECTORY; replies [`StoreReply::Children`] (names, not paths).
    Directory {
        /// The node.
        path: String,
    },
    /// GET_PERMS; replies [`StoreReply::Perms`] (the owner first).
    GetPerms {
        /// The node.
        path: String,
    },
    /// SET_PERMS.
    SetPerms {
        /// The node.
        path: String,
        /// The new permission list (owner first).
        perms: Vec<Perm>,
        /// If true, the driver reports EACCES/EPERM as success (D18: a xenstored that keeps the
        /// parent's owner on new nodes refuses us, and that is fine).
        best_effort: bool,
    },
    /// WATCH; watch events for it are fed back as [`crate::handshake::Input::Watch`].
    Watch {
        /// The watched path.
        path: String,
        /// The token.
        token: String,
    },
    /// UNWATCH.
    Unwatch {
        /// The watched path.
        path: String,
        /// The token.
        token: String,
    },
    /// TRANSACTION_START, the given operations inside it (writes, mkdirs, rms, set-perms; never
    /// reads, nested transactions nor watches), then TRANSACTION_END commit. The driver retries the
    /// whole transaction on EAGAIN (a bounded number of times, D12) and replies once.
    Transaction(Vec<StoreOp>),
}

impl StoreOp {
    /// A short name for logs and errors.
    pub const fn name(&self) -> &'static str {
        match self {
            StoreOp::Read { .. } => "read",
            StoreOp::Write { .. } => "write",
            StoreOp::Mkdir { .. } => "mkdir",
            StoreOp::Rm { .. } => "rm",
            StoreOp::Directory { .. } => "directory",
            StoreOp::GetPerms { .. } => "get-perms",
            StoreOp::SetPerms { .. } => "set-perms",
            StoreOp::Watch { .. } => "watch",
            StoreOp::Unwatch { .. } => "unwatch",
            StoreOp::Transaction(_) => "transaction",
        }
    }
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreReply {
    /// The operation was done.
    Done,
    /// The value of a READ.
    Value(Vec<u8>),
    /// The permissions of a GET_PERMS, the owner first.
    Perms(Vec<Perm>),
    /// The child names of a DIRECTORY.
    Children(Vec<String>),
}

/// A failed xenstore operation, as far as the strawman needs to distinguish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// ENOENT.
    #[error("no such node")]
    NotFound,
    /// EACCES / EPERM.
    #[error("permission denied")]
    PermissionDenied,
    /// The request (or the transaction after its retries) timed out.
    #[error("timed out")]
    TimedOut,
    /// Anything else (EINVAL, EQUOTA, a broken connection, ...), with the client's error as the
    /// source when there is one.
    #[error("xenstore error")]
    Other(#[source] Option<ClientError>),
}

impl StoreError {
    /// [`StoreError::Other`] holding the client's error.
    pub fn other<E: core::error::Error + Send + Sync + 'static>(e: E) -> Self {
        StoreError::Other(Some(ClientError(Arc::new(e))))
    }
}

impl pore_core::Error for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NotFound => ErrorKind::NotFound,
            StoreError::PermissionDenied => ErrorKind::PermissionDenied,
            StoreError::TimedOut => ErrorKind::TimedOut,
            StoreError::Other(_) => ErrorKind::Other,
        }
    }
}

/// A generic layer's error ([`CoreError`]) as the strawman sees a xenstore error: by its kind
/// (kept as the source of [`StoreError::Other`]).
impl From<CoreError> for StoreError {
    fn from(e: CoreError) -> Self {
        use pore_core::Error as _;
        match e.kind() {
            ErrorKind::NotFound => StoreError::NotFound,
            ErrorKind::PermissionDenied => StoreError::PermissionDenied,
            ErrorKind::TimedOut => StoreError::TimedOut,
            _ => StoreError::other(e),
        }
    }
}

/// A xenstore client's own error inside a [`StoreError::Other`]: shared (so that the store
/// error stays `Clone`), displayed as the client displays it, and reachable whole through
/// [`ClientError::get_ref`] (e.g. to downcast it). Two are equal when one is a clone of the
/// other.
#[derive(Clone)]
pub struct ClientError(Arc<dyn core::error::Error + Send + Sync + 'static>);

impl ClientError {
    /// The client's error itself.
    pub fn get_ref(&self) -> &(dyn core::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

/// Transparent: the client error's own source.
impl core::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for ClientError {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ClientError {}

impl fmt::Display for StoreOp {
    /// A one-line description, as `xenstore-*` tools would show it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreOp::Read { path } => write!(f, "read {path}"),
            StoreOp::Write { path, value } => write!(f, "write {path} = {value:?}"),
            StoreOp::Mkdir { path } => write!(f, "mkdir {path}"),
            StoreOp::Rm { path } => write!(f, "rm {path}"),
            StoreOp::Directory { path } => write!(f, "directory {path}"),
            StoreOp::GetPerms { path } => write!(f, "get-perms {path}"),
            StoreOp::SetPerms { path, perms, .. } => {
                write!(f, "set-perms {path}")?;
                for p in perms {
                    write!(f, " {p}")?;
                }
                Ok(())
            }
            StoreOp::Watch { path, .. } => write!(f, "watch {path}"),
            StoreOp::Unwatch { path, .. } => write!(f, "unwatch {path}"),
            StoreOp::Transaction(ops) => {
                f.write_str("transaction {")?;
                for (i, op) in ops.iter().enumerate() {
                    if i > 0 {
                        f.write_str(";")?;
                    }
                    write!(f, " {op}")?;
                }
                f.write_str(" }")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString;
    use core::error::Error as _;

    use pore_core::{CoreError, Error as _, ErrorKind};

    use super::*;
    use crate::handshake::HandshakeError;

    #[test]
    fn a_client_error_stays_the_source_through_the_handshake() {
        let quota = CoreError::new(ErrorKind::ResourceExhausted, "quota");
        let e = StoreError::from(quota);
        assert_eq!(e.kind(), ErrorKind::Other);
        let StoreError::Other(Some(client)) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(client.get_ref().downcast_ref::<CoreError>(), Some(&quota));
        let h = HandshakeError::Store {
            op: "write",
            error: e.clone(),
        };
        let store = h.source().unwrap();
        assert_eq!(store.to_string(), e.to_string());
        assert_eq!(store.source().unwrap().to_string(), quota.to_string());
        let gone = CoreError::new(ErrorKind::NotFound, "read");
        assert_eq!(StoreError::from(gone), StoreError::NotFound);
        assert!(HandshakeError::PeerGone.is_peer_gone());
        assert!(HandshakeError::TimedOut(crate::handshake::Stage::Close).is_retryable());
    }
}
