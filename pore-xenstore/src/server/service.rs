//! The std server: one [`Store`] behind a mutex, one event-loop thread serving every
//! unix socket and every guest ring whose link has a readiness handle (`event_loop`), a
//! thread per other guest ring, and clean shutdown. Output is
//! written under the store lock, without blocking, so every connection sees events and
//! replies in the order the store produced them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use crate::codec::parse_frame;
use crate::error::{Error, ErrorName};
use crate::wire::{WireHeader, HEADER_LEN, PAYLOAD_MAX};
use pore_core::{DomId, Port};

use super::conn::{Outbox, Sink};
use super::event_loop::{Command, GuestEntry, Waker};
use super::quota::Config;
use super::ring::{GuestLink, RingSink};
use super::store::{DomainHooks, OutKind, Outgoing, Store};
use super::ConnId;

/// How long a blocked thread waits before it checks for shutdown.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Reaches a guest's store ring on INTRODUCE (D13): maps the guest's page and binds its
/// event channel.
pub trait DomainConnector: Send + Sync {
    /// Maps the ring page `gfn` of `domid` and binds its event channel `port`.
    ///
    /// # Errors
    ///
    /// The page or port cannot be reached (the backend's error, e.g. [`Error::backend`]);
    /// INTRODUCE then fails with `EINVAL`.
    fn connect(&self, domid: DomId, gfn: u64, port: Port) -> Result<GuestLink, Error>;
    /// The domain was released: unmap and unbind (the link was already dropped).
    fn disconnect(&self, _domid: DomId) {}
}

pub(crate) struct State {
    pub(crate) store: Store,
    pub(crate) outboxes: HashMap<ConnId, Arc<Outbox>>,
    guests: HashMap<ConnId, Arc<AtomicBool>>,
}

pub(crate) struct Inner {
    state: Mutex<State>,
    pub(crate) stop: AtomicBool,
    connector: Option<Arc<dyn DomainConnector>>,
    /// Wakes the event loop (None if it could not be started).
    waker: Option<Arc<Waker>>,
    /// Commands to the event loop.
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    /// The event loop's thread.
    loop_thread: OnceLock<ThreadId>,
    /// Connections whose output became queued, for the event loop to wait until their
    /// socket takes it.
    blocked: Mutex<Vec<ConnId>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    max_events: usize,
}

/// A running xenstored: share it (it is cheap to clone), add unix listeners with
/// [`Server::listen_unix`], stop it with [`Server::shutdown`].
///
/// When the last clone is dropped, the server stops as [`Server::shutdown`] would
/// (without waiting for its threads).
#[derive(Clone)]
pub struct Server {
    pub(crate) inner: Arc<Inner>,
    _alive: Arc<Alive>,
}

/// Held by every [`Server`] clone (not by the server's own threads).
struct Alive(Arc<Inner>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
        self.0.wake();
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Server")
    }
}

struct Hooks<'a> {
    inner: &'a Arc<Inner>,
    outboxes: &'a mut HashMap<ConnId, Arc<Outbox>>,
    guests: &'a mut HashMap<ConnId, Arc<AtomicBool>>,
    /// A link handed over by the embedder (push model), used instead of the connector.
    link: Option<GuestLink>,
}

