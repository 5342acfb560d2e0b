//! Blocking on a ring: spin briefly, then sleep on the event channel (`docs/perf.md`, lesson 4).
//!
//! [`Waiter::wait`] returns once the ring is readable (or writable) or the timeout elapses.
//! It first checks; then, if a spin budget is configured, spins re-checking (worthwhile only when
//! the peer runs on another CPU: set [`Waiter::spin`] to zero otherwise); then asks the peer to
//! wake it ([`SharedRing::prepare_wait`]), re-checks, and sleeps on the event channel. Spurious
//! wake-ups are absorbed by re-checking (D6).
//!
//! ```
//! # #[cfg(feature = "std")] {
//! use core::time::Duration;
//! use pore_core::{loopback::Loopback, DomId, EventChannel, Events, GrantRef, Grants, SharedMemory, Interest};
//! use pore_ring::v2::{V2Geometry, V2Ring};
//! use pore_ring::wait::{StdClock, Waiter, WaitError};
//! use pore_ring::RingWriter;
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
//! let mut active = V2Ring::create(pages.view(), geometry, &[GrantRef(1), GrantRef(2)])?;
//! let mut passive = V2Ring::attach(pages.view())?;
//! let waiter = Waiter::new(StdClock::new(), Duration::ZERO);
//!
//! // Nothing to read: times out.
//! let r = waiter.wait(passive.reader(), &chan2, Interest::Readable, Duration::from_millis(10));
//! assert!(matches!(r, Err(WaitError::TimedOut)));
//! // The passive side asked to be woken, so the write needs an event.
//! active.writer().write(b"x")?;
//! waiter.notify_if_needed(active.writer(), &chan1)?;
//! waiter.wait(passive.reader(), &chan2, Interest::Readable, Duration::from_secs(1))?;
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::time::Duration;

use pore_core::{EventChannel, Interest, SharedRing, WaitOutcome};

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

/// The spin-then-sleep policy.
#[derive(Debug, Clone)]
pub struct Waiter<C: Clock> {
    clock: C,
    spin: Duration,
}

/// Spins between clock reads.
const SPINS_PER_CHECK: u32 = 64;

impl<C: Clock> Waiter<C> {
    /// A waiter spinning up to `spin` before sleeping (`Duration::ZERO`: sleep at once).
    pub fn new(clock: C, spin: Duration) -> Self {
        Waiter { clock, spin }
    }

    /// The spin budget.
    pub fn spin(&self) -> Duration {
        self.spin
    }

    /// Sets the spin budget.
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// Notifies the peer through `chan` if `ring` says it must; returns whether it did.
    ///
    /// # Errors
    ///
    /// The channel's error.
    pub fn notify_if_needed<R: SharedRing + ?Sized, E: EventChannel>(
        &self,
        ring: &mut R,
        chan: &E,
    ) -> Result<bool, E::Error> {
        if ring.take_notify() {
            chan.notify()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Waits until `ring` is ready for `interest` (at least one byte), or `timeout` elapses.
    ///
    /// # Errors
    ///
    /// [`WaitError::TimedOut`], or the ring's or the channel's error.
    pub fn wait<R: SharedRing + ?Sized, E: EventChannel>(
        &self,
        ring: &mut R,
        chan: &E,
        interest: Interest,
        timeout: Duration,
    ) -> Result<(), WaitError<R::Error, E::Error>> {
        let ready = |ring: &R| -> Result<bool, WaitError<R::Error, E::Error>> {
            let n = match interest {
                Interest::Readable => ring.readable(),
                Interest::Writable => ring.writable(),
            }
            .map_err(WaitError::Ring)?;
            Ok(n > 0)
        };
        let start = self.clock.now();
        let deadline = start.saturating_add(timeout);
        if ready(ring)? {
            return Ok(());
        }
        if !self.spin.is_zero() {
            let spin_end = start.saturating_add(self.spin.min(timeout));
            loop {
                for _ in 0..SPINS_PER_CHECK {
                    core::hint::spin_loop();
                }
                if ready(ring)? {
                    return Ok(());
                }
                if self.clock.now() >= spin_end {
                    break;
                }
            }
        }
        loop {
            let ready_now = ring.prepare_wait(interest).map_err(WaitError::Ring)?;
            // `prepare_wait` may have published pending bytes that a sleeping peer must hear of.
            if ring.take_notify() {
                chan.notify().map_err(WaitError::Channel)?;
            }
            if ready_now {
                return Ok(());
            }
            let now = self.clock.now();
            if now >= deadline {
                return Err(WaitError::TimedOut);
            }
            match chan.wait(deadline - now).map_err(WaitError::Channel)? {
                WaitOutcome::Event => {
                    if ready(ring)? {
                        return Ok(());
                    }
                }
                WaitOutcome::Timeout => {
                    return if ready(ring)? {
                        Ok(())
                    } else {
                        Err(WaitError::TimedOut)
                    };
                }
            }
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::testutil::Guarded;
    use crate::v2::{V2Geometry, V2Ring};
    use pore_core::loopback::Loopback;
    use pore_core::{DomId, Events, GrantRef};
    use std::vec;

    #[test]
    fn blocking_stream_with_suppression() {
        let xen = Loopback::new();
        let (d1, d2) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
        let c1 = d1.alloc_unbound(DomId(2)).unwrap();
        let c2 = d2.bind_interdomain(DomId(1), c1.port()).unwrap();
        let geo = V2Geometry::new(0, 0).unwrap();
        let g = Guarded::new(geo.region_len());
        let (mut tx, _) = V2Ring::create(g.view(), geo, &[GrantRef(1), GrantRef(2)])
            .unwrap()
            .split();
        let (_, mut rx) = V2Ring::attach(g.view()).unwrap().split();
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
                        w.notify_if_needed(tx, c1).unwrap();
                        if k == 0 {
                            w.wait(tx, c1, Interest::Writable, timeout).unwrap();
                        }
                    }
                });
                let w = Waiter::new(StdClock::new(), spin);
                let mut buf = vec![0u8; 5000];
                let mut got = 0;
                while got < total {
                    let n = crate::RingReader::read(rx, &mut buf).unwrap();
                    got += n;
                    w.notify_if_needed(rx, c2).unwrap();
                    if n == 0 {
                        w.wait(rx, c2, Interest::Readable, timeout).unwrap();
                    }
                }
            });
        }
        assert!(Waiter::new(StdClock::default(), Duration::ZERO)
            .spin()
            .is_zero());
    }
}
