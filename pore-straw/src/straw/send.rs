//! The sending half of a straw.

use std::string::ToString;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pore_core::Backend;
use pore_ring::frame::Progress;
use pore_ring::{RingError, RingWriter};

use crate::handshake::Input;
use crate::reasm::END_OF_STREAM;

use super::shared::*;
use super::*;

impl<B: Backend> Sender<B> {
    /// Counters of the straw (both halves).
    pub fn stats(&self) -> StrawStats {
        self.sh.stats()
    }

    /// Sends one frame, blocking up to [`StrawConfig::io_timeout`].
    pub fn send(&self, frame: Bytes) -> Result<(), StrawError> {
        self.send_timeout(frame, self.sh.cfg.io_timeout)
    }

    /// Sends one frame, blocking up to `timeout`. A frame larger than the ring streams through
    /// it. [`StrawError::TimedOut`]: nothing of it was taken, send it again later.
    /// [`StrawError::Queued`]: the timeout struck after the frame began; it stays queued
    /// and the next send, [`Sender::flush_timeout`] or close finishes it first (do not resend
    /// it).
    pub fn send_timeout(&self, frame: Bytes, timeout: Duration) -> Result<(), StrawError> {
        if self.too_large(frame.len()) {
            return Err(StrawError::TooLarge(frame.len()));
        }
        let mut frame = Some(frame);
        // A frame the ring takes at once costs no clock read (see `Receiver::recv_timeout`).
        if self.step(&mut frame, OnBlock::Return)? {
            return Ok(());
        }
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            let seen = self.sh.bell_seq();
            match self.step(&mut frame, OnBlock::Spin(deadline))? {
                true => return Ok(()),
                false => match self.wait(seen, start, deadline) {
                    // Taken, partly in the ring: it will be finished, never resend it.
                    Err(StrawError::TimedOut) if frame.is_none() => return Err(StrawError::Queued),
                    r => r?,
                },
            }
        }
    }

    /// Sends one frame if the ring takes at least its beginning now; a frame only partly in the
    /// ring is finished by later calls (or [`Sender::flush_timeout`]). Fails with
    /// [`StrawError::WouldBlock`] (nothing sent) if the ring has no room.
    pub fn try_send(&self, frame: Bytes) -> Result<(), StrawError> {
        if self.too_large(frame.len()) {
            return Err(StrawError::TooLarge(frame.len()));
        }
        let mut frame = Some(frame);
        self.step(&mut frame, OnBlock::Ask)?;
        match frame {
            None => Ok(()),
            Some(_) => Err(StrawError::WouldBlock),
        }
    }

    /// Over [`StrawConfig::max_frame`], or as long as the end-of-stream marker says.
    fn too_large(&self, len: usize) -> bool {
        len > self.sh.cfg.max_frame || len >= END_OF_STREAM as usize
    }

    /// Finishes a partly sent frame, blocking up to `timeout`.
    pub fn flush_timeout(&self, timeout: Duration) -> Result<(), StrawError> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut none = None;
        loop {
            let seen = self.sh.bell_seq();
            if self.step(&mut none, OnBlock::Spin(deadline))? {
                return Ok(());
            }
            self.wait(seen, start, deadline)?;
        }
    }

    /// Wraps `msg` in the seed's JSON envelope `{"addr": addr, "msg": msg}` and sends it.
    pub fn send_to(&self, addr: &str, msg: &serde_json::Value) -> Result<(), StrawError> {
        let v = serde_json::json!({ "addr": addr, "msg": msg });
        let bytes = serde_json::to_vec(&v).map_err(|e| StrawError::Json(e.to_string()))?;
        self.send(Bytes::from(bytes))
    }

    /// One step: finish the pending frame, then start `frame` (taken when it is entirely or
    /// partly in the ring). `true`: nothing is pending and `frame` was taken. With a
    /// `deadline` (a blocking call) it spins for room before giving up.
    fn step(&self, frame: &mut Option<Bytes>, on_block: OnBlock) -> Result<bool, StrawError> {
        if self.sh.finished.load(Ordering::Acquire) && frame.is_some() {
            return Err(StrawError::Closed);
        }
        if let Some(e) = self.sh.status_error() {
            return Err(match e {
                StrawError::Eof => StrawError::Closed,
                e => e,
            });
        }
        let mut guard = lock(&self.sh.tx);
        let st = guard.as_mut().ok_or(StrawError::Closed)?;
        if st.ring.is_broken() {
            return Err(self.sh.status_error().unwrap_or(StrawError::PeerGone));
        }
        let mut notify = false;
        let r = self.pump(st, frame, &mut notify, on_block);
        drop(guard);
        let finished = r.map_err(|e| self.sh.ring_failed(e))?;
        if notify {
            self.sh.notify()?;
        }
        Ok(finished)
    }

    /// The ring work of [`Sender::step`].
    fn pump(
        &self,
        st: &mut TxState<B>,
        frame: &mut Option<Bytes>,
        notify: &mut bool,
        on_block: OnBlock,
    ) -> Result<bool, RingError> {
        loop {
            let mut done = true;
            if let Some(p) = st.pending.clone() {
                match st.framer.send_deferred_in_place(&mut st.ring, &p)? {
                    Progress::Done => {
                        st.pending = None;
                        self.sh.count_sent(p.len());
                    }
                    Progress::Pending => done = false,
                }
            }
            if done {
                if let Some(f) = frame.take() {
                    match st.framer.send_deferred_in_place(&mut st.ring, &f)? {
                        Progress::Done => self.sh.count_sent(f.len()),
                        Progress::Pending if st.framer.in_progress() => {
                            st.pending = Some(f);
                            done = false;
                        }
                        Progress::Pending => {
                            *frame = Some(f);
                            done = false;
                        }
                    }
                }
            }
            st.ring.commit()?;
            *notify |= st.ring.take_notify();
            if done {
                return Ok(true);
            }
            match on_block {
                OnBlock::Return => return Ok(false),
                OnBlock::Ask => {}
                OnBlock::Spin(deadline) => {
                    if self
                        .sh
                        .spin_until(&self.sh.spin_tx, deadline, || Ok(st.ring.writable()? > 0))?
                    {
                        continue;
                    }
                }
            }
            // About to wait for room: ask to be woken, then re-check.
            if !st.ring.prepare_wait()? {
                return Ok(false);
            }
        }
    }

    /// Sleeps until an event may have arrived since `seen` (a polling straw: a nap that
    /// grows with the time waited `since`), or `deadline`, which fails with `TimedOut`.
    fn wait(&self, seen: u64, since: Instant, deadline: Instant) -> Result<(), StrawError> {
        let now = Instant::now();
        if now >= deadline {
            return Err(StrawError::TimedOut);
        }
        if self.sh.peer_live_gone() {
            self.sh.peer_vanished();
            return Ok(());
        }
        self.sh.sleep(seen, since, deadline - now)?;
        self.sh.spin_tx.slept(now.elapsed(), self.sh.cfg.spin);
        Ok(())
    }

    /// Finishes a partly sent frame and waits (up to `timeout`) until the peer has consumed
    /// everything we sent; the straw stays open (e.g. wait for this, then keep receiving until
    /// the peer closes).
    pub fn drain_timeout(&self, timeout: Duration) -> Result<(), StrawError> {
        self.drain(timeout)
    }

    fn drain(&self, timeout: Duration) -> Result<(), StrawError> {
        let start = Instant::now();
        let deadline = start + timeout;
        self.flush_timeout(timeout)?;
        loop {
            let seen = self.sh.bell_seq();
            {
                let mut guard = lock(&self.sh.tx);
                let st = guard.as_mut().ok_or(StrawError::Closed)?;
                let cap = st.ring.capacity();
                let empty = st.ring.writable().and_then(|w| {
                    Ok(w == cap || (st.ring.prepare_wait()? && st.ring.writable()? == cap))
                });
                drop(guard);
                if empty.map_err(|e| self.sh.ring_failed(e))? {
                    return Ok(());
                }
            }
            if let Some(e) = self.sh.status_error() {
                return Err(e);
            }
            self.wait(seen, start, deadline)?;
        }
    }

    /// Half-closes: finishes a partly sent frame, waits (up to
    /// [`StrawConfig::close_timeout`]) until the peer consumed everything, then tells the peer
    /// that nothing more will come (its receiver then ends with [`StrawError::Eof`]). We can
    /// still receive; later sends fail with [`StrawError::Closed`]. Close the straw once both
    /// directions are done.
    ///
    /// A managed straw tells the peer through xenstore (`straw-eof`); a straw made with
    /// [`Straw::new`] writes an end-of-stream marker into the ring after the last frame (a
    /// length prefix of `0xffff_ffff`, which no frame has), which a straw made with
    /// [`Straw::new`] on the other side reads as the end.
    pub fn finish(&self) -> Result<(), StrawError> {
        let timeout = self.sh.cfg.close_timeout;
        let deadline = Instant::now() + timeout;
        self.drain(timeout)?;
        self.sh.finished.store(true, Ordering::Release);
        match &self.sh.hook {
            Some(hook) => hook(Input::Finish),
            None => self.send_end(deadline)?,
        }
        Ok(())
    }

    /// Writes a standalone straw's end of stream after every frame sent so far (later frames
    /// are refused), waiting for room up to `deadline`.
    fn send_end(&self, deadline: Instant) -> Result<(), StrawError> {
        self.sh.finished.store(true, Ordering::Release);
        if self.sh.end_sent.load(Ordering::Acquire) {
            return Ok(());
        }
        let marker = END_OF_STREAM.to_be_bytes();
        let start = Instant::now();
        loop {
            let seen = self.sh.bell_seq();
            let mut guard = lock(&self.sh.tx);
            let st = guard.as_mut().ok_or(StrawError::Closed)?;
            let mut notify = false;
            let r = (|| -> Result<bool, RingError> {
                // A frame another thread began goes first.
                if !self.pump(st, &mut None, &mut notify, OnBlock::Ask)? {
                    return Ok(false);
                }
                let room = |st: &mut TxState<B>| -> Result<bool, RingError> {
                    Ok(st.ring.writable()? >= marker.len())
                };
                if !(room(st)? || st.ring.prepare_wait()? && room(st)?) {
                    return Ok(false);
                }
                st.ring.write_deferred(&marker)?;
                st.ring.commit()?;
                notify |= st.ring.take_notify();
                Ok(true)
            })();
            drop(guard);
            let done = r.map_err(|e| self.sh.ring_failed(e))?;
            if done {
                self.sh.end_sent.store(true, Ordering::Release);
            }
            if notify {
                self.sh.notify()?;
            }
            if done {
                return Ok(());
            }
            if let Some(e) = self.sh.status_error() {
                return Err(e);
            }
            self.wait(seen, start, deadline)?;
        }
    }

    /// Closes the straw gracefully; see [`Straw::close`].
    pub fn close(&self) -> Result<(), StrawError> {
        let timeout = self.sh.cfg.close_timeout;
        let deadline = Instant::now() + timeout;
        let drained = match self.drain(timeout) {
            // The peer closed first: nothing more can be delivered, and that is no failure.
            Err(_) if self.sh.status.load(Ordering::Acquire) == PEER_CLOSED => Ok(()),
            d => d,
        };
        if let Err(e) = &drained {
            tracing::warn!(peer = %self.sh.peer, error = %e, "straw: closing without a full drain");
        }
        if self.sh.hook.is_none() && self.sh.status.load(Ordering::Acquire) == OPEN {
            // Standalone: the peer reads the end of the stream after our last frame.
            if let Err(e) = self.send_end(deadline) {
                tracing::debug!(peer = %self.sh.peer, error = %e, "straw: no end of stream written");
            }
        }
        let _ = self
            .sh
            .status
            .compare_exchange(OPEN, CLOSING, Ordering::AcqRel, Ordering::Acquire);
        match &self.sh.hook {
            None => {
                // Standalone: close the pore ourselves.
                self.sh.shutdown_pore(Duration::from_millis(200));
                self.sh.mark(CLOSED);
                drained
            }
            Some(hook) => {
                if !self.sh.close_sent.swap(true, Ordering::AcqRel) {
                    hook(Input::Close);
                }
                // The manager runs the close chart; wait for its verdict.
                let wait = timeout * 2 + Duration::from_secs(1);
                let guard = lock(&self.sh.done);
                let (guard, _) = self
                    .sh
                    .done_cv
                    .wait_timeout_while(guard, wait, |d| d.is_none())
                    .unwrap_or_else(|p| p.into_inner());
                match guard.clone() {
                    Some(Ok(_)) => drained,
                    Some(Err(e)) => Err(StrawError::Handshake(e)),
                    None => Err(StrawError::TimedOut),
                }
            }
        }
    }
}
