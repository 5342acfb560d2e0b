#![doc = include_str!("../README.md")]
//!
//! ## Rings and publication
//!
//! Modules: [`xenstore`], [`ling`], [`v2`], [`frame`], [`wait`].
//!
//! Every ring half implements [`RingWriter`] or [`RingReader`] and pore-core's
//! [`SharedRing`](pore_core::SharedRing); each full ring implements `SharedRing` and splits into a
//! producer and a consumer usable from two threads. Publication has three speeds:
//!
//! * `write` / `read`: copy, publish the index, and check whether the peer sleeps (a
//!   `fence(SeqCst)` on the v2 ring); then [`RingWriter::take_notify`] says whether to poke it;
//! * `write_deferred` / `read_deferred` then `publish`: the index is published (a polling peer
//!   sees it at once) but the wake-up check waits for the next `commit` / `release`, which must
//!   come before this side goes idle or waits;
//! * `write_deferred` / `read_deferred` then `commit` / `release`: one index store and one check
//!   for a whole batch.
//!
//! The peer is untrusted (`docs/protocol-facts.md` §6): each index it controls is read once per
//! operation and validated; a bad one breaks the ring ([`RingError`] of kind `Protocol`), never
//! panics and never leads to an access outside the ring.
//!
//! Citations in this crate's comments and docs: `Dn` is decision *n* of the repository's
//! `docs/decisions.md`; `docs/...` paths are relative to the repository's root.
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(feature = "std", loom, test))]
extern crate std;

mod error;
pub mod frame;
mod free;
pub mod ling;
#[cfg(loom)]
pub mod loom_access;
mod macros;
pub mod v2;
pub mod wait;
pub mod xenstore;

pub use error::RingError;
pub use free::{ByteConsumer, ByteProducer};

/// The producer half of a byte ring, with deferred publication.
///
/// [`write_deferred`](RingWriter::write_deferred) copies bytes into the ring without telling the
/// peer; [`commit`](RingWriter::commit) publishes everything copied so far with one index store
/// (and decides whether the peer must be notified). [`write`](RingWriter::write) does both.
pub trait RingWriter {
    /// Bytes of the data area.
    fn capacity(&self) -> usize;

    /// Bytes that can be written now (reads the consumer index).
    fn writable(&self) -> Result<usize, RingError>;

    /// Copies up to `buf.len()` bytes into the ring without publishing them; returns how many.
    fn write_deferred(&mut self, buf: &[u8]) -> Result<usize, RingError>;

    /// Publishes everything written so far (one index store) and decides whether the peer must
    /// be notified (see [`take_notify`](RingWriter::take_notify)).
    fn commit(&mut self) -> Result<(), RingError>;

    /// Publishes everything written so far (one index store) *without* the wake-up check, which
    /// is left to the next [`commit`](RingWriter::commit): a polling consumer sees the bytes at
    /// once, a sleeping one is woken at the next `commit`. For streams that publish every message
    /// but check for sleepers once per burst; the caller must `commit` before it stops writing
    /// (goes idle or waits), or a sleeping consumer may sleep on. The default commits.
    fn publish(&mut self) -> Result<(), RingError> {
        self.commit()
    }

    /// Copies up to `buf.len()` bytes into the ring and publishes them; returns how many.
    fn write(&mut self, buf: &[u8]) -> Result<usize, RingError> {
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
    fn prepare_wait(&mut self) -> Result<bool, RingError>;

    /// Whether a protocol violation broke this half.
    fn is_broken(&self) -> bool;
}

/// The consumer half of a byte ring, with deferred release.
///
/// [`read_deferred`](RingReader::read_deferred) copies bytes out of the ring without handing the
/// space back; [`release`](RingReader::release) publishes our index once for everything read.
/// [`read`](RingReader::read) does both.
pub trait RingReader {
    /// Bytes of the data area.
    fn capacity(&self) -> usize;

    /// Bytes that can be read now (reads the producer index).
    fn readable(&self) -> Result<usize, RingError>;

    /// Copies up to `buf.len()` bytes out of the ring without releasing their space.
    fn read_deferred(&mut self, buf: &mut [u8]) -> Result<usize, RingError>;

    /// Hands the space of everything read so far back to the producer (one index store) and
    /// decides whether the peer must be notified.
    fn release(&mut self) -> Result<(), RingError>;

    /// Hands the space back *without* the wake-up check, which is left to the next
    /// [`release`](RingReader::release); the caller must `release` before it stops reading (goes
    /// idle or waits), or a waiting producer may wait on. The default releases.
    fn publish(&mut self) -> Result<(), RingError> {
        self.release()
    }

    /// Copies up to `buf.len()` bytes out of the ring and releases their space.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
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
    fn prepare_wait(&mut self) -> Result<bool, RingError>;

    /// Whether a protocol violation broke this half.
    fn is_broken(&self) -> bool;
}

impl<T: RingWriter + ?Sized> RingWriter for &mut T {
    fn capacity(&self) -> usize {
        (**self).capacity()
    }
    fn writable(&self) -> Result<usize, RingError> {
        (**self).writable()
    }
    fn write_deferred(&mut self, buf: &[u8]) -> Result<usize, RingError> {
        (**self).write_deferred(buf)
    }
    fn commit(&mut self) -> Result<(), RingError> {
        (**self).commit()
    }
    fn publish(&mut self) -> Result<(), RingError> {
        RingWriter::publish(&mut **self)
    }
    fn write(&mut self, buf: &[u8]) -> Result<usize, RingError> {
        (**self).write(buf)
    }
    fn take_notify(&mut self) -> bool {
        (**self).take_notify()
    }
    fn prepare_wait(&mut self) -> Result<bool, RingError> {
        (**self).prepare_wait()
    }
    fn is_broken(&self) -> bool {
        (**self).is_broken()
    }
}

impl<T: RingReader + ?Sized> RingReader for &mut T {
    fn capacity(&self) -> usize {
        (**self).capacity()
    }
    fn readable(&self) -> Result<usize, RingError> {
        (**self).readable()
    }
    fn read_deferred(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        (**self).read_deferred(buf)
    }
    fn release(&mut self) -> Result<(), RingError> {
        (**self).release()
    }
    fn publish(&mut self) -> Result<(), RingError> {
        RingReader::publish(&mut **self)
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        (**self).read(buf)
    }
    fn take_notify(&mut self) -> bool {
        (**self).take_notify()
    }
    fn prepare_wait(&mut self) -> Result<bool, RingError> {
        (**self).prepare_wait()
    }
    fn is_broken(&self) -> bool {
        (**self).is_broken()
    }
}

#[cfg(test)]
mod testutil;
