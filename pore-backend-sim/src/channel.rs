//! Event channels: one end of an interdomain channel ([`SimChannel`]) and a domain's
//! event-channel operations ([`Events`] for [`SimDomain`]: allocate, bind, select, readiness).

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pore_core::{DomId, ErrorKind, EventChannel, Events, Port, WaitOutcome};

use crate::ctx::DomCtx;
use crate::domain::SimDomain;
use crate::error::{Result, SimError};
use crate::proto::Op;
use crate::table::{EndRef, EndState};

fn end_from(words: &[u32]) -> Result<(u32, EndRef)> {
    match words {
        [port, slot, side, gen, ..] if *side <= 1 => Ok((
            *port,
            EndRef {
                slot: *slot,
                side: *side,
                gen: *gen,
            },
        )),
        _ => Err(SimError::refused(
            ErrorKind::Protocol,
            "malformed port reply",
        )),
    }
}

/// The readiness eventfd of a domain handle, owned ([`SimChannel::readiness`]): it keeps the
/// handle's readiness watcher running while it lives.
pub struct ChannelReadiness {
    /// Keeps the watcher running.
    ctx: Arc<DomCtx>,
    efd: Arc<std::os::fd::OwnedFd>,
}

impl std::fmt::Debug for ChannelReadiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelReadiness")
            .field("domain", &self.ctx.id)
            .finish()
    }
}

impl ChannelReadiness {
    /// The eventfd: readable (level-triggered) from an event of the domain until
    /// [`ChannelReadiness::acknowledge`].
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.efd.as_fd()
    }

    /// Drains the eventfd after it polled readable (then check every channel).
    pub fn acknowledge(&self) {
        self.ctx.ack_readiness();
    }
}

/// One end of a simulated interdomain event channel.
pub struct SimChannel {
    ctx: Arc<DomCtx>,
    port: u32,
    end: EndRef,
    peer: DomId,
    persistent: bool,
    closed: bool,
}

impl std::fmt::Debug for SimChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimChannel")
            .field("domain", &self.ctx.id)
            .field("port", &self.port)
            .field("peer", &self.peer)
            .finish()
    }
}

impl SimChannel {
    pub(crate) fn new(
        ctx: Arc<DomCtx>,
        port: u32,
        end: EndRef,
        peer: DomId,
        persistent: bool,
    ) -> Self {
        SimChannel {
            ctx,
            port,
            end,
            peer,
            persistent,
            closed: false,
        }
    }

    /// The channel a port reply (`[port, slot, side, gen, ..]`) describes.
    pub(crate) fn from_reply(
        ctx: Arc<DomCtx>,
        words: &[u32],
        peer: DomId,
        persistent: bool,
    ) -> Result<Self> {
        let (port, end) = end_from(words)?;
        Ok(SimChannel::new(ctx, port, end, peer, persistent))
    }

    /// The domain at the other end (the one it was offered to, or bound to).
    pub fn peer(&self) -> DomId {
        self.peer
    }

    /// The readiness handle of the domain handle this channel was made by (as
    /// [`Events::readiness_fd`] of that [`SimDomain`]): readable when any channel of that
    /// domain may have fired. `None` if its watcher could not start.
    pub fn readiness(&self) -> Option<ChannelReadiness> {
        self.ctx.readiness_fd()?;
        let efd = self.ctx.readiness.get()?.efd.clone();
        Some(ChannelReadiness {
            ctx: self.ctx.clone(),
            efd,
        })
    }

    fn check(&self, consume: bool) -> Result<bool> {
        match self.ctx.table.end_state(self.end, consume) {
            EndState::Fired => Ok(true),
            // Silently unbound (PeerClose::Silent): nothing will ever fire, as on Xen.
            EndState::Idle | EndState::Unbound => Ok(false),
            EndState::PeerGone => Err(SimError::refused(
                ErrorKind::PeerGone,
                "the peer closed its port or died",
            )),
            EndState::Closed => Err(SimError::refused(
                ErrorKind::Closed,
                "the port was closed (its domain died)",
            )),
        }
    }