impl DomainHooks for Hooks<'_> {
    fn introduce(
        &mut self,
        conn: ConnId,
        domid: DomId,
        gfn: u64,
        port: Port,
    ) -> Result<(), ErrorName> {
        let link = match (self.link.take(), &self.inner.connector) {
            (Some(link), _) => link,
            (None, Some(connector)) => connector.connect(domid, gfn, port).map_err(|e| {
                tracing::warn!(%domid, error = %e, "INTRODUCE: cannot reach the domain");
                ErrorName::EINVAL
            })?,
            (None, None) => {
                tracing::warn!(
                    %domid,
                    "no domain connector: domain introduced without a ring"
                );
                return Ok(());
            }
        };
        let outbox = Arc::new(Outbox::new(
            Box::new(RingSink { link: link.clone() }),
            self.inner.max_events,
        ));
        self.outboxes.insert(conn, outbox.clone());
        let stop = Arc::new(AtomicBool::new(false));
        self.guests.insert(conn, stop.clone());
        let (link, outbox, stop) = if link.readiness().is_some() {
            // Served by the event loop; if it is gone, by a thread as below.
            let entry = GuestEntry {
                conn,
                domid,
                link,
                outbox,
                stop,
            };
            match self.inner.command(Command::Guest(Box::new(entry))) {
                Ok(()) => return Ok(()),
                Err(Command::Guest(e)) => (e.link, e.outbox, e.stop),
                Err(_) => {
                    tracing::error!(%domid, "the event loop gave back another command");
                    self.outboxes.remove(&conn);
                    self.guests.remove(&conn);
                    return Err(ErrorName::ENOMEM);
                }
            }
        } else {
            (link, outbox, stop)
        };
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("xsd-dom{}", domid.0))
            .spawn(move || guest_loop(inner, conn, domid, link, outbox, stop));
        match spawned {
            Ok(h) => {
                self.inner.threads().push(h);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot spawn guest thread");
                self.outboxes.remove(&conn);
                self.guests.remove(&conn);
                Err(ErrorName::ENOMEM)
            }
        }
    }

    fn release(&mut self, conn: ConnId, domid: DomId) {
        self.outboxes.remove(&conn);
        if let Some(stop) = self.guests.remove(&conn) {
            stop.store(true, Ordering::Relaxed);
            // A guest served by the event loop leaves it now (others ignore this).
            let _ = self.inner.command(Command::Release(conn));
        }
        if let Some(c) = &self.inner.connector {
            c.disconnect(domid);
        }
    }
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn threads(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the event loop look at its connections again.
    pub(crate) fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake();
        }
    }

    /// Hands `cmd` to the event loop; gives it back if the loop is gone.
    pub(crate) fn command(&self, cmd: Command) -> Result<(), Command> {
        let tx = self.commands.lock().unwrap_or_else(|e| e.into_inner());
        match tx.as_ref() {
            Some(tx) => tx.send(cmd).map_err(|e| e.0)?,
            None => return Err(cmd),
        }
        drop(tx);
        self.wake();
        Ok(())
    }

    pub(crate) fn add_thread(&self, h: JoinHandle<()>) {
        let mut t = self.threads();
        t.retain(|h| !h.is_finished());
        t.push(h);
    }

    /// Registers a new connection of `domid` writing to `sink`.
    pub(crate) fn add_conn(&self, domid: DomId, sink: Box<dyn Sink>) -> (ConnId, Arc<Outbox>) {
        let mut st = self.lock();
        let id = st.store.connect(domid);
        let ob = Arc::new(Outbox::new(sink, self.max_events));
        st.outboxes.insert(id, ob.clone());
        (id, ob)
    }

    pub(crate) fn remove_conn(&self, id: ConnId) {
        let mut st = self.lock();
        st.store.disconnect(id);
        st.outboxes.remove(&id);
    }

    /// Handles the whole messages at the start of `buf`, `budget` of them at most;
    /// returns the bytes used and whether it stopped at the budget, or `Err` if a message
    /// is over the size limit (the connection must be closed).
    pub(crate) fn process(
        self: &Arc<Self>,
        conn: ConnId,
        buf: &[u8],
        out: &mut Vec<Outgoing>,
        budget: usize,
    ) -> Result<(usize, bool), ()> {
        let mut used = 0;
        let mut handled = 0;
        let mut st = self.lock();
        let State {
            store,
            outboxes,
            guests,
        } = &mut *st;
        loop {
            if handled == budget {
                break;
            }
            match parse_frame(&buf[used..], PAYLOAD_MAX) {
                Ok(Some((hdr, payload, n))) => {
                    let mut hooks = Hooks {
                        inner: self,
                        outboxes,
                        guests,
                        link: None,
                    };
                    store.handle_frame(conn, &hdr, payload, &mut hooks, out);
                    used += n;
                    handled += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(conn = conn.0, error = %e, "closing connection");
                    self.deliver(outboxes, out);
                    return Err(());
                }
            }
        }
        self.deliver(outboxes, out);
        Ok((used, handled == budget))
    }

    /// Connections whose output became queued since the event loop last looked.
    pub(crate) fn blocked(&self) -> MutexGuard<'_, Vec<ConnId>> {
        self.blocked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True on the event loop's thread.
    fn on_loop(&self) -> bool {
        self.loop_thread.get() == Some(&std::thread::current().id())
    }

    /// Sends `out` (under the store lock), grouping consecutive messages per connection.
    /// Output left queued is written later: by the event loop for a socket (woken here
    /// when this runs on another thread) or for a guest ring it serves (when the guest
    /// signals that it consumed replies), by its own thread for another guest ring.
    fn deliver(&self, outboxes: &HashMap<ConnId, Arc<Outbox>>, out: &mut Vec<Outgoing>) {
        let mut i = 0;
        while i < out.len() {
            let conn = out[i].conn;
            let mut j = i + 1;
            while j < out.len() && out[j].conn == conn {
                j += 1;
            }
            if let Some(ob) = outboxes.get(&conn) {
                let msgs = out[i..j]
                    .iter_mut()
                    .map(|o| (std::mem::take(&mut o.bytes), o.kind));
                if ob.push(msgs) && ob.claim_flush() {
                    self.blocked().push(conn);
                    if !self.on_loop() {
                        self.wake();
                    }
                }
            }
            i = j;
        }
        out.clear();
    }

    /// Releases a domain from outside the protocol (domain death).
    fn release_domain(self: &Arc<Self>, domid: DomId) -> bool {
        let mut out = Vec::new();
        let mut st = self.lock();
        let State {
            store,
            outboxes,
            guests,
        } = &mut *st;
        let mut hooks = Hooks {
            inner: self,
            outboxes,
            guests,
            link: None,
        };
        let done = store.release_domain(domid, &mut hooks, &mut out);
        self.deliver(outboxes, &mut out);
        done
    }
}

