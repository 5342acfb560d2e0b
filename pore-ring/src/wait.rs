//! Blocking on a ring half: spin briefly, then sleep on the event channel (`docs/perf.md`,
//! lesson 4).
//!
//! [`Waiter::wait_readable`] returns once a [`RingReader`] has data (and
//! [`Waiter::wait_writable`] once a [`RingWriter`] has room) or the timeout elapses. It first
//! checks; then spins re-checking for as long as its adaptive [`SpinBudget`] allows (see
//! [`crate::spin`]; worthwhile only when the peer runs on another CPU); then asks the peer to
//! wake it (`prepare_wait`), re-checks, and sleeps on the event channel. Spurious wake-ups are
//! absorbed by re-checking (D6). [`crate::blocking`] builds frame senders and receivers on it.
//!
//! ```
//! # #[cfg(feature = "std")] {
//! use core::time::Duration;
//! use pore_core::{loopback::Loopback, DomId, EventChannel, Events, GrantRef, Grants, SharedMemory};
//! use pore_ring::prelude::*;
//! use pore_ring::v2::{V2Geometry, V2Ring};
//! use pore_ring::wait::{StdClock, Waiter, WaitError};

//!
//! let xen = Loopback::new();
//! let (d1, d2) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
//! let geometry = V2Geometry::new(0, 0)?;
//! let pages = d1.grant(DomId(2), geometry.pages())?;
//! let (chan1, chan2) = {
//!     let c1 = d1.alloc_unbound(DomId(2))?;
//!     let c2 = d2.bind_interdomain(DomId(1), c1.port())?;
//!     (c1, c2)
//! };
//! let mut active = V2Ring::active(pages.view(), geometry, &[GrantRef(1), GrantRef(2)])?;
//! let mut passive = V2Ring::passive(pages.view())?;
//! let waiter = Waiter::new(StdClock::new(), Duration::ZERO);
//!
//! // Nothing to read: times out.
//! let r = waiter.wait_readable(passive.reader(), &chan2, Duration::from_millis(10));
//! assert!(matches!(r, Err(WaitError::TimedOut)));
//! // The passive side asked to be woken, so the write needs an event.
//! active.writer().write(b"x")?;
//! assert!(active.writer().take_notify());
//! chan1.notify()?;
//! waiter.wait_readable(passive.reader(), &chan2, Duration::from_secs(1))?;
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::time::Duration;

use pore_core::{EventChannel, RingReader, RingWriter, WaitOutcome};

use crate::spin::SpinBudget;

/// Notifies the peer through `chan` if `needed` (what a half's `take_notify` returned);
/// returns whether it did.
///
/// # Errors
///
/// The channel's error.
pub fn notify_if<E: EventChannel + ?Sized>(needed: bool, chan: &E) -> Result<bool, E::Error> {
    if needed {
        chan.notify()?;
    }
    Ok(needed)
}

/// A monotonic clock (the helper is `no_std`).
pub trait Clock {
    /// Time since an arbitrary fixed origin.
    fn now(&self) -> Duration;
}

/// The standard library's monotonic clock.
#[cfg(feature = "std")]
#[derive(Debug, Clone, Copy)]
pub struct StdClock(std::time::Instant);

#[cfg(feature = "std")]
impl StdClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        StdClock(std::time::Instant::now())
    }
}

#[cfg(feature = "std")]
impl Default for StdClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "std")]
impl Clock for StdClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// Why a wait failed.
#[derive(Debug, thiserror::Error)]
pub enum WaitError<R, C> {
    /// The ring failed (e.g. the peer broke it).
    #[error("ring: {0}")]
    Ring(R),
    /// The event channel failed (e.g. the peer is gone).
    #[error("event channel: {0}")]
    Channel(C),
    /// The timeout elapsed before the ring became ready.
    #[error("timed out waiting on the ring")]
    TimedOut,
}

impl<R: pore_core::Error, C: pore_core::Error> From<pore_core::CoreError> for WaitError<R, C> {
    /// A generic layer's error (e.g. a timeout raised above the ring) as the channel's.
    fn from(e: pore_core::CoreError) -> Self {
        WaitError::Channel(C::from(e))
    }
}

impl<R: pore_core::Error, C: pore_core::Error> pore_core::Error for WaitError<R, C> {
    fn kind(&self) -> pore_core::ErrorKind {
        match self {
            WaitError::Ring(e) => e.kind(),
            WaitError::Channel(e) => e.kind(),
            WaitError::TimedOut => pore_core::ErrorKind::TimedOut,
        }
    }
}

/// The spin-then-sleep policy of one waiting side (one ring half), with its adaptive spin
/// budget.
#[derive(Debug)]
pub struct Waiter<C: Clock> {
    clock: C,
    max_spin: Duration,
    budget: SpinBudget,
}

/// What [`Waiter`] needs of a ring half, for both kinds.
trait Half {
    type Error;
    fn ready(&self) -> Result<bool, Self::Error>;
    fn prepare_wait(&mut self) -> Result<bool, Self::Error>;
    fn take_notify(&mut self) -> bool;
}

struct Writing<'a, W: ?Sized>(&'a mut W);
struct Reading<'a, R: ?Sized>(&'a mut R);

impl<W: RingWriter + ?Sized> Half for Writing<'_, W> {
    type Error = W::Error;
    fn ready(&self) -> Result<bool, W::Error> {
        Ok(self.0.writable()? > 0)
    }
    fn prepare_wait(&mut self) -> Result<bool, W::Error> {
        self.0.prepare_wait()
    }
    fn take_notify(&mut self) -> bool {
        self.0.take_notify()
    }
}

