//! The simulator's error type.

use std::borrow::Cow;

use pore_core::{CoreError, Error, ErrorKind};

/// What went wrong in the simulated hypervisor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The simulated hypervisor refused the operation (Xen would have returned an errno).
    #[error("{message}: {kind}")]
    Refused {
        /// How the refusal classifies.
        kind: ErrorKind,
        /// What was refused and why.
        message: Cow<'static, str>,
    },
    /// An operating-system call of the simulator failed.
    #[error("{context}: {source}")]
    Os {
        /// What the simulator was doing.
        context: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An error raised by a generic layer (the pore, a ring, a protocol crate).
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl SimError {
    pub(crate) fn refused(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        SimError::Refused {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn os(context: &'static str) -> impl FnOnce(std::io::Error) -> SimError {
        move |source| SimError::Os { context, source }
    }
}

impl Error for SimError {
    fn kind(&self) -> ErrorKind {
        match self {
            SimError::Refused { kind, .. } => *kind,
            SimError::Os { .. } => ErrorKind::Io,
            SimError::Core(e) => e.kind(),
        }
    }
}

/// The simulator's result type.
pub type Result<T, E = SimError> = core::result::Result<T, E>;

/// Wire codes of the error kinds (the broker sends refusals to domain processes).
const KINDS: [ErrorKind; 13] = [
    ErrorKind::PeerGone,
    ErrorKind::TimedOut,
    ErrorKind::WouldBlock,
    ErrorKind::InvalidInput,
    ErrorKind::NotFound,
    ErrorKind::PermissionDenied,
    ErrorKind::ResourceExhausted,
    ErrorKind::Busy,
    ErrorKind::Protocol,
    ErrorKind::Closed,
    ErrorKind::Unsupported,
    ErrorKind::Io,
    ErrorKind::Other,
];

pub(crate) fn kind_to_code(kind: ErrorKind) -> u32 {
    KINDS
        .iter()
        .position(|k| *k == kind)
        .map_or(KINDS.len() as u32, |i| i as u32 + 1)
}

pub(crate) fn code_to_kind(code: u32) -> ErrorKind {
    code.checked_sub(1)
        .and_then(|i| KINDS.get(i as usize))
        .copied()
        .unwrap_or(ErrorKind::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_survive_the_wire() {
        for k in KINDS {
            assert_eq!(code_to_kind(kind_to_code(k)), k);
        }
        assert_eq!(code_to_kind(999), ErrorKind::Other);
        let e = SimError::from(CoreError::new(ErrorKind::TimedOut, "x"));
        assert!(e.is_retryable());
        assert!(SimError::refused(ErrorKind::PeerGone, "gone").is_peer_gone());
    }
}