    fn ready(&self) -> bool {
        !matches!(
            self.ctx.table.end_state(self.end, false),
            EndState::Idle | EndState::Unbound
        )
    }

    fn shut(&mut self) -> Result<()> {
        if self.closed {
            return Err(SimError::refused(ErrorKind::Closed, "closing a port twice"));
        }
        self.closed = true;
        if self.persistent {
            return Ok(());
        }
        self.ctx.call(Op::Close, &[self.port]).map(drop)
    }
}

impl EventChannel for SimChannel {
    type Error = SimError;

    fn port(&self) -> Port {
        Port(self.port)
    }

    fn notify(&self) -> Result<()> {
        let t = &self.ctx.table;
        match t.end_state(self.end, false) {
            EndState::Closed => {
                return Err(SimError::refused(
                    ErrorKind::Closed,
                    "notify on a closed port",
                ))
            }
            EndState::PeerGone => {
                return Err(SimError::refused(
                    ErrorKind::PeerGone,
                    "the peer closed its port or died",
                ))
            }
            // The peer closed silently (PeerClose::Silent): Xen drops a send on an unbound
            // port and returns success.
            EndState::Unbound => return Ok(()),
            // An event may be pending for us while the peer is already gone: no kick into a
            // dead end (its domid may even be reused).
            EndState::Fired if t.peer_closed_silently(self.end) => return Ok(()),
            EndState::Fired | EndState::Idle => {}
        }
        if !t.is_bound(self.end) {
            return Err(SimError::refused(
                ErrorKind::NotFound,
                "notify on an unbound port",
            ));
        }
        t.kick(self.end.slot, 1 - self.end.side, self.peer);
        Ok(())
    }

    fn try_wait(&self) -> Result<bool> {
        self.check(true)
    }

    fn wait(&self, timeout: Duration) -> Result<WaitOutcome> {
        if self.check(true)? {
            return Ok(WaitOutcome::Event);
        }
        let start = Instant::now();
        let mut left = timeout;
        loop {
            self.ctx.table.sleep(self.ctx.id, left, || self.ready());
            if self.check(true)? {
                return Ok(WaitOutcome::Event);
            }
            left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(WaitOutcome::Timeout);
            }
        }
    }

    fn close(mut self) -> Result<()> {
        self.shut()
    }
}

impl Drop for SimChannel {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.shut();
        }
    }
}

impl Events for SimDomain {
    type Error = SimError;
    type Channel = SimChannel;

    fn alloc_unbound(&self, remote: DomId) -> Result<SimChannel> {
        let r = self.ctx.call(Op::AllocUnbound, &[remote.0 as u32])?;
        SimChannel::from_reply(self.ctx.clone(), &r.words, remote, false)
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<SimChannel> {
        let r = self.ctx.call(Op::Bind, &[remote.0 as u32, remote_port.0])?;
        SimChannel::from_reply(self.ctx.clone(), &r.words, remote, false)
    }

    fn select(
        &self,
        channels: &[&SimChannel],
        timeout: Duration,
        fired: &mut Vec<usize>,
    ) -> Result<()> {
        fired.clear();
        if channels.iter().any(|c| c.ctx.id != self.ctx.id) {
            return Err(SimError::refused(
                ErrorKind::InvalidInput,
                "select over a channel of another domain",
            ));
        }
        let mut start = None;
        loop {
            let mut gone = None;
            for (i, ch) in channels.iter().enumerate() {
                match ch.check(true) {
                    Ok(true) => fired.push(i),
                    Ok(false) => {}
                    Err(e) => {
                        gone.get_or_insert(e);
                    }
                }
            }
            if !fired.is_empty() {
                return Ok(());
            }
            if let Some(e) = gone {
                return Err(e);
            }
            let start = *start.get_or_insert_with(Instant::now);
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(());
            }
            self.ctx
                .table
                .sleep(self.ctx.id, left, || channels.iter().any(|c| c.ready()));
        }
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        self.ctx.readiness_fd()
    }
}
