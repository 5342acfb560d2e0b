//! The trait the shared-memory rings implement.

/// What a side wants to be woken for when it is about to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Wake me when the peer has written (I want to read).
    Readable,
    /// Wake me when the peer has consumed (I want to write).
    Writable,
}

/// One side of a byte ring pair living in memory shared with a peer.
///
/// The trait assumes neither a power-of-two size nor free-running indices (the LING layout has
/// neither, D3). Every method that reads an index the peer controls reads it once and validates
/// it; a bad index is an error of kind [`crate::ErrorKind::Protocol`] that marks the ring broken.
pub trait SharedRing {
    /// The ring's error type.
    type Error: crate::Error;

    /// Bytes that can be read now.
    fn readable(&self) -> Result<usize, Self::Error>;

    /// Bytes that can be written now.
    fn writable(&self) -> Result<usize, Self::Error>;

    /// Copies up to `buf.len()` readable bytes out of the ring; returns how many.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error>;

    /// Copies up to `buf.len()` bytes into the ring; returns how many.
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error>;

    /// Whether the peer must be notified (a `poke`) for what we did since the last call;
    /// clears the need.
    fn take_notify(&mut self) -> bool;

    /// Called before sleeping: asks the peer to wake us for `interest`, then re-checks.
    /// Returns `true` if the ring is already ready, in which case the caller must not sleep.
    ///
    /// A ring may publish pending (deferred) writes or releases here, so call
    /// [`SharedRing::take_notify`] afterwards and poke the peer if it says so.
    fn prepare_wait(&mut self, interest: Interest) -> Result<bool, Self::Error>;
}
