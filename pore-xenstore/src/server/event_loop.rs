//! The event loop: one thread waits (epoll) on every unix listener and client socket, reads
//! requests, runs them against the store and writes the replies without blocking, as C
//! xenstored does (D24). A request never crosses threads on its way in or out.
//!
//! Fairness: a connection gets at most [`FRAMES_PER_ROUND`] requests handled per round of
//! the loop, so one that floods requests delays the others by that many requests at most.
//! A connection whose output is queued (it does not read its replies) is not read until
//! its queue drains; what it makes the daemon hold is bounded by its read buffer
//! ([`READ_BUF`]), the replies of one round and `max_queued_events` watch events (later
//! events are dropped, as in C).
//!
//! On one CPU (a dom0 with one vCPU, or the daemon pinned), the loop yields the CPU before it
//! sleeps after a round that served socket requests: the clients its replies woke then run,
//! and write their next request whole, instead of being preempted by the loop's wake-up after
//! a request's first write (libxenstore writes the header and the payload separately). Guest
//! rounds do not count: a guest writes a request whole, and the yield doubled its round trip.
//!
//! Guest rings whose [`GuestLink`] has a [`GuestReadiness`] are served here too (D25): the
//! loop waits on each distinct readiness descriptor (one for every guest bound through one
//! event device). When one is readable it is acknowledged, then every guest sharing it is
//! visited, as C xenstored visits every domain: its channel's event consumed
//! (`try_wait`), its queued output flushed, and, if none stays queued, its request ring read
//! and up to [`FRAMES_PER_ROUND`] requests handled. Every guest is also visited once per
//! [`SWEEP`], a safety net against a lost wake-up. A guest whose link has no readiness keeps
//! a thread of its own (`service::guest_loop`).
//!
//! With several CPUs, after a round that handled a guest's requests, the loop looks at that
//! guest's ring a few more times before it sleeps ([`Loop::linger`]): a guest that sends its
//! next request at once (a toolstack or a frontend doing a series of operations) is served
//! without a wake-up through its event channel and the readiness descriptor. The looks are
//! bounded by a count, [`LINGER_LOOKS`] (no clock read: in a Xen PV dom0 a clock read is a
//! system call), and every descriptor is polled without waiting every
//! [`LINGER_POLL_EVERY`] looks, so nothing else waits long for the lingering. On one CPU
//! the loop does not linger: the guest could not run meanwhile (and yielding between looks
//! measured slower than sleeping at once).

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::Timespec;
use rustix::net::{RecvFlags, SendFlags};

use super::conn::{Outbox, Sink};
use super::ring::{GuestLink, GuestReadiness};
use super::service::{Inner, POLL_INTERVAL};
use super::ConnId;
use crate::wire::{HEADER_LEN, PAYLOAD_MAX};
use pore_core::DomId;

/// Requests handled per connection per round of the loop.
pub(crate) const FRAMES_PER_ROUND: usize = 8;

/// Bytes read from a client at most before its requests are handled.
pub(crate) const READ_BUF: usize = 64 * 1024;

/// Clients accepted per listener per round.
const ACCEPTS_PER_ROUND: usize = 64;

/// How often every guest is visited even without a wake-up.
pub(crate) const SWEEP: Duration = Duration::from_secs(1);

/// Bytes of a guest's requests read at most before they are handled (two whole messages).
const GUEST_BUF: usize = 2 * (HEADER_LEN + PAYLOAD_MAX);

/// Looks at the rings of the guests just served before sleeping, with several CPUs
/// ([`Loop::linger`]), each after a spin hint: with the polls every [`LINGER_POLL_EVERY`]
/// looks, some tens of µs at most (estimated, not timed).
const LINGER_LOOKS: u32 = 256;

/// The loop polls its descriptors (without waiting) every this many looks of a linger.
const LINGER_POLL_EVERY: u32 = 32;

/// A client socket's output.
pub(crate) struct SocketSink(pub(crate) UnixStream);

impl Sink for SocketSink {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match rustix::net::send(&self.0, buf, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
                Ok(n) => return Ok(n),
                Err(rustix::io::Errno::AGAIN) => return Ok(0),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Wakes the loop from another thread (a socket pair; the loop polls its read end).
pub(crate) struct Waker {
    tx: UnixStream,
    rx: UnixStream,
}

impl Waker {
    pub(crate) fn new() -> io::Result<Self> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Waker { tx, rx })
    }

