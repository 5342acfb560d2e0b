//! The ring traits: a byte ring in memory shared with a peer is a writer half and a reader half.
//!
//! A half is either a [`RingWriter`] (it produces into one direction of the ring) or a
//! [`RingReader`] (it consumes from the other); a full two-way ring is a [`SharedRing`]: one
//! half of each kind, reachable with [`SharedRing::writer`] and [`SharedRing::reader`] or split
//! apart for two threads with [`SharedRing::split`]. A half never claims a method it cannot
//! serve: a writer cannot read, a reader cannot write.
//!
//! The traits assume neither a power-of-two size nor free-running indices (the LING layout has
//! neither, D3). Every method that reads an index the peer controls reads it once and validates
//! it; a bad index is an error of kind [`crate::ErrorKind::Protocol`] that breaks the half for
//! good ([`RingWriter::is_broken`]).
//!
//! Publication has three speeds, the same on both halves:
//!
//! * [`RingWriter::write`] / [`RingReader::read`]: copy, publish the index and check whether
//!   the peer sleeps; then `take_notify` says whether to notify it;
//! * `write_deferred` / `read_deferred` then `publish`: the index is published (a polling peer
//!   sees it at once) but the wake-up check waits for the next `commit` / `release`, which must
//!   come before this side goes idle or waits;
//! * `write_deferred` / `read_deferred` then `commit` / `release`: one index store and one
//!   check for a whole batch.

/// The producer half of a byte ring, with deferred publication.
///
/// [`write_deferred`](RingWriter::write_deferred) copies bytes into the ring without telling the
/// peer; [`commit`](RingWriter::commit) publishes everything copied so far with one index store
/// (and decides whether the peer must be notified). [`write`](RingWriter::write) does both.
pub trait RingWriter {
    /// The ring's error type.
    type Error: crate::Error;

    /// Bytes of the data area.
    fn capacity(&self) -> usize;

    /// Bytes that can be written now (reads the consumer index).
    fn writable(&self) -> Result<usize, Self::Error>;

    /// Copies up to `buf.len()` bytes into the ring without publishing them; returns how many.
    fn write_deferred(&mut self, buf: &[u8]) -> Result<usize, Self::Error>;

    /// Publishes everything written so far (one index store) and decides whether the peer must
    /// be notified (see [`take_notify`](RingWriter::take_notify)).
    fn commit(&mut self) -> Result<(), Self::Error>;

    /// Publishes everything written so far (one index store) *without* the wake-up check, which
    /// is left to the next [`commit`](RingWriter::commit): a polling consumer sees the bytes at
    /// once, a sleeping one is woken at the next `commit`. For streams that publish every
    /// message but check for sleepers once per burst; the caller must `commit` before it stops
    /// writing (goes idle or waits), or a sleeping consumer may sleep on. The default commits.
    fn publish(&mut self) -> Result<(), Self::Error> {
        self.commit()
    }

    /// Copies up to `buf.len()` bytes into the ring and publishes them; returns how many.
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        let n = self.write_deferred(buf)?;
        self.commit()?;
        Ok(n)
    }

    /// Whether the peer must be notified for what was published since the last call; clears
    /// the need.
    fn take_notify(&mut self) -> bool;

    /// Called before sleeping until the ring has room: commits what is staged, asks the peer to
    /// wake us (where the layout can), then re-checks. `true`: there is room now, do not sleep.
    /// Afterwards [`take_notify`](RingWriter::take_notify) may be `true` (from the commit).
    fn prepare_wait(&mut self) -> Result<bool, Self::Error>;

    /// Whether a protocol violation broke this half.
    fn is_broken(&self) -> bool;
}

/// The consumer half of a byte ring, with deferred release.
///
/// [`read_deferred`](RingReader::read_deferred) copies bytes out of the ring without handing the
/// space back; [`release`](RingReader::release) publishes our index once for everything read.
/// [`read`](RingReader::read) does both.
pub trait RingReader {
    /// The ring's error type.
    type Error: crate::Error;

    /// Bytes of the data area.
    fn capacity(&self) -> usize;

    /// Bytes that can be read now (reads the producer index).
    fn readable(&self) -> Result<usize, Self::Error>;