impl<R: RingReader + ?Sized> Half for Reading<'_, R> {
    type Error = R::Error;
    fn ready(&self) -> Result<bool, R::Error> {
        Ok(self.0.readable()? > 0)
    }
    fn prepare_wait(&mut self) -> Result<bool, R::Error> {
        self.0.prepare_wait()
    }
    fn take_notify(&mut self) -> bool {
        self.0.take_notify()
    }
}

impl<C: Clock> Waiter<C> {
    /// A waiter spinning up to `max_spin` before sleeping (`Duration::ZERO`: sleep at once).
    /// The spin actually tried adapts to the peer (see [`crate::spin`]).
    pub fn new(clock: C, max_spin: Duration) -> Self {
        Waiter {
            clock,
            max_spin,
            budget: SpinBudget::new(max_spin),
        }
    }

    /// The maximum spin.
    pub fn max_spin(&self) -> Duration {
        self.max_spin
    }

    /// The spin budget as adapted so far.
    pub fn budget(&self) -> &SpinBudget {
        &self.budget
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Waits until `ring` has data (at least one byte), or `timeout` elapses.
    ///
    /// # Errors
    ///
    /// [`WaitError::TimedOut`], or the ring's or the channel's error.
    pub fn wait_readable<R: RingReader + ?Sized, E: EventChannel>(
        &self,
        ring: &mut R,
        chan: &E,
        timeout: Duration,
    ) -> Result<(), WaitError<R::Error, E::Error>> {
        self.wait(Reading(ring), chan, timeout)
    }

    /// Waits until `ring` has room (at least one byte), or `timeout` elapses.
    ///
    /// # Errors
    ///
    /// [`WaitError::TimedOut`], or the ring's or the channel's error.
    pub fn wait_writable<W: RingWriter + ?Sized, E: EventChannel>(
        &self,
        ring: &mut W,
        chan: &E,
        timeout: Duration,
    ) -> Result<(), WaitError<W::Error, E::Error>> {
        self.wait(Writing(ring), chan, timeout)
    }

    fn wait<H: Half, E: EventChannel>(
        &self,
        mut half: H,
        chan: &E,
        timeout: Duration,
    ) -> Result<(), WaitError<H::Error, E::Error>> {
        let start = self.clock.now();
        let deadline = start.saturating_add(timeout);
        if half.ready().map_err(WaitError::Ring)? {
            return Ok(());
        }
        if self
            .budget
            .spin_until(
                &self.clock,
                self.max_spin,
                deadline,
                || half.ready(),
                || false,
            )
            .map_err(WaitError::Ring)?
        {
            return Ok(());
        }
        loop {
            let ready_now = half.prepare_wait().map_err(WaitError::Ring)?;
            // `prepare_wait` may have published pending bytes that a sleeping peer must hear of.
            if half.take_notify() {
                chan.notify().map_err(WaitError::Channel)?;
            }
            if ready_now {
                return Ok(());
            }
            let now = self.clock.now();
            if now >= deadline {
                return Err(WaitError::TimedOut);
            }
            let outcome = chan.wait(deadline - now).map_err(WaitError::Channel)?;
            let ready = half.ready().map_err(WaitError::Ring)?;
            match outcome {
                WaitOutcome::Event if ready => {
                    // The peer answered while we slept: a spin that long would have caught it.
                    self.budget
                        .slept(self.clock.now().saturating_sub(now), self.max_spin);
                    return Ok(());
                }
                WaitOutcome::Event => {}
                WaitOutcome::Timeout if ready => return Ok(()),
                WaitOutcome::Timeout => return Err(WaitError::TimedOut),
            }
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::testutil::Guarded;
    use crate::v2::{V2Geometry, V2Ring};
    use crate::{RingWriter, SharedRing};
    use pore_core::loopback::Loopback;
    use pore_core::{DomId, EventChannel, Events, GrantRef};
    use std::vec;

    #[test]
    fn blocking_stream_with_suppression() {
        let xen = Loopback::new();
        let (d1, d2) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
        let c1 = d1.alloc_unbound(DomId(2)).unwrap();
        let c2 = d2.bind_interdomain(DomId(1), c1.port()).unwrap();
        let geo = V2Geometry::new(0, 0).unwrap();
        let g = Guarded::new(geo.region_len());
        let (mut tx, _) = V2Ring::active(g.view(), geo, &[GrantRef(1), GrantRef(2)])
            .unwrap()
            .split();
        let (_, mut rx) = V2Ring::passive(g.view()).unwrap().split();
        let total = if cfg!(miri) { 4_000 } else { 400_000 };
        let timeout = Duration::from_secs(10);
        for spin in [Duration::ZERO, Duration::from_micros(50)] {
            std::thread::scope(|s| {
                let (tx, rx, c1, c2) = (&mut tx, &mut rx, &c1, &c2);
                s.spawn(move || {
                    let w = Waiter::new(StdClock::new(), spin);
                    let data = vec![7u8; 3000];
                    let mut sent = 0;
                    while sent < total {
                        let n = (total - sent).min(data.len());
                        let k = tx.write(&data[..n]).unwrap();
                        sent += k;
                        if tx.take_notify() {
                            c1.notify().unwrap();
                        }
                        if k == 0 {
                            w.wait_writable(tx, c1, timeout).unwrap();
                        }
                    }
                });
                let w = Waiter::new(StdClock::new(), spin);
                let mut buf = vec![0u8; 5000];
                let mut got = 0;
                while got < total {
                    let n = crate::RingReader::read(rx, &mut buf).unwrap();
                    got += n;
                    if crate::RingReader::take_notify(rx) {
                        c2.notify().unwrap();
                    }
                    if n == 0 {
                        w.wait_readable(rx, c2, timeout).unwrap();
                    }
                }
            });
        }
        assert!(Waiter::new(StdClock::default(), Duration::ZERO)
            .max_spin()
            .is_zero());
    }
}
