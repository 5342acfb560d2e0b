//! The shared state of a straw: the rings, the event bell, the status and the counters.

use std::collections::{HashMap, VecDeque};
use std::string::String;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pore_core::{Backend, ErrorKind, EventChannel, SharedAccess, WaitOutcome};
use pore_ring::frame::FrameWriter;
use pore_ring::v2::{self};
use pore_ring::{RingError, RingReader};

use crate::handshake::{Closed, HandshakeError, Input, Role};
use crate::reasm::{Got, Reassembler};
use crate::{Endpoint, Format, Layout};
use pore_ring::spin::SpinBudget;

use super::mailbox::MailboxTx;
use super::open::*;
use super::*;

pub(super) const OPEN: u8 = 0;
pub(super) const PEER_CLOSED: u8 = 1;
pub(super) const PEER_GONE: u8 = 2;
pub(super) const CLOSING: u8 = 3;
pub(super) const CLOSED: u8 = 4;

/// What a step of a send or receive does when the ring cannot go on.
#[derive(Clone, Copy, Debug)]
pub(super) enum OnBlock {
    /// Return at once, asking the peer for nothing (the fast path before a blocking call
    /// reads the clock).
    Return,
    /// Ask the peer for an event (so that a sleep that follows is woken), then return.
    Ask,
    /// Spin (within the spin budget) until this deadline, then ask.
    Spin(Instant),
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) struct TxState<B: Backend> {
    pub(super) ring: Tx<B>,
    pub(super) framer: FrameWriter,
    /// A frame partly in the ring: it is finished before anything else.
    pub(super) pending: Option<Bytes>,
}

pub(super) struct RxState<B: Backend> {
    pub(super) ring: Rx<B>,
    pub(super) framer: Reassembler,
}

#[derive(Default)]
pub(super) struct BellState {
    pub(super) seq: u64,
    pub(super) on_channel: bool,
}

/// Fans the pore's single event channel out to both halves.
#[derive(Default)]
pub(super) struct Bell {
    pub(super) state: Mutex<BellState>,
    pub(super) cv: Condvar,
}

/// How a straw driven by the manager talks to its handshake machine.
pub(crate) type Hook = Box<dyn Fn(Input) + Send + Sync>;

/// How long a managed straw whose event channel died waits for the manager to learn from
/// xenstore whether the peer closed gracefully (end of stream) or vanished (peer gone): at
/// least this long, and until the manager has re-read the peer's state since we asked.
pub(super) const VANISH_GRACE: Duration = Duration::from_millis(250);

/// The shortest nap of a polling straw's wait (see [`Shared::sleep`]).
pub(super) const MIN_NAP: Duration = Duration::from_micros(20);

/// The longest a managed straw waits for that answer (a manager starved of CPU for longer:
/// the straw decides alone that the peer is gone).
pub(super) const VANISH_MAX_WAIT: Duration = Duration::from_secs(5);

pub(crate) struct Shared<B: Backend> {
    pub(super) pore: Mutex<Option<Mem<B>>>,
    pub(super) tx: Mutex<Option<TxState<B>>>,
    pub(super) rx: Mutex<Option<RxState<B>>>,
    /// Whole frames that still sat in the ring when the pore closed: delivered before the end of the stream (see
    /// [`Shared::shutdown_pore`]). Locked after `rx`.
    pub(super) leftover: Mutex<VecDeque<Bytes>>,
    pub(super) bell: Bell,
    pub(super) status: AtomicU8,
    pub(super) peer: Endpoint,
    pub(super) role: Role,
    pub(super) layout: Layout,
    pub(super) format: Format,
    /// Polling mode (D26): the rings neither raise wake flags nor send events, so a wait
    /// spins and naps (see [`Shared::sleep`]) instead of waiting on the event channel.
    pub(super) polling: bool,
    pub(super) cfg: StrawConfig,
    pub(super) live: Option<(usize, usize)>,
    pub(super) mailboxes: Mutex<HashMap<String, MailboxTx>>,
    pub(super) hook: Option<Hook>,
    pub(super) stats: Counters,
    pub(super) close_sent: AtomicBool,
    pub(super) finished: AtomicBool,
    /// A standalone straw wrote its end of stream ([`crate::reasm::END_OF_STREAM`]).
    pub(super) end_sent: AtomicBool,
    pub(super) peer_finished: AtomicBool,
    pub(super) vanishing: AtomicBool,
    /// Re-reads of the peer's state the data path asked the manager for, and the last one it
    /// answered (see [`Shared::peer_vanished`]).
    pub(super) vanish_asked: AtomicU64,
    pub(super) vanish_answered: AtomicU64,
    pub(super) users: AtomicUsize,
    /// The spin budgets of the sending and the receiving half.
    pub(super) spin_tx: SpinBudget,
    pub(super) spin_rx: SpinBudget,
    pub(super) done: Mutex<Option<Result<Closed, HandshakeError>>>,
    pub(super) done_cv: Condvar,
}