    /// Copies up to `buf.len()` bytes out of the ring without releasing their space.
    fn read_deferred(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error>;

    /// Hands the space of everything read so far back to the producer (one index store) and
    /// decides whether the peer must be notified.
    fn release(&mut self) -> Result<(), Self::Error>;

    /// Hands the space back *without* the wake-up check, which is left to the next
    /// [`release`](RingReader::release); the caller must `release` before it stops reading (goes
    /// idle or waits), or a waiting producer may wait on. The default releases.
    fn publish(&mut self) -> Result<(), Self::Error> {
        self.release()
    }

    /// Copies up to `buf.len()` bytes out of the ring and releases their space.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = self.read_deferred(buf)?;
        self.release()?;
        Ok(n)
    }

    /// Whether the peer must be notified for what was released since the last call; clears
    /// the need.
    fn take_notify(&mut self) -> bool;

    /// Called before sleeping until data arrives: releases what was read, asks the peer to wake
    /// us (where the layout can), then re-checks. `true`: there is data now, do not sleep.
    /// Afterwards [`take_notify`](RingReader::take_notify) may be `true` (from the release).
    fn prepare_wait(&mut self) -> Result<bool, Self::Error>;

    /// Whether a protocol violation broke this half.
    fn is_broken(&self) -> bool;
}

/// A two-way ring: one [`RingWriter`] half for what we send and one [`RingReader`] half for
/// what we receive, in the same shared region.
pub trait SharedRing {
    /// The half we send through.
    type Writer: RingWriter;
    /// The half we receive through (same error type as the writer).
    type Reader: RingReader<Error = <Self::Writer as RingWriter>::Error>;

    /// The sending half.
    fn writer(&mut self) -> &mut Self::Writer;

    /// The receiving half.
    fn reader(&mut self) -> &mut Self::Reader;

    /// Splits the ring into its halves, e.g. for a sending and a receiving thread.
    fn split(self) -> (Self::Writer, Self::Reader);

    /// Whether the peer must be notified for what either half did; clears both needs.
    fn take_notify(&mut self) -> bool {
        let sent = self.writer().take_notify();
        let received = self.reader().take_notify();
        sent | received
    }
}

impl<T: RingWriter + ?Sized> RingWriter for &mut T {
    type Error = T::Error;
    fn capacity(&self) -> usize {
        (**self).capacity()
    }
    fn writable(&self) -> Result<usize, T::Error> {
        (**self).writable()
    }
    fn write_deferred(&mut self, buf: &[u8]) -> Result<usize, T::Error> {
        (**self).write_deferred(buf)
    }
    fn commit(&mut self) -> Result<(), T::Error> {
        (**self).commit()
    }
    fn publish(&mut self) -> Result<(), T::Error> {
        (**self).publish()
    }
    fn write(&mut self, buf: &[u8]) -> Result<usize, T::Error> {
        (**self).write(buf)
    }
    fn take_notify(&mut self) -> bool {
        (**self).take_notify()
    }
    fn prepare_wait(&mut self) -> Result<bool, T::Error> {
        (**self).prepare_wait()
    }
    fn is_broken(&self) -> bool {
        (**self).is_broken()
    }
}

impl<T: RingReader + ?Sized> RingReader for &mut T {
    type Error = T::Error;
    fn capacity(&self) -> usize {
        (**self).capacity()
    }
    fn readable(&self) -> Result<usize, T::Error> {
        (**self).readable()
    }
    fn read_deferred(&mut self, buf: &mut [u8]) -> Result<usize, T::Error> {
        (**self).read_deferred(buf)
    }
    fn release(&mut self) -> Result<(), T::Error> {
        (**self).release()
    }
    fn publish(&mut self) -> Result<(), T::Error> {
        (**self).publish()
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, T::Error> {
        (**self).read(buf)
    }
    fn take_notify(&mut self) -> bool {
        (**self).take_notify()
    }
    fn prepare_wait(&mut self) -> Result<bool, T::Error> {
        (**self).prepare_wait()
    }
    fn is_broken(&self) -> bool {
        (**self).is_broken()
    }
}