/// Serves one guest ring until released or shut down.
fn guest_loop(
    inner: Arc<Inner>,
    conn: ConnId,
    domid: DomId,
    link: GuestLink,
    outbox: Arc<Outbox>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 2 * (HEADER_LEN + PAYLOAD_MAX)];
    let mut filled = 0;
    let mut out = Vec::new();
    tracing::debug!(%domid, "guest ring served");
    while !stop.load(Ordering::Relaxed) && !inner.stop.load(Ordering::Relaxed) {
        let pending = outbox.flush();
        let mut progressed = false;
        if !pending && filled < buf.len() {
            match link.read(&mut buf[filled..]) {
                Ok(0) => {}
                Ok(n) => {
                    filled += n;
                    progressed = true;
                    let _ = link.notify();
                }
                Err(e) => {
                    tracing::warn!(%domid, error = %e, "guest ring broken; no longer served");
                    break;
                }
            }
            // Reject an oversized header before waiting for its payload.
            if let Some(h) = WireHeader::read(&buf[..filled]) {
                if h.len.get() as usize > PAYLOAD_MAX {
                    tracing::warn!(
                        %domid,
                        len = h.len.get(),
                        "guest message too long; ring closed"
                    );
                    link.protocol_error();
                    break;
                }
            }
            match inner.process(conn, &buf[..filled], &mut out, usize::MAX) {
                Ok((used, _)) => {
                    buf.copy_within(used..filled, 0);
                    filled -= used;
                }
                Err(()) => {
                    link.protocol_error();
                    break;
                }
            }
        }
        if !progressed {
            if let Err(e) = link.wait(POLL_INTERVAL) {
                if pore_core::Error::is_peer_gone(&e) {
                    tracing::debug!(%domid, "guest gone: its event channel closed");
                } else {
                    tracing::warn!(%domid, error = %e, "guest event channel failed");
                }
                break;
            }
        }
    }
    tracing::debug!(%domid, "guest thread ends");
    let _ = (conn, outbox);
}

impl Server {
    /// A server with `config`; `connector` reaches guests on INTRODUCE (without one,
    /// introduced domains are recorded but get no ring).
    pub fn new(config: Config, connector: Option<Arc<dyn DomainConnector>>) -> Self {
        let (tx, rx) = mpsc::channel();
        let max_events = config.max_queued_events;
        let waker = match Waker::new() {
            Ok(w) => Some(Arc::new(w)),
            Err(e) => {
                tracing::error!(error = %e, "cannot create the event loop's waker");
                None
            }
        };
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                store: Store::new(config),
                outboxes: HashMap::new(),
                guests: HashMap::new(),
            }),
            stop: AtomicBool::new(false),
            connector,
            waker: waker.clone(),
            commands: Mutex::new(waker.is_some().then_some(tx)),
            loop_thread: OnceLock::new(),
            blocked: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            max_events,
        });
        if let Some(waker) = waker {
            let i2 = inner.clone();
            match std::thread::Builder::new()
                .name("xsd-loop".into())
                .spawn(move || super::event_loop::run(i2, waker, rx))
            {
                Ok(h) => {
                    let _ = inner.loop_thread.set(h.thread().id());
                    inner.add_thread(h);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot spawn the event loop");
                    *inner.commands.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
            }
        }
        Server {
            _alive: Arc::new(Alive(inner.clone())),
            inner,
        }
    }

    /// Runs `f` on the store (e.g. to prepare a tree, or inspect it in a test).
    pub fn with_store<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        f(&mut self.inner.lock().store)
    }

    /// Introduces a domain whose ring the embedder already reached (the simulator's
    /// toolstack, D19): creates `/local/domain/<domid>` owned by it (with `name`, `domid`,
    /// `data/`), serves `link`, fires `@introduceDomain`.
    ///
    /// # Errors
    ///
    /// `EEXIST` if the domain is already introduced.
    pub fn introduce_domain(
        &self,
        domid: DomId,
        name: &str,
        link: GuestLink,
    ) -> Result<(), ErrorName> {
        let inner = &self.inner;
        let mut out = Vec::new();
        let mut st = inner.lock();
        let State {
            store,
            outboxes,
            guests,
        } = &mut *st;
        let mut hooks = Hooks {
            inner,
            outboxes,
            guests,
            link: Some(link),
        };
        let r = store.introduce_domain(domid, name, &mut hooks, &mut out);
        inner.deliver(outboxes, &mut out);
        r.map(|_| ())
    }

    /// Releases domain `domid` as if it died: its nodes go and `@releaseDomain` fires.
    /// False if it was not introduced.
    pub fn release_domain(&self, domid: DomId) -> bool {
        self.inner.release_domain(domid)
    }

    /// True once [`Server::shutdown`] was called.
    pub fn is_stopping(&self) -> bool {
        self.inner.stop.load(Ordering::Relaxed)
    }

    /// Stops the event loop (and the guest rings it serves) and every guest thread and waits
    /// for them (each notices within a fraction of a second). Listeners stop too; join them
    /// with [`Listener::join`](super::Listener::join).
    pub fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.wake();
        let threads: Vec<_> = std::mem::take(&mut *self.inner.threads());
        for h in threads {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        let _ = OutKind::Reply;
    }
}
