//! Blocking frame senders and receivers: a ring half, its event channel and the wait-and-notify
//! rules in one type.
//!
//! [`FrameSender::send`] puts one length-prefixed frame into a [`RingWriter`] (streaming frames
//! larger than the ring through it), notifying the peer whenever the ring says it must and
//! waiting for room with a [`Waiter`] (spin, then sleep on the channel) when the ring is full.
//! [`FrameReceiver::recv`] is the reading side over a [`RingReader`]. Each wait is bounded by the
//! timeout (default [`DEFAULT_TIMEOUT`]): a peer that makes no progress for that long is an
//! error ([`WaitError::TimedOut`]), never a hang. Frames over the receiver's maximum are
//! skipped and counted, never delivered and never allocated for.
//!
//! ```
//! # #[cfg(feature = "std")] {
//! use std::time::Duration;
//! use pore_core::{loopback::Loopback, DomId};
//! use pore_ring::prelude::*;
//! use pore_ring::blocking::{FrameReceiver, FrameSender};
//! use pore_ring::v2::V2Ring;
//! use pore_ring::wait::{StdClock, Waiter};
//!
//! let xen = Loopback::new();
//! let (d1, d2) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
//! // Domain 1 grants the pages of a ring of 2 × 4 KiB; domain 2 maps them.
//! let active = V2Ring::open_active(&d1, DomId(2), pore_ring::v2::V2Geometry::new(0, 0)?)?;
//! let info = active.pore.info();
//! let passive = V2Ring::open_passive_all(&d2, DomId(1), &info.refs, info.port)?;
//!
//! let (tx, _) = active.ring.split();
//! let (_, rx) = passive.ring.split();
//! std::thread::scope(|s| {
//!     let chan = active.pore.channel();
//!     s.spawn(move || {
//!         let mut sender = FrameSender::new(tx, chan, Waiter::new(StdClock::new(), Duration::ZERO), 1 << 16);
//!         for i in 0..100u32 {
//!             sender.send(&i.to_be_bytes().repeat(i as usize * 50)).unwrap();
//!         }
//!     });
//!     let chan = passive.pore.channel();
//!     let mut receiver = FrameReceiver::new(rx, chan, Waiter::new(StdClock::new(), Duration::ZERO), 1 << 16);
//!     let mut buf = vec![0u8; 1 << 16];
//!     for i in 0..100u32 {
//!         let n = receiver.recv(&mut buf).unwrap();
//!         assert_eq!(&buf[..n], &i.to_be_bytes().repeat(i as usize * 50)[..]);
//!     }
//! });
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::time::Duration;

use pore_core::{EventChannel, RingReader, RingWriter};

use crate::frame::{FrameReader, FrameWriter, Progress, Received};
use crate::wait::{Clock, WaitError, Waiter};
use crate::RingError;

/// How long a sender or receiver waits for the peer to make progress by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends length-prefixed frames through a ring half, blocking while the ring is full.
#[derive(Debug)]
pub struct FrameSender<'c, W, E, C: Clock> {
    ring: W,
    chan: &'c E,
    frames: FrameWriter,
    waiter: Waiter<C>,
    timeout: Duration,
    notifications: u64,
}

impl<'c, W, E, C> FrameSender<'c, W, E, C>
where
    W: RingWriter,
    W::Error: From<RingError>,
    E: EventChannel,
    C: Clock,
{
    /// A sender over `ring`, notifying the peer through `chan` (the channel of the ring's
    /// pore), refusing frames longer than `max_frame` bytes.
    pub fn new(ring: W, chan: &'c E, waiter: Waiter<C>, max_frame: usize) -> Self {
        FrameSender {
            ring,
            chan,
            frames: FrameWriter::new(max_frame),
            waiter,
            timeout: DEFAULT_TIMEOUT,
            notifications: 0,
        }
    }

    /// Sets how long one wait for room may last.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends one frame: returns once all of it is in the ring and published (and the peer
    /// notified if it sleeps).
    ///
    /// # Errors
    ///
    /// The ring's error (the peer broke it, or the frame is over the maximum), the channel's
    /// error (e.g. the peer is gone), or [`WaitError::TimedOut`] if the peer made no room for
    /// the timeout; after an error the frame may be partly sent.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), WaitError<W::Error, E::Error>> {
        loop {
            let progress = self
                .frames
                .send(&mut self.ring, frame)
                .map_err(WaitError::Ring)?;
            self.notify_if_needed()?;
            if progress == Progress::Done {
                return Ok(());
            }
            self.waiter
                .wait_writable(&mut self.ring, self.chan, self.timeout)?;
        }
    }

    fn notify_if_needed(&mut self) -> Result<(), WaitError<W::Error, E::Error>> {
        if self.ring.take_notify() {
            self.chan.notify().map_err(WaitError::Channel)?;
            self.notifications += 1;
        }
        Ok(())
    }

    /// How many times the peer was notified so far (event suppression keeps this low).
    pub fn notifications(&self) -> u64 {
        self.notifications
    }

    /// The ring half.
    pub fn ring(&mut self) -> &mut W {
        &mut self.ring
    }

    /// Gives the ring half back.
    pub fn into_ring(self) -> W {
        self.ring
    }
}

/// Receives length-prefixed frames from a ring half, blocking while the ring is empty.
#[derive(Debug)]
pub struct FrameReceiver<'c, R, E, C: Clock> {
    ring: R,
    chan: &'c E,
    frames: FrameReader,
    waiter: Waiter<C>,
    timeout: Duration,
    notifications: u64,
}

impl<'c, R, E, C> FrameReceiver<'c, R, E, C>
where
    R: RingReader,
    R::Error: From<RingError>,
    E: EventChannel,
    C: Clock,
{
    /// A receiver over `ring`, notifying the peer through `chan` (the channel of the ring's
    /// pore), delivering frames of up to `max_frame` bytes and skipping longer ones.
    pub fn new(ring: R, chan: &'c E, waiter: Waiter<C>, max_frame: usize) -> Self {
        FrameReceiver {
            ring,
            chan,
            frames: FrameReader::new(max_frame),
            waiter,
            timeout: DEFAULT_TIMEOUT,
            notifications: 0,
        }
    }

    /// Sets how long one wait for data may last.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Receives the next frame within the maximum into `buf`; returns its length. Frames over
    /// the maximum are skipped on the way ([`FrameReceiver::skipped_frames`]).
    ///
    /// # Errors
    ///
    /// The ring's error (the peer broke it, or the next frame is within the maximum but
    /// longer than `buf`), the channel's error (e.g. the peer is gone), or
    /// [`WaitError::TimedOut`] if no data came for the timeout.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<usize, WaitError<R::Error, E::Error>> {
        loop {
            let got = self
                .frames
                .recv(&mut self.ring, buf)
                .map_err(WaitError::Ring)?;
            if self.ring.take_notify() {
                self.chan.notify().map_err(WaitError::Channel)?;
                self.notifications += 1;
            }
            match got {
                Some(Received::Frame(n)) => return Ok(n),
                Some(Received::Skipped(_)) => {}
                None => self
                    .waiter
                    .wait_readable(&mut self.ring, self.chan, self.timeout)?,
            }
        }
    }

    /// Frames skipped for being over the maximum so far.
    pub fn skipped_frames(&self) -> u64 {
        self.frames.skipped_frames()
    }

    /// How many times the peer was notified so far.
    pub fn notifications(&self) -> u64 {
        self.notifications
    }

    /// The ring half.
    pub fn ring(&mut self) -> &mut R {
        &mut self.ring
    }

    /// Gives the ring half back.
    pub fn into_ring(self) -> R {
        self.ring
    }
}
