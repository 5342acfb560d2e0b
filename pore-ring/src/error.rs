//! The error type of the rings.

use pore_core::{CoreError, ErrorKind};

/// What went wrong with a ring.
///
/// Everything a peer can cause is of kind [`ErrorKind::Protocol`] and leaves the ring *broken*:
/// every later operation on that half returns [`RingError::Broken`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// The peer published an index outside what the protocol allows.
    #[error("peer wrote an invalid {what} index ({value:#x})")]
    BadIndex {
        /// Which index (`"producer"` or `"consumer"`).
        what: &'static str,
        /// The value read.
        value: u32,
    },
    /// An earlier protocol violation broke this ring.
    #[error("ring broken by an earlier protocol violation")]
    Broken,
    /// The shared header found is not a valid ring header.
    #[error("invalid ring header: {0}")]
    BadHeader(&'static str),
    /// The shared region is smaller than the layout needs.
    #[error("shared region of {have} bytes is smaller than the {need} bytes the layout needs")]
    RegionTooSmall {
        /// Bytes the layout needs.
        need: usize,
        /// Bytes the region has.
        have: usize,
    },
    /// The caller asked for something this ring or half cannot do.
    #[error("invalid use of the ring: {0}")]
    InvalidInput(&'static str),
    /// The caller's buffer cannot hold the next frame (which is within the maximum).
    #[error("frame of {len} bytes does not fit the caller's buffer of {cap} bytes")]
    BufferTooSmall {
        /// Frame length.
        len: usize,
        /// Buffer length.
        cap: usize,
    },
    /// An error raised by a generic layer.
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl pore_core::Error for RingError {
    fn kind(&self) -> ErrorKind {
        match self {
            RingError::BadIndex { .. } | RingError::Broken | RingError::BadHeader(_) => {
                ErrorKind::Protocol
            }
            RingError::RegionTooSmall { .. }
            | RingError::InvalidInput(_)
            | RingError::BufferTooSmall { .. } => ErrorKind::InvalidInput,
            RingError::Core(e) => e.kind(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pore_core::Error as _;

    #[test]
    fn kinds() {
        assert_eq!(RingError::Broken.kind(), ErrorKind::Protocol);
        assert_eq!(
            RingError::BadIndex {
                what: "producer",
                value: 7
            }
            .kind(),
            ErrorKind::Protocol
        );
        assert_eq!(RingError::InvalidInput("x").kind(), ErrorKind::InvalidInput);
        let core = RingError::from(CoreError::new(ErrorKind::TimedOut, "w"));
        assert!(core.is_retryable());
    }
}
