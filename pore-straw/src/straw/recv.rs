//! The receiving half of a straw.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pore_core::Backend;
use pore_ring::RingReader;

use crate::reasm::Got;

use super::shared::*;
use super::*;

impl<B: Backend> Receiver<B> {
    /// Counters of the straw (both halves).
    pub fn stats(&self) -> StrawStats {
        self.sh.stats()
    }

    /// Closes the straw gracefully from the receiving half, as [`Straw::close`] does: what we
    /// sent is drained first, then the peer's receiver ends with [`StrawError::Eof`] (frames
    /// the peer still sends us are dropped). A sending half split off fails with
    /// [`StrawError::Closed`] from then on.
    pub fn close(&self) -> Result<(), StrawError> {
        // The sending half's close, through a handle that counts as one more user while it
        // lives (its drop must not look like the last half going).
        self.sh.users.fetch_add(1, Ordering::AcqRel);
        Sender {
            sh: self.sh.clone(),
        }
        .close()
    }

    /// Receives one frame, blocking up to [`StrawConfig::io_timeout`].
    pub fn recv(&self) -> Result<Bytes, StrawError> {
        self.recv_timeout(self.sh.cfg.io_timeout)
    }

    /// Receives one frame, blocking up to `timeout`. [`StrawError::Eof`] once the peer closed
    /// and everything it sent was received.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Bytes, StrawError> {
        // A frame that is there already costs no clock read: where the vDSO cannot read the
        // time (a Xen PV guest without a stable TSC) every read is a system call.
        if let Step::Frame(f) = self.step(OnBlock::Return)? {
            return Ok(f);
        }
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            let seen = self.sh.bell_seq();
            let busy = match self.step(OnBlock::Spin(deadline))? {
                Step::Frame(f) => return Ok(f),
                Step::Busy => true,
                Step::Empty => false,
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(StrawError::TimedOut);
            }
            if busy {
                // More bytes wait in the ring: no sleep.
                continue;
            }
            if self.sh.peer_live_gone() {
                self.sh.peer_vanished();
                continue;
            }
            self.sh.sleep(seen, start, deadline - now)?;
            self.sh.spin_rx.slept(now.elapsed(), self.sh.cfg.spin);
        }
    }

    /// Receives one frame if a whole one is there; [`StrawError::WouldBlock`] otherwise
    /// (also when the call's share of work, a few skipped frames, is used up).
    pub fn try_recv(&self) -> Result<Bytes, StrawError> {
        match self.step(OnBlock::Ask)? {
            Step::Frame(f) => Ok(f),
            Step::Busy | Step::Empty => Err(StrawError::WouldBlock),
        }
    }

    /// One bounded step: at most [`RECV_BUDGET`] rounds without a frame, and none past the
    /// spin's deadline after the first.
    fn step(&self, on_block: OnBlock) -> Result<Step, StrawError> {
        let deadline = match on_block {
            OnBlock::Spin(d) => Some(d),
            OnBlock::Return | OnBlock::Ask => None,
        };
        let mut guard = lock(&self.sh.rx);
        let Some(st) = guard.as_mut() else {
            if let Some(f) = lock(&self.sh.leftover).pop_front() {
                self.sh
                    .stats
                    .frames_received
                    .fetch_add(1, Ordering::Relaxed);
                self.sh
                    .stats
                    .bytes_received
                    .fetch_add(f.len() as u64, Ordering::Relaxed);
                return Ok(Step::Frame(f));
            }
            return Err(self.sh.status_error().unwrap_or(StrawError::Closed));
        };
        if st.ring.is_broken() {
            return Err(self.sh.status_error().unwrap_or(StrawError::PeerGone));
        }
        let mut rounds = 0;
        loop {
            if rounds == RECV_BUDGET
                || (rounds > 0 && deadline.is_some_and(|d| Instant::now() >= d))
            {
                return Ok(Step::Busy);
            }
            rounds += 1;
            let r = st.framer.recv(&mut st.ring);
            if st.ring.take_notify() {
                match self.sh.notify() {
                    // A peer that is gone needs no wake-up, and what we just read (its last
                    // frame, its end of stream) is still ours: the next wait notices the loss.
                    Err(StrawError::PeerGone) | Ok(()) => {}
                    Err(e) => return Err(e),
                }
            }
            let got = match r {
                Ok(got) => got,
                Err(e) => return Err(self.sh.ring_failed(e)),
            };
            match got {
                Some(Got::Frame(f)) => {
                    self.sh
                        .stats
                        .frames_received
                        .fetch_add(1, Ordering::Relaxed);
                    self.sh
                        .stats
                        .bytes_received
                        .fetch_add(f.len() as u64, Ordering::Relaxed);
                    return Ok(Step::Frame(f));
                }
                Some(Got::Skipped(n)) => {
                    let count = self.sh.stats.frames_skipped.fetch_add(1, Ordering::Relaxed);
                    if count.is_power_of_two() || count == 0 {
                        tracing::warn!(peer = %self.sh.peer, len = n, skipped = count + 1, "straw: skipped an oversized frame");
                    } else {
                        tracing::debug!(peer = %self.sh.peer, len = n, "straw: skipped an oversized frame");
                    }
                }
                Some(Got::End) => {
                    self.sh.peer_finished.store(true, Ordering::Release);
                    return Err(StrawError::Eof);
                }
                None => {
                    let readable = match st.ring.readable() {
                        Ok(n) => n,
                        Err(e) => return Err(self.sh.ring_failed(e)),
                    };
                    // Nothing whole yet. After the peer finished or closed, an empty ring is the
                    // end.
                    if self.sh.peer_finished.load(Ordering::Acquire)
                        && !st.framer.in_progress()
                        && readable == 0
                    {
                        return Err(StrawError::Eof);
                    }
                    if let Some(e) = self.sh.status_error() {
                        if readable == 0 {
                            return Err(e);
                        }
                        continue;
                    }
                    if let Some(deadline) = deadline {
                        match self
                            .sh
                            .spin_until(&self.sh.spin_rx, deadline, || Ok(st.ring.readable()? > 0))
                        {
                            Ok(true) => continue,
                            Ok(false) => {}
                            Err(e) => return Err(self.sh.ring_failed(e)),
                        }
                    }
                    if let OnBlock::Return = on_block {
                        return Ok(Step::Empty);
                    }
                    match st.ring.prepare_wait() {
                        Ok(true) => continue,
                        Ok(false) => return Ok(Step::Empty),
                        Err(e) => return Err(self.sh.ring_failed(e)),
                    }
                }
            }
        }
    }
}
