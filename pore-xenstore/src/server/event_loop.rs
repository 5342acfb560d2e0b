//! The event loop: one thread polls every unix listener and client socket, reads
//! requests, runs them against the store and writes the replies without blocking, as C
//! xenstored does. A request never crosses threads on its way in or out.
//!
//! Fairness: a connection gets at most [`FRAMES_PER_ROUND`] requests handled per round of
//! the loop, so one that floods requests delays the others by that many requests at most.
//! A connection whose output is queued (it does not read its replies) is not read until
//! its queue drains; what it makes the daemon hold is bounded by its read buffer
//! ([`READ_BUF`]), the replies of one round and `max_queued_events` watch events (later
//! events are dropped, as in C).
//!
//! Guest rings are not served here: a [`GuestLink`](super::GuestLink)'s event channel has
//! no readiness handle to poll, so each guest keeps a thread of its own (see
//! `service::guest_loop`).

use std::io::{self, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::{RecvFlags, SendFlags};

use super::conn::{Outbox, Sink};
use super::service::{Inner, POLL_INTERVAL};
use super::ConnId;

/// Requests handled per connection per round of the loop.
pub(crate) const FRAMES_PER_ROUND: usize = 8;

/// Bytes read from a client at most before its requests are handled.
pub(crate) const READ_BUF: usize = 64 * 1024;

/// Clients accepted per listener per round.
const ACCEPTS_PER_ROUND: usize = 64;

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

/// What other threads ask of the loop.
pub(crate) enum Command {
    /// Serve a new listener.
    Listen(ListenEntry),
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

/// Accepts what is waiting on `l`.
fn accept(inner: &Arc<Inner>, l: &UnixListener, clients: &mut Vec<Client>) {
    for _ in 0..ACCEPTS_PER_ROUND {
        match l.accept() {
            Ok((s, _)) => {
                let sink = match s.set_nonblocking(true).and_then(|_| s.try_clone()) {
                    Ok(c) => SocketSink(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "client socket");
                        continue;
                    }
                };
                let (conn, outbox) = inner.add_conn(pore_core::DomId::DOM0, Box::new(sink));
                tracing::debug!(conn = conn.0, "client connected");
                clients.push(Client {
                    stream: s,
                    conn,
                    outbox,
                    buf: vec![0u8; READ_BUF],
                    filled: 0,
                    more: false,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                return;
            }
        }
    }
}

/// The loop: runs until the server stops.
pub(crate) fn run(inner: Arc<Inner>, waker: Arc<Waker>, rx: mpsc::Receiver<Command>) {
    let mut listeners: Vec<ListenEntry> = Vec::new();
    let mut clients: Vec<Client> = Vec::new();
    let mut out = Vec::new();
    let mut ready: Vec<PollFlags> = Vec::new();
    let mut pending: Vec<bool> = Vec::new();
    while !inner.stop.load(Ordering::Relaxed) {
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Command::Listen(e) => listeners.push(e),
            }
        }
        pending.clear();
        pending.extend(clients.iter().map(|c| c.outbox.pending()));
        let busy = clients.iter().zip(&pending).any(|(c, &p)| c.more && !p);
        let timeout = timespec(if busy { Duration::ZERO } else { POLL_INTERVAL });
        {
            let mut fds = Vec::with_capacity(1 + listeners.len() + clients.len());
            fds.push(PollFd::new(&waker.rx, PollFlags::IN));
            for l in &listeners {
                fds.push(PollFd::new(&l.listener, PollFlags::IN));
            }
            for (c, &p) in clients.iter().zip(&pending) {
                // A client with output queued is not read until it takes it.
                let want = if p { PollFlags::OUT } else { PollFlags::IN };
                fds.push(PollFd::new(&c.stream, want));
            }
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "poll failed");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
            ready.clear();
            ready.extend(fds.iter().map(|f| f.revents()));
        }
        if !ready[0].is_empty() {
            waker.drain();
        }
        let nl = listeners.len();
        for (l, r) in listeners.iter().zip(&ready[1..]) {
            if !r.is_empty() {
                accept(&inner, &l.listener, &mut clients);
            }
        }
        let gone = PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL;
        // Newly accepted clients (after the polled ones) wait for the next round.
        let polled = ready.len() - 1 - nl;
        let mut i = 0;
        let mut k = 0;
        while k < polled {
            let r = ready[1 + nl + k];
            let p = pending[k];
            k += 1;
            let c = &mut clients[i];
            let after = if p {
                if r.is_empty() {
                    After::Keep
                } else if !c.outbox.flush() && !c.outbox.is_dead() {
                    // Drained: handle what was left buffered, then read again next round.
                    c.handle(&inner, &mut out)
                } else if c.outbox.is_dead() || r.intersects(gone) {
                    After::Close
                } else {
                    After::Keep
                }
            } else if r.intersects(PollFlags::IN | gone) {
                c.read(&inner, &mut out)
            } else if c.more {
                c.handle(&inner, &mut out)
            } else {
                After::Keep
            };
            match after {
                After::Keep => i += 1,
                After::Close => clients.remove(i).close(&inner),
            }
        }
    }
    for c in clients {
        c.close(&inner);
    }
    // Listeners still queued are dropped with `rx`, closing them too.
    drop(listeners);
}