    /// Makes the loop's next poll return (a full pair means a wake is already pending).
    pub(crate) fn wake(&self) {
        let _ = rustix::net::send(&self.tx, &[1], SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
    }

    fn drain(&self) {
        let mut b = [0u8; 64];
        while let Ok((n, _)) = rustix::net::recv(&self.rx, &mut b, RecvFlags::DONTWAIT) {
            if n == 0 {
                break;
            }
        }
    }
}

/// Set once a listener is closed (its socket file removed if it was still ours).
#[derive(Default)]
pub(crate) struct Done {
    done: Mutex<bool>,
    cv: Condvar,
}

impl Done {
    fn set(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Waits until set, checking at least every `POLL_INTERVAL`.
    pub(crate) fn wait(&self) {
        let mut g = self.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*g {
            g = match self.cv.wait_timeout(g, POLL_INTERVAL) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// A listening socket handed to the loop. Dropping it (when the loop ends, or if the
/// loop is gone) removes its socket file if that is still the one created for it, and
/// releases [`Listener::join`](super::Listener::join).
pub(crate) struct ListenEntry {
    pub(crate) listener: UnixListener,
    pub(crate) path: PathBuf,
    pub(crate) ours: (u64, u64),
    pub(crate) done: Arc<Done>,
}

impl Drop for ListenEntry {
    fn drop(&mut self) {
        match super::unix::file_id(&self.path) {
            Ok(id) if id == self.ours => {
                let _ = std::fs::remove_file(&self.path);
            }
            _ => tracing::debug!(
                path = %self.path.display(),
                "socket path taken over by another: left in place"
            ),
        }
        tracing::debug!("listener stopped");
        self.done.set();
    }
}

/// A guest ring handed to the loop (its link has a readiness handle).
pub(crate) struct GuestEntry {
    pub(crate) conn: ConnId,
    pub(crate) domid: DomId,
    pub(crate) link: GuestLink,
    pub(crate) outbox: Arc<Outbox>,
    /// Set when the domain is released.
    pub(crate) stop: Arc<std::sync::atomic::AtomicBool>,
}

/// What other threads ask of the loop.
pub(crate) enum Command {
    /// Serve a new listener.
    Listen(ListenEntry),
    /// Serve a guest's ring.
    Guest(Box<GuestEntry>),
    /// Stop serving the guest of this connection (its domain was released).
    Release(ConnId),
}

/// One guest ring served by the loop.
struct Guest {
    e: GuestEntry,
    /// Its slot in `Loop::sources`, if its readiness is registered.
    source: Option<usize>,
    buf: Vec<u8>,
    filled: usize,
    /// The round it was last visited in (a guest is served once per round).
    round: u64,
}

/// What became of a guest after a visit.
enum Visit {
    /// Still served; `more`: requests stay buffered past the round's budget; `handled`: at
    /// least one request was handled.
    Keep { more: bool, handled: bool },
    /// No longer served (released, gone, or broke the protocol).
    Drop,
}

impl Guest {
    /// Consumes its event, flushes its output and, unless output stays queued, reads its
    /// ring and handles up to [`FRAMES_PER_ROUND`] requests.
    fn visit(&mut self, inner: &Arc<Inner>, out: &mut Vec<super::store::Outgoing>) -> Visit {
        let domid = self.e.domid;
        if self.e.stop.load(Ordering::Relaxed) {
            return Visit::Drop;
        }
        if let Err(e) = self.e.link.try_wait() {
            if pore_core::Error::is_peer_gone(&e) {
                tracing::debug!(%domid, "guest gone: its event channel closed");
            } else {
                tracing::warn!(%domid, error = %e, "guest event channel failed");
            }
            return Visit::Drop;
        }
        if self.e.outbox.flush() || self.e.outbox.is_dead() {
            // Its replies are not consumed: read nothing more until they are.
            return if self.e.outbox.is_dead() {
                tracing::warn!(%domid, "guest ring broken; no longer served");
                Visit::Drop
            } else {
                Visit::Keep {
                    more: false,
                    handled: false,
                }
            };
        }
        if self.filled < self.buf.len() {
            match self.e.link.read(&mut self.buf[self.filled..]) {
                Ok(0) => {}
                Ok(n) => {
                    self.filled += n;
                    // Room in its request ring.
                    let _ = self.e.link.notify();
                }
                Err(e) => {
                    tracing::warn!(%domid, error = %e, "guest ring broken; no longer served");
                    return Visit::Drop;
                }
            }
        }
        if self.filled == 0 {
            return Visit::Keep {
                more: false,
                handled: false,
            };
        }
        match inner.process(self.e.conn, &self.buf[..self.filled], out, FRAMES_PER_ROUND) {
            Ok((used, more)) => {
                self.buf.copy_within(used..self.filled, 0);
                self.filled -= used;
                Visit::Keep {
                    more,
                    handled: used > 0,
                }
            }
            Err(()) => {
                tracing::warn!(%domid, "guest message too long; ring closed");
                self.e.link.protocol_error();
                Visit::Drop
            }
        }
    }
}

impl Guest {
    /// Reads what its request ring holds into the buffer, without handling it (the loop's
    /// look before sleeping); true if bytes came, or if the ring failed (the next visit
    /// drops it). A guest whose replies are queued is not read.
    fn look(&mut self) -> bool {
        if self.e.stop.load(Ordering::Relaxed)
            || self.filled >= self.buf.len()
            || self.e.outbox.pending()
        {
            return false;
        }
        match self.e.link.read(&mut self.buf[self.filled..]) {
            Ok(0) => false,
            Ok(n) => {
                self.filled += n;
                // Room in its request ring.
                let _ = self.e.link.notify();
                true
            }
            Err(_) => true,
        }
    }
}

/// A readiness descriptor of guests, and the guests (tokens) it wakes.
struct Source {
    ready: Arc<dyn GuestReadiness>,
    raw: RawFd,
    members: Vec<u64>,
}

/// One client socket.
struct Client {
    stream: UnixStream,
    conn: ConnId,
    outbox: Arc<Outbox>,
    buf: Vec<u8>,
    filled: usize,
    /// The last round stopped at its request budget: whole requests may be buffered.
    more: bool,
    /// Registered for room to write (its output is queued), not for reading.
    out: bool,
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs() as _,
        tv_nsec: d.subsec_nanos() as _,
    }
}

/// What to do with a client after a round.
enum After {
    Keep,
    Close,
}

impl Client {
    /// Handles up to [`FRAMES_PER_ROUND`] buffered requests.
    fn handle(&mut self, inner: &Arc<Inner>, out: &mut Vec<super::store::Outgoing>) -> After {
        match inner.process(self.conn, &self.buf[..self.filled], out, FRAMES_PER_ROUND) {
            Ok((used, more)) => {
                self.buf.copy_within(used..self.filled, 0);
                self.filled -= used;
                self.more = more;
                if self.outbox.is_dead() {
                    After::Close
                } else {
                    After::Keep
                }
            }
            Err(()) => After::Close,
        }
    }

    /// Reads what is there (once), then handles requests.
    fn read(&mut self, inner: &Arc<Inner>, out: &mut Vec<super::store::Outgoing>) -> After {
        if self.filled < self.buf.len() {
            match (&self.stream).read(&mut self.buf[self.filled..]) {
                Ok(0) => return After::Close,
                Ok(n) => self.filled += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "client read failed");
                    return After::Close;
                }
            }
        }
        self.handle(inner, out)
    }

    fn close(self, inner: &Inner) {
        tracing::debug!(conn = self.conn.0, "client gone");
        inner.remove_conn(self.conn);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Tokens of the waker, of listeners and of guests' readiness sources (clients use their
/// `ConnId`, below these).
const WAKER: u64 = u64::MAX;
const LISTENER: u64 = 1 << 63;
const SOURCE: u64 = 1 << 62;

/// Waits for reading (`out` false) or for room to write (`out` true).
fn interest(out: bool) -> EventFlags {
    if out {
        EventFlags::OUT
    } else {
        EventFlags::IN
    }
}

/// The loop's state.
struct Loop {
    inner: Arc<Inner>,
    epoll: OwnedFd,
    listeners: Vec<ListenEntry>,
    clients: HashMap<u64, Client>,
    out: Vec<super::store::Outgoing>,
    /// Clients that stopped at their request budget with requests buffered.
    more: Vec<u64>,
    /// Guest rings served here, by connection.
    guests: HashMap<u64, Guest>,
    /// Readiness descriptors of guests (a slot is `None` once its last guest left).
    sources: Vec<Option<Source>>,
    /// Guests that stopped at their request budget with requests buffered.
    guest_more: Vec<u64>,
    /// Guests whose requests were handled this round (looked at before sleeping).
    guest_hot: Vec<u64>,
    /// The current round (guests are visited once per round).
    round: u64,
}

impl Loop {
    fn close(&mut self, tok: u64) {
        if let Some(c) = self.clients.remove(&tok) {
            // The outbox holds a duplicate of the socket: epoll would keep it registered.
            let _ = epoll::delete(&self.epoll, &c.stream);
            c.close(&self.inner);
        }
    }

    /// Waits for room to write (`out`) or for requests.
    fn want(&mut self, tok: u64, out: bool) {
        let Some(c) = self.clients.get_mut(&tok) else {
            return;
        };
        if c.out != out {
            c.out = out;
            if let Err(e) = epoll::modify(
                &self.epoll,
                &c.stream,
                EventData::new_u64(tok),
                interest(out),
            ) {
                tracing::warn!(error = %e, "epoll: cannot change a client's interest");
                self.close(tok);
            }
        }
    }

    /// Starts serving a guest: registers its readiness (once per descriptor) and visits it
    /// (it may have written requests before it was handed over).
    fn add_guest(&mut self, e: GuestEntry) {
        let tok = e.conn.0;
        let source = e.link.readiness().cloned().and_then(|ready| {
            let raw = ready.fd().as_raw_fd();
            if let Some(i) = self
                .sources
                .iter()
                .position(|s| s.as_ref().is_some_and(|s| s.raw == raw))
            {
                if let Some(s) = &mut self.sources[i] {
                    s.members.push(tok);
                }
                return Some(i);
            }
            let i = self
                .sources
                .iter()
                .position(Option::is_none)
                .unwrap_or(self.sources.len());
            if let Err(err) = epoll::add(
                &self.epoll,
                ready.fd(),
                EventData::new_u64(SOURCE + i as u64),
                EventFlags::IN,
            ) {
                tracing::error!(
                    error = %err,
                    "epoll: cannot add a guest's readiness; it is served by the sweep only"
                );
                return None;
            }
            let s = Source {
                ready,
                raw,
                members: vec![tok],
            };
            if i == self.sources.len() {
                self.sources.push(Some(s));
            } else {
                self.sources[i] = Some(s);
            }
            Some(i)
        });
        tracing::debug!(domid = %e.domid, "guest ring served by the event loop");
        self.guests.insert(
            tok,
            Guest {
                e,
                source,
                buf: vec![0u8; GUEST_BUF],
                filled: 0,
                round: 0,
            },
        );
        self.visit_guest(tok);
    }

    /// Stops serving guest `tok` (its link is dropped here; its output side goes with the
    /// store's connection).
    fn remove_guest(&mut self, tok: u64) {
        let Some(g) = self.guests.remove(&tok) else {
            return;
        };
        tracing::debug!(domid = %g.e.domid, "guest no longer served by the event loop");
        if let Some(i) = g.source {
            if let Some(s) = &mut self.sources[i] {
                s.members.retain(|&t| t != tok);
                if s.members.is_empty() {
                    let _ = epoll::delete(&self.epoll, s.ready.fd());
                    self.sources[i] = None;
                }
            }
        }
    }

    /// Visits guest `tok` once per round.
    fn visit_guest(&mut self, tok: u64) {
        let Some(g) = self.guests.get_mut(&tok) else {
            return;
        };
        if g.round == self.round {
            return;
        }
        g.round = self.round;
        match g.visit(&self.inner, &mut self.out) {
            Visit::Keep { more, handled } => {
                if more {
                    self.guest_more.push(tok);
                } else if handled {
                    self.guest_hot.push(tok);
                }
            }
            Visit::Drop => self.remove_guest(tok),
        }
    }

    /// Before sleeping after a round that handled guests' requests (several CPUs only):
    /// looks at those guests' rings up to [`LINGER_LOOKS`] times, and stops at the first
    /// that holds bytes (it is visited next round) or at the first event of any descriptor
    /// (left in `events`).
    fn linger(&mut self, events: &mut Vec<epoll::Event>) {
        let hot = std::mem::take(&mut self.guest_hot);
        let now = timespec(Duration::ZERO);
        for i in 0..LINGER_LOOKS {
            std::hint::spin_loop();
            for &tok in &hot {
                if self.guests.get_mut(&tok).is_some_and(Guest::look) {
                    self.guest_more.push(tok);
                }
            }
            if !self.guest_more.is_empty() {
                return;
            }
            if i % LINGER_POLL_EVERY == LINGER_POLL_EVERY - 1 {
                let ready = epoll::wait(
                    &self.epoll,
                    rustix::buffer::spare_capacity(events),
                    Some(&now),
                );
                if !matches!(ready, Ok(0)) {
                    return;
                }
            }
        }
    }

    /// Source `i` polled readable: acknowledge it, then visit every guest it wakes.
    fn wake_source(&mut self, i: usize) {
        let members = match self.sources.get(i) {
            Some(Some(s)) => {
                s.ready.acknowledge();
                s.members.clone()
            }
            _ => return,
        };
        for tok in members {
            self.visit_guest(tok);
        }
    }

    /// Accepts what is waiting on listener `i` (at most [`ACCEPTS_PER_ROUND`] clients) and
    /// registers each for reading.
    fn accept(&mut self, i: usize) {
        for _ in 0..ACCEPTS_PER_ROUND {
            let s = match self.listeners[i].listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // E.g. out of file descriptors: the listener stays readable, so pause a
                    // little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(10));
                    return;
                }
            };
            let sink = match s.set_nonblocking(true).and_then(|_| s.try_clone()) {
                Ok(c) => SocketSink(c),
                Err(e) => {
                    tracing::warn!(error = %e, "client socket");
                    continue;
                }
            };
            let (conn, outbox) = self.inner.add_conn(pore_core::DomId::DOM0, Box::new(sink));
            tracing::debug!(conn = conn.0, "client connected");
            let c = Client {
                stream: s,
                conn,
                outbox,
                buf: vec![0u8; READ_BUF],
                filled: 0,
                more: false,
                out: false,
            };
            let tok = conn.0;
            if tok >= SOURCE {
                c.close(&self.inner);
                continue;
            }
            match epoll::add(
                &self.epoll,
                &c.stream,
                EventData::new_u64(tok),
                EventFlags::IN,
            ) {
                Ok(()) => {
                    self.clients.insert(tok, c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "epoll: cannot add a client");
                    c.close(&self.inner);
                }
            }
        }
    }

    /// Acts on a client after `flags` (or, with none, on its buffered requests).
    fn serve(&mut self, tok: u64, flags: EventFlags) {
        let Some(c) = self.clients.get_mut(&tok) else {
            return;
        };
        let after = if c.out {
            if c.outbox.flush() {
                if c.outbox.is_dead() || flags.intersects(EventFlags::ERR | EventFlags::HUP) {
                    After::Close
                } else {
                    After::Keep
                }
            } else if c.outbox.is_dead() {
                After::Close
            } else {
                c.outbox.release_flush();
                // Bytes queued between the flush and the release: keep waiting for room.
                if c.outbox.pending() && c.outbox.claim_flush() {
                    After::Keep
                } else {
                    // Drained: handle what was left buffered, read again.
                    let a = c.handle(&self.inner, &mut self.out);
                    self.want(tok, false);
                    a
                }
            }
        } else if c.outbox.pending() {
            // Output queued (by another connection's request): its turn comes when the
            // blocked list is read.
            After::Keep
        } else if flags.is_empty() {
            c.handle(&self.inner, &mut self.out)
        } else {
            c.read(&self.inner, &mut self.out)
        };
        match after {
            After::Keep => {
                // Buffered requests wait for the next round, unless output is queued
                // (they are handled once it drains).
                if let Some(c) = self.clients.get(&tok) {
                    if c.more && !c.out && !c.outbox.pending() {
                        self.more.push(tok);
                    }
                }
            }
            After::Close => self.close(tok),
        }
    }
}

/// The loop: runs until the server stops.
pub(crate) fn run(inner: Arc<Inner>, waker: Arc<Waker>, rx: mpsc::Receiver<Command>) {
    let epoll = match epoll::create(epoll::CreateFlags::CLOEXEC).and_then(|e| {
        epoll::add(&e, &waker.rx, EventData::new_u64(WAKER), EventFlags::IN)?;
        Ok(e)
    }) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the event loop's epoll");
            return;
        }
    };
    let mut lp = Loop {
        inner,
        epoll,
        listeners: Vec::new(),
        clients: HashMap::new(),
        out: Vec::new(),
        more: Vec::new(),
        guests: HashMap::new(),
        sources: Vec::new(),
        guest_more: Vec::new(),
        guest_hot: Vec::new(),
        round: 0,
    };
    let mut last_sweep = Instant::now();
    let mut guest_todo: Vec<u64> = Vec::new();
    let mut events = Vec::with_capacity(256);
    let mut todo: Vec<u64> = Vec::new();
    let one_cpu = rustix::thread::sched_getaffinity(None).is_ok_and(|s| s.count() == 1);
    let mut served = false;
    while !lp.inner.stop.load(Ordering::Relaxed) {
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Command::Listen(e) => {
                    let tok = LISTENER + lp.listeners.len() as u64;
                    match epoll::add(
                        &lp.epoll,
                        &e.listener,
                        EventData::new_u64(tok),
                        EventFlags::IN,
                    ) {
                        Ok(()) => lp.listeners.push(e),
                        Err(err) => tracing::error!(error = %err, "epoll: cannot add a listener"),
                    }
                }
                Command::Guest(e) => {
                    lp.round += 1;
                    lp.add_guest(*e);
                }
                Command::Release(conn) => lp.remove_guest(conn.0),
            }
        }
        events.clear();
        if !one_cpu && lp.more.is_empty() && lp.guest_more.is_empty() && !lp.guest_hot.is_empty() {
            lp.linger(&mut events);
        }
        lp.guest_hot.clear();
        let timeout = timespec(if lp.more.is_empty() && lp.guest_more.is_empty() {
            POLL_INTERVAL
        } else {
            Duration::ZERO
        });
        if events.is_empty() && one_cpu && served && lp.more.is_empty() && lp.guest_more.is_empty()
        {
            // Nothing ready: let the clients our replies woke run before we sleep.
            let now = timespec(Duration::ZERO);
            let ready = epoll::wait(
                &lp.epoll,
                rustix::buffer::spare_capacity(&mut events),
                Some(&now),
            );
            if matches!(ready, Ok(0)) {
                rustix::thread::sched_yield();
            }
        }
        if events.is_empty() {
            match epoll::wait(
                &lp.epoll,
                rustix::buffer::spare_capacity(&mut events),
                Some(&timeout),
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "epoll_wait failed");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
        }
        // Only socket clients count here: the yield below is for clients that write a
        // request in two writes; with guests on the same CPU it made their round trips
        // slower (a ring request is written whole).
        served = !lp.more.is_empty();
        lp.round += 1;
        todo.clear();
        todo.append(&mut lp.more);
        guest_todo.clear();
        guest_todo.append(&mut lp.guest_more);
        for ev in &events {
            let tok = ev.data.u64();
            if tok == WAKER {
                waker.drain();
            } else if tok >= LISTENER {
                lp.accept((tok - LISTENER) as usize);
            } else if tok >= SOURCE {
                lp.wake_source((tok - SOURCE) as usize);
            } else {
                todo.retain(|&t| t != tok);
                lp.serve(tok, ev.flags);
                served = true;
            }
        }
        for &tok in &todo {
            lp.serve(tok, EventFlags::empty());
        }
        for &tok in &guest_todo {
            lp.visit_guest(tok);
        }
        if last_sweep.elapsed() >= SWEEP {
            last_sweep = Instant::now();
            let all: Vec<u64> = lp.guests.keys().copied().collect();
            for tok in all {
                lp.visit_guest(tok);
            }
        }
        // Connections whose output got queued this round: wait for room to write.
        let blocked = std::mem::take(&mut *lp.inner.blocked());
        for conn in blocked {
            lp.want(conn.0, true);
        }
    }
    let toks: Vec<u64> = lp.clients.keys().copied().collect();
    for tok in toks {
        lp.close(tok);
    }
    let guests: Vec<u64> = lp.guests.keys().copied().collect();
    for tok in guests {
        lp.remove_guest(tok);
    }
    // Listeners still queued are dropped with `rx`, closing them too.
}