impl<B: Backend> Shared<B> {
    pub(super) fn status_error(&self) -> Option<StrawError> {
        match self.status.load(Ordering::Acquire) {
            OPEN => None,
            PEER_CLOSED => Some(StrawError::Eof),
            PEER_GONE => Some(StrawError::PeerGone),
            _ => Some(StrawError::Closed),
        }
    }

    pub(super) fn peer_live_gone(&self) -> bool {
        let Some((_, theirs)) = self.live else {
            return false;
        };
        lock(&self.pore)
            .as_ref()
            .is_some_and(|p| p.load_u8(theirs, Ordering::Acquire) == v2::LIVE_GONE)
    }

    /// Spins (up to `budget`'s next spin, never past `deadline`) until `ready` says the ring
    /// has what we wait for: `true` if it did. Called before arming the ring's wake-up, so a
    /// peer that answers within the spin costs neither side an event nor a sleep (see
    /// [`pore_ring::spin`]).
    pub(super) fn spin_until(
        &self,
        budget: &SpinBudget,
        deadline: Instant,
        mut ready: impl FnMut() -> Result<bool, RingError>,
    ) -> Result<bool, RingError> {
        let spin = budget.next(self.cfg.spin);
        if spin.is_zero() {
            return Ok(false);
        }
        let end = (Instant::now() + spin).min(deadline);
        loop {
            for _ in 0..64 {
                if ready()? {
                    budget.succeeded();
                    return Ok(true);
                }
                core::hint::spin_loop();
            }
            if Instant::now() >= end || self.status.load(Ordering::Acquire) != OPEN {
                // A polling straw keeps its full spin: it has no event to fall back on.
                if !self.polling {
                    budget.failed();
                }
                return Ok(false);
            }
            // A peer that shares our CPU runs now rather than after our spin (with nothing
            // else runnable here this returns at once).
            std::thread::yield_now();
        }
    }

    pub(super) fn ring_bell(&self) {
        let mut st = lock(&self.bell.state);
        st.seq = st.seq.wrapping_add(1);
        self.bell.cv.notify_all();
    }

    pub(super) fn bell_seq(&self) -> u64 {
        lock(&self.bell.state).seq
    }

    pub(super) fn notify(&self) -> Result<(), StrawError> {
        self.stats.notifies.fetch_add(1, Ordering::Relaxed);
        let pore = lock(&self.pore).clone();
        match pore {
            Some(p) => p.notify().map_err(StrawError::backend),
            None => Err(StrawError::Closed),
        }
    }

    /// Sleeps until an event may have arrived since `seen`, or `timeout` (capped by the slice).
    /// A polling straw (D26) expects no event. For the first [`StrawConfig::poll_sleep`] of
    /// its call (waited `since`) it only yields the CPU, and the caller spins again: a nap
    /// costs tens of µs more than asked (timer slack), and a peer that finds us napping
    /// spins out and naps too. Later it naps on the bell alone (a status change rings it) for
    /// a quarter of the time waited, at least [`MIN_NAP`] and at most `poll_sleep`.
    pub(super) fn sleep(
        &self,
        seen: u64,
        since: Instant,
        timeout: Duration,
    ) -> Result<(), StrawError> {
        let mut timeout = timeout.min(self.cfg.slice);
        if self.polling {
            let waited = since.elapsed();
            if waited < self.cfg.poll_sleep {
                std::thread::yield_now();
                return Ok(());
            }
            let nap = (waited / 4).clamp(MIN_NAP, self.cfg.poll_sleep.max(MIN_NAP));
            timeout = timeout.min(nap);
        }
        self.stats.sleeps.fetch_add(1, Ordering::Relaxed);
        let mut st = lock(&self.bell.state);
        if st.seq != seen {
            return Ok(());
        }
        // A polling straw naps on the bell only (no event will come); otherwise another
        // thread already sleeps on the channel and rings the bell.
        if self.polling || st.on_channel {
            let _ = self
                .bell
                .cv
                .wait_timeout(st, timeout)
                .unwrap_or_else(|p| p.into_inner());
            return Ok(());
        }
        st.on_channel = true;
        drop(st);
        let pore = lock(&self.pore).clone();
        let r = match &pore {
            Some(p) => p.channel().wait(timeout),
            None => {
                let mut st = lock(&self.bell.state);
                st.on_channel = false;
                self.bell.cv.notify_all();
                return Err(StrawError::Closed);
            }
        };
        drop(pore);
        let mut st = lock(&self.bell.state);
        st.on_channel = false;
        if matches!(r, Ok(WaitOutcome::Event)) {
            st.seq = st.seq.wrapping_add(1);
        }
        self.bell.cv.notify_all();
        drop(st);
        match r {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = StrawError::backend(e);
                if e == StrawError::PeerGone {
                    // The caller re-checks the ring, then the status.
                    self.peer_vanished();
                    return Ok(());
                }
                Err(e)
            }
        }
    }

    /// The data path saw the peer go (its port closed, its live byte cleared). A managed straw
    /// first asks the manager to re-read the peer's state: a graceful close unbinds the port
    /// just before it writes Closed, and that must end the stream, not fail it. It waits
    /// [`VANISH_GRACE`] and until the manager answered (on a loaded machine the manager may
    /// take longer than the grace: a fixed wait turned graceful closes into peer gone).
    pub(super) fn peer_vanished(&self) {
        if self.status.load(Ordering::Acquire) != OPEN
            || self.vanishing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        if let Some(hook) = &self.hook {
            let asked = self.vanish_asked.fetch_add(1, Ordering::AcqRel) + 1;
            hook(Input::Watch);
            let start = Instant::now();
            while self.status.load(Ordering::Acquire) == OPEN {
                let waited = start.elapsed();
                let answered = self.vanish_answered.load(Ordering::Acquire) >= asked;
                if (answered && waited >= VANISH_GRACE) || waited >= VANISH_MAX_WAIT {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if self.status.load(Ordering::Acquire) == OPEN {
                self.mark(PEER_GONE);
                hook(Input::PeerLost);
            }
        } else if self.peer_finished.load(Ordering::Acquire) {
            // A standalone peer that ended its stream, then closed.
            self.mark(PEER_CLOSED);
        } else {
            self.mark(PEER_GONE);
        }
    }

    /// The peer broke the ring protocol (a bad index, a bad header): the channel is dead
    /// (DESIGN: a bad index closes the channel). Marks the peer gone and, for a managed straw,
    /// tells the manager, which tears the straw down and cleans xenstore. Returns the error
    /// for the caller.
    pub(super) fn ring_failed(&self, e: RingError) -> StrawError {
        use pore_core::Error as _;
        if e.kind() != ErrorKind::Protocol {
            return e.into();
        }
        if self.status.load(Ordering::Acquire) == OPEN {
            tracing::warn!(peer = %self.peer, error = %e, "straw: the peer broke the ring; closing");
            self.mark(PEER_GONE);
            if let Some(hook) = &self.hook {
                hook(Input::PeerLost);
            }
        }
        e.into()
    }

    pub(super) fn user_gone(&self) {
        if self.users.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // The last half dropped without `close()`: let the manager close the straw.
        if let Some(hook) = &self.hook {
            if !self.close_sent.swap(true, Ordering::AcqRel) {
                hook(Input::Close);
            }
        }
    }

    /// Records a terminal status (the first one wins, except that a local close does not
    /// hide a peer's).
    pub(super) fn mark(&self, status: u8) {
        let _ = self
            .status
            .compare_exchange(OPEN, status, Ordering::AcqRel, Ordering::Acquire);
        if status == CLOSED {
            let _ =
                self.status
                    .compare_exchange(CLOSING, CLOSED, Ordering::AcqRel, Ordering::Acquire);
        }
        self.ring_bell();
    }

    /// Stops the data path and closes the pore (the close chart's "unmap refs" / "end access").
    /// Waits up to `grace` for blocked calls to let go of the pore; if they do not, the pore is
    /// closed quietly when the last of them does. Returns how many of our granted pages the
    /// peer still maps (left on the backend's revoke-later list; 0 when closed later).
    pub(crate) fn shutdown_pore(&self, grace: Duration) -> usize {
        if let Some((mine, _)) = self.live {
            if let Some(p) = lock(&self.pore).as_ref() {
                p.store_u8(mine, v2::LIVE_GONE, Ordering::Release);
                let _ = p.notify();
            }
        }
        drop(lock(&self.tx).take());
        {
            let mut rx = lock(&self.rx);
            if let Some(mut st) = rx.take() {
                // Under the rx lock: a receive sees the ring or the salvaged frames, never
                // neither.
                self.salvage(&mut st);
            }
        }
        let pore = lock(&self.pore).take();
        self.ring_bell();
        let Some(mut pore) = pore else { return 0 };
        let end = Instant::now() + grace;
        loop {
            match Arc::try_unwrap(pore) {
                Ok(p) => return close_counting_parked(p),
                Err(p) if Instant::now() < end => {
                    pore = p;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(_) => {
                    tracing::debug!(peer = %self.peer, "straw: pore still in use; closed later");
                    return 0;
                }
            }
        }
    }

    /// Before the pore goes: keeps the whole frames that still sit in the ring, so that the
    /// application receives them before the end of the stream (without this they were lost
    /// when the close chart closed our pore). Bounded by what the ring holds (a peer still writing
    /// cannot keep us here), and skipped for a broken ring.
    pub(super) fn salvage(&self, st: &mut RxState<B>) {
        if st.ring.is_broken() {
            return;
        }
        let budget = st.ring.capacity();
        let mut taken = 0usize;
        let mut leftover = lock(&self.leftover);
        while taken < budget {
            match st.framer.recv(&mut st.ring) {
                Ok(Some(Got::Frame(f))) => {
                    taken = taken.saturating_add(f.len() + 4);
                    leftover.push_back(f);
                }
                Ok(Some(Got::Skipped(n))) => taken = taken.saturating_add(n as usize + 4),
                Ok(Some(Got::End)) => {
                    self.peer_finished.store(true, Ordering::Release);
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        if !leftover.is_empty() {
            tracing::debug!(peer = %self.peer, frames = leftover.len(), "straw: frames kept past the pore's close");
        }
    }

    /// How many re-reads of the peer's state the data path asked for so far (the manager
    /// loads it when it takes a watch input, before it re-reads the state).
    pub(crate) fn vanish_asked(&self) -> u64 {
        self.vanish_asked.load(Ordering::Acquire)
    }

    /// The manager handled a watch input it took after the data path's `asked`-th request
    /// (it re-read the peer's state and acted on it).
    pub(crate) fn vanish_answered(&self, asked: u64) {
        self.vanish_answered.fetch_max(asked, Ordering::AcqRel);
    }

    pub(crate) fn peer_finished(&self) {
        self.peer_finished.store(true, Ordering::Release);
        self.ring_bell();
    }

    pub(crate) fn peer_left(&self, graceful: bool) {
        self.mark(if graceful { PEER_CLOSED } else { PEER_GONE });
    }

    pub(crate) fn is_finished(&self) -> bool {
        lock(&self.done).is_some()
    }

    pub(crate) fn finished(&self, result: Result<Closed, HandshakeError>) {
        match &result {
            Ok(Closed::ByPeer) => self.mark(PEER_CLOSED),
            Ok(Closed::Locally) => self.mark(CLOSED),
            Err(_) => self.mark(PEER_GONE),
        }
        *lock(&self.done) = Some(result);
        self.done_cv.notify_all();
    }
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) frames_sent: AtomicU64,
    pub(super) bytes_sent: AtomicU64,
    pub(super) frames_received: AtomicU64,
    pub(super) bytes_received: AtomicU64,
    pub(super) notifies: AtomicU64,
    pub(super) sleeps: AtomicU64,
    pub(super) frames_skipped: AtomicU64,
    pub(super) json_too_large: AtomicU64,
    pub(super) mailbox_full: AtomicU64,
}

impl<B: Backend> Shared<B> {
    pub(super) fn count_sent(&self, len: usize) {
        self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_sent
            .fetch_add(len as u64, Ordering::Relaxed);
    }

    pub(super) fn stats(&self) -> StrawStats {
        let c = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StrawStats {
            frames_sent: l(&c.frames_sent),
            bytes_sent: l(&c.bytes_sent),
            frames_received: l(&c.frames_received),
            bytes_received: l(&c.bytes_received),
            notifies: l(&c.notifies),
            sleeps: l(&c.sleeps),
            frames_skipped: l(&c.frames_skipped),
            json_too_large: l(&c.json_too_large),
            mailbox_full: l(&c.mailbox_full),
        }
    }
}
