//! The std client: many threads share one connection.
//!
//! There is no background thread. Every thread waiting for something (a reply, a watch
//! event) may become the connection's reader for a while (leader/follower): it reads
//! whatever arrives, routes replies by request id and watch events by token, wakes the
//! others and, once its own answer is there, hands the reader role on. A single caller
//! thus pays one write and one read per request, like libxenstore's unthreaded path.
//!
//! Requests are pipelined (several in flight, matched by id) unless the transport says
//! [`Transport::one_request_at_a_time`] (the Linux xenbus device, where pipelining can
//! deadlock the kernel: see [`XenbusTransport`](crate::transport::XenbusTransport)); then a
//! request is written only once every earlier one has been answered, and the thread that
//! waits for its turn reads the connection meanwhile (the reply it waits for may be one
//! nobody else awaits any more).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pore_core::{DomId, Port};

use crate::codec::{Parser, Progress, Reply, Request, WatchEvent};
use crate::error::{CodecError, Error, ErrorName};
use crate::perms::Perm;
use crate::session::{ClientCore, Incoming, DEFAULT_MAX_OPEN_TRANSACTIONS};
use crate::transport::{StoreLocation, Transport, TransportReader, TransportWriter};
use crate::wire::{Limits, MsgType, HEADER_LEN};

/// Client settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Timeout of each request (D9: 5 s).
    pub timeout: Duration,
    /// Open transactions allowed on the connection (D12: 8).
    pub max_open_transactions: usize,
    /// Attempts of a closure transaction that keeps conflicting (EAGAIN).
    pub transaction_attempts: u32,
    /// Events queued per watch before new ones are dropped (and counted).
    pub watch_queue: usize,
    /// Bytes of child names (each with its NUL, as on the wire) a directory listing
    /// fetched in parts (`DIRECTORY_PART`) may gather; more is
    /// [`CodecError::PayloadTooLarge`]. Default 1 MiB.
    pub max_directory_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_open_transactions: DEFAULT_MAX_OPEN_TRANSACTIONS,
            transaction_attempts: 16,
            watch_queue: 1024,
            max_directory_bytes: 1024 * 1024,
        }
    }
}

struct ReaderHalf {
    rd: Box<dyn TransportReader>,
    parser: Parser,
    buf: Vec<u8>,
}

#[derive(Default)]
struct WatchQueue {
    events: VecDeque<WatchEvent>,
    dropped: u64,
}

/// Fire-and-forget requests (aborts of orphan transactions) whose replies are awaited
/// by nobody: beyond this many the oldest is given up, so a daemon that never replies
/// cannot make them accumulate. Each is also given up after [`Config::timeout`].
const MAX_FORGOTTEN_REQUESTS: usize = 64;

struct State {
    core: ClientCore,
    results: HashMap<u32, Result<Reply, Error>>,
    /// Requests whose replies are dropped on arrival (fire-and-forget).
    discard: HashSet<u32>,
    /// The same, oldest first, with the time they are given up at.
    forgotten: VecDeque<(u32, Instant)>,
    watches: HashMap<String, WatchQueue>,
    reader_busy: bool,
    /// Set once the connection is unusable: `Some(None)` if the peer closed it, else the
    /// error that ended it.
    closed: Option<Option<Arc<Error>>>,
    orphans: Vec<u32>,
    /// Requests written whose reply has not been read yet (including those given up on:
    /// the daemon still answers them).
    in_flight: usize,
}

/// A xenstore client. `Sync`: share it between threads by reference or in an `Arc`.
pub struct Client {
    config: Config,
    /// At most one request in flight ([`Transport::one_request_at_a_time`]).
    serial: bool,
    state: Mutex<State>,
    cv: Condvar,
    reader: Mutex<ReaderHalf>,
    writer: Mutex<Box<dyn TransportWriter>>,
    next_token: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// A client over `transport`.
    pub fn with_transport(transport: Box<dyn Transport>, config: Config) -> Result<Self, Error> {
        let limits: Limits = transport.limits();
        let serial = transport.one_request_at_a_time();
        let (rd, wr) = transport.split()?;
        Ok(Self {
            state: Mutex::new(State {
                core: ClientCore::new(limits, config.max_open_transactions),
                results: HashMap::new(),
                discard: HashSet::new(),
                forgotten: VecDeque::new(),
                watches: HashMap::new(),
                reader_busy: false,
                closed: None,
                orphans: Vec::new(),
                in_flight: 0,
            }),
            serial,
            cv: Condvar::new(),
            reader: Mutex::new(ReaderHalf {
                rd,
                parser: Parser::new(limits.reply_payload_max),
                buf: vec![0; 16 * 1024],
            }),
            writer: Mutex::new(wr),
            next_token: AtomicU64::new(1),
            config,
        })
    }

    /// Connects to a xenstored's unix socket.
    pub fn connect_unix(path: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        Self::with_transport(
            Box::new(crate::transport::UnixTransport::connect(path)?),
            Config::default(),
        )
    }

    /// Opens the Linux xenbus device at `path`.
    pub fn open_xenbus(path: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        Self::with_transport(
            Box::new(crate::transport::XenbusTransport::open(path)?),
            Config::default(),
        )
    }

    /// Finds the store as xenstore-utils do (see [`StoreLocation::candidates`]).
    pub fn open_default() -> Result<Self, Error> {
        let (_, t) = StoreLocation::open_default()?;
        Self::with_transport(t, Config::default())
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Reads once (as the current reader) and dispatches what arrived.
    fn read_some(&self, timeout: Duration) -> Result<Vec<crate::codec::Message>, Error> {
        let mut guard = lock(&self.reader);
        let r = &mut *guard;
        let n = match r.rd.read(&mut r.buf, timeout)? {
            None => return Ok(Vec::new()),
            Some(0) => return Err(Error::Closed(None)),
            Some(n) => n,
        };
        let mut msgs = Vec::new();
        let mut rest = &r.buf[..n];
        while !rest.is_empty() {
            let (used, p) = r.parser.feed(rest);
            rest = &rest[used..];
            match p? {
                Progress::Message(m) => msgs.push(m),
                Progress::NeedMore(_) => break,
            }
        }
        Ok(msgs)
    }

    fn dispatch(&self, st: &mut State, msg: crate::codec::Message) {
        if msg.ty != MsgType::WatchEvent.as_u32() {
            // Every request gets exactly one reply; anything but an event is one.
            st.in_flight = st.in_flight.saturating_sub(1);
        }
        match st.core.handle(msg) {
            Incoming::Reply { req_id, result } => {
                if st.discard.remove(&req_id) {
                    st.forgotten.retain(|&(id, _)| id != req_id);
                } else {
                    st.results.insert(req_id, result);
                }
            }
            Incoming::Watch(ev) => match st.watches.get_mut(&ev.token) {
                Some(q) if q.events.len() < self.config.watch_queue => q.events.push_back(ev),
                Some(q) => {
                    q.dropped += 1;
                    tracing::warn!(token = %ev.token, "watch queue full, event dropped");
                }
                None => tracing::debug!(?ev, "event for an unknown watch"),
            },
            Incoming::OrphanTransaction(id) => st.orphans.push(id),
            Incoming::Stray(m) => tracing::debug!(req_id = m.req_id, ty = m.ty, "stray reply"),
            Incoming::BadEvent(e) => tracing::warn!(error = %e, "malformed watch event"),
        }
    }

    /// Waits until `check` yields, taking the reader role when nobody has it.
    fn wait<T>(
        &self,
        deadline: Instant,
        mut check: impl FnMut(&mut State) -> Option<T>,
    ) -> Result<T, Error> {
        let mut st = lock(&self.state);
        loop {
            Self::give_up_forgotten(&mut st, Instant::now(), MAX_FORGOTTEN_REQUESTS);
            if let Some(v) = check(&mut st) {
                return Ok(v);
            }
            if let Some(cause) = &st.closed {
                return Err(Error::Closed(cause.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::TimedOut);
            }
            if st.reader_busy {
                st = self
                    .cv
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            st.reader_busy = true;
            drop(st);
            let got = self.read_some(deadline - now);
            st = lock(&self.state);
            st.reader_busy = false;
            match got {
                Ok(msgs) => {
                    for m in msgs {
                        self.dispatch(&mut st, m);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "xenstore connection lost");
                    st.closed = Some(match e {
                        Error::Closed(cause) => cause,
                        e => Some(Arc::new(e)),
                    });
                }
            }
            self.cv.notify_all();
            st = self.abort_orphans(st);
        }
    }

    /// True if a request may be written now.
    fn may_send(&self, st: &State) -> bool {
        !self.serial || st.in_flight == 0
    }

    /// Aborts the transactions that timed-out starts opened (as many as may be sent now;
    /// the others wait for the next chance).
    fn abort_orphans<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        while !st.orphans.is_empty() && self.may_send(&st) {
            let id = st.orphans.remove(0);
            drop(st);
            self.fire_and_forget(&Request::TransactionEnd { commit: false }, id);
            st = lock(&self.state);
        }
        st
    }

    /// Gives up fire-and-forget requests past their time, and the oldest ones beyond
    /// `keep`: they stop being pending, and their replies, if they come, are strays.
    fn give_up_forgotten(st: &mut State, now: Instant, keep: usize) {
        while let Some(&(id, until)) = st.forgotten.front() {
            if until > now && st.forgotten.len() <= keep {
                break;
            }
            st.forgotten.pop_front();
            if st.discard.remove(&id) {
                st.core.cancel(id);
            }
        }
    }

    /// Sends `req` without waiting for its reply (dropped when it comes; given up after
    /// the timeout, or when [`MAX_FORGOTTEN_REQUESTS`] newer ones are outstanding).
    /// Only a transaction's abort is sent so: when another request is in flight on a
    /// one-at-a-time transport, it is queued with the orphans and sent later.
    fn fire_and_forget(&self, req: &Request<'_>, tx: u32) {
        let mut buf = Vec::new();
        let now = Instant::now();
        let deadline = now + self.config.timeout;
        let id = {
            let mut st = lock(&self.state);
            if !self.may_send(&st) {
                st.orphans.push(tx);
                return;
            }
            Self::give_up_forgotten(&mut st, now, MAX_FORGOTTEN_REQUESTS.saturating_sub(1));
            match st.core.begin(req, tx, &mut buf) {
                Ok(id) => {
                    st.discard.insert(id);
                    st.forgotten.push_back((id, deadline));
                    st.in_flight += 1;
                    id
                }
                Err(_) => return,
            }
        };
        if lock(&self.writer).write_message(&buf, deadline).is_err() {
            let mut st = lock(&self.state);
            st.core.cancel(id);
            st.discard.remove(&id);
            st.forgotten.retain(|&(i, _)| i != id);
            st.in_flight = st.in_flight.saturating_sub(1);
        }
    }

    /// Sends `req` in transaction `tx` (0: none) and waits for its reply.
    pub(crate) fn call(&self, req: &Request<'_>, tx: u32) -> Result<Reply, Error> {
        let deadline = Instant::now() + self.config.timeout;
        let mut buf = Vec::with_capacity(HEADER_LEN + 64);
        let req_id = {
            let mut st = lock(&self.state);
            loop {
                if let Some(cause) = &st.closed {
                    return Err(Error::Closed(cause.clone()));
                }
                if !self.may_send(&st) {
                    // Our turn comes when the reply in flight has been read: read it
                    // ourselves if nobody else is reading.
                    drop(st);
                    self.wait(deadline, |st| self.may_send(st).then_some(()))?;
                    st = lock(&self.state);
                    continue;
                }
                if !st.orphans.is_empty() {
                    // Aborts of orphan transactions go first (one at a time, if serial).
                    st = self.abort_orphans(st);
                    continue;
                }
                match st.core.begin(req, tx, &mut buf) {
                    Err(Error::TooManyTransactions(n)) => {
                        let now = Instant::now();
                        if now >= deadline {
                            return Err(Error::TooManyTransactions(n));
                        }
                        st = self
                            .cv
                            .wait_timeout(st, deadline - now)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    r => {
                        let id = r?;
                        st.in_flight += 1;
                        break id;
                    }
                }
            }
        };
        if let Err(e) = lock(&self.writer).write_message(&buf, deadline) {
            let mut st = lock(&self.state);
            st.core.cancel(req_id);
            // Part of the message may be on the wire: the stream cannot be trusted any more.
            let e = Error::from(e);
            // Later calls report the connection closed, classified as this error is.
            st.closed = Some(Some(Arc::new(Error::Core(pore_core::CoreError::new(
                pore_core::Error::kind(&e),
                "writing a request failed",
            )))));
            self.cv.notify_all();
            return Err(e);
        }
        match self.wait(deadline, |st| st.results.remove(&req_id)) {
            Ok(r) => r,
            Err(e) => {
                let mut st = lock(&self.state);
                st.core.cancel(req_id);
                st.results.remove(&req_id);
                self.cv.notify_all();
                Err(e)
            }
        }
    }

    fn expect_ok(r: Reply) -> Result<(), Error> {
        match r {
            Reply::Ok => Ok(()),
            _ => Err(unexpected()),
        }
    }

    // ---- operations, with a transaction id (0 = none) ----

    fn read_in(&self, tx: u32, path: &str) -> Result<Vec<u8>, Error> {
        match self.call(&Request::Read(path), tx)? {
            Reply::Value(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }

    fn write_in(&self, tx: u32, path: &str, value: &[u8]) -> Result<(), Error> {
        Self::expect_ok(self.call(&Request::Write { path, value }, tx)?)
    }

    fn mkdir_in(&self, tx: u32, path: &str) -> Result<(), Error> {
        Self::expect_ok(self.call(&Request::Mkdir(path), tx)?)
    }

    fn rm_in(&self, tx: u32, path: &str) -> Result<(), Error> {
        Self::expect_ok(self.call(&Request::Rm(path), tx)?)
    }

    fn get_perms_in(&self, tx: u32, path: &str) -> Result<Vec<Perm>, Error> {
        match self.call(&Request::GetPerms(path), tx)? {
            Reply::Perms(p) => Ok(p),
            _ => Err(unexpected()),
        }
    }

    fn set_perms_in(&self, tx: u32, path: &str, perms: &[Perm]) -> Result<(), Error> {
        Self::expect_ok(self.call(
            &Request::SetPerms {
                path,
                perms: perms.into(),
            },
            tx,
        )?)
    }

    fn directory_in(&self, tx: u32, path: &str) -> Result<Vec<String>, Error> {
        match self.call(&Request::Directory(path), tx) {
            Ok(Reply::Children(c)) => Ok(c),
            Ok(_) => Err(unexpected()),
            // C xenstored refuses replies over 4096 bytes: fetch in parts.
            Err(Error::Xs(ErrorName::E2BIG)) => self.directory_parts(tx, path),
            Err(e) => Err(e),
        }
    }

    fn directory_parts(&self, tx: u32, path: &str) -> Result<Vec<String>, Error> {
        const MAX_RESTARTS: usize = 8;
        const MAX_CHUNKS: usize = 4096;
        let max = self.config.max_directory_bytes;
        'restart: for _ in 0..MAX_RESTARTS {
            let mut names = Vec::new();
            let mut bytes: usize = 0;
            let mut offset: u32 = 0;
            let mut gen0: Option<String> = None;
            for _ in 0..MAX_CHUNKS {
                let r = self.call(&Request::DirectoryPart { path, offset }, tx)?;
                let Reply::ChildrenPart {
                    generation,
                    children,
                    done,
                    consumed,
                } = r
                else {
                    return Err(unexpected());
                };
                match &gen0 {
                    None => gen0 = Some(generation),
                    Some(g) if *g != generation => continue 'restart,
                    Some(_) => {}
                }
                let chunk: usize = children.iter().map(|c| c.len() + 1).sum();
                bytes = bytes.saturating_add(chunk);
                if bytes > max {
                    return Err(Error::Codec(CodecError::PayloadTooLarge {
                        len: bytes,
                        max,
                    }));
                }
                names.extend(children);
                if done {
                    return Ok(names);
                }
                if consumed == 0 {
                    return Err(Error::Codec(CodecError::malformed(
                        "DIRECTORY_PART made no progress",
                    )));
                }
                offset = u32::try_from(consumed)
                    .ok()
                    .and_then(|c| offset.checked_add(c))
                    .ok_or(Error::Codec(CodecError::malformed("DIRECTORY_PART offset")))?;
            }
            return Err(Error::Codec(CodecError::malformed(
                "DIRECTORY_PART never ended",
            )));
        }
        Err(Error::Conflict(MAX_RESTARTS as u32))
    }

    fn exists_in(&self, tx: u32, path: &str) -> Result<bool, Error> {
        match self.read_in(tx, path) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    // ---- public API ----

    /// Reads a node's value.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, Error> {
        self.read_in(0, path)
    }

    /// Reads a node's value, `None` if it does not exist.
    pub fn try_read(&self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        match self.read_in(0, path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// True if the node exists (ENOENT means no; other errors are errors).
    pub fn exists(&self, path: &str) -> Result<bool, Error> {
        self.exists_in(0, path)
    }

    /// Writes a node (creating missing ancestors).
    pub fn write(&self, path: &str, value: &[u8]) -> Result<(), Error> {
        self.write_in(0, path, value)
    }

    /// Creates a node (and ancestors); an existing node is left as it is.
    pub fn mkdir(&self, path: &str) -> Result<(), Error> {
        self.mkdir_in(0, path)
    }

    /// Removes a node and its subtree.
    pub fn rm(&self, path: &str) -> Result<(), Error> {
        self.rm_in(0, path)
    }

    /// Lists a node's children; large directories are fetched with DIRECTORY_PART when
    /// the daemon refuses the whole list (C xenstored, E2BIG).
    pub fn directory(&self, path: &str) -> Result<Vec<String>, Error> {
        self.directory_in(0, path)
    }

    /// A node's permissions (owner first).
    pub fn get_perms(&self, path: &str) -> Result<Vec<Perm>, Error> {
        self.get_perms_in(0, path)
    }

    /// Sets a node's permissions (owner first).
    pub fn set_perms(&self, path: &str, perms: &[Perm]) -> Result<(), Error> {
        self.set_perms_in(0, path, perms)
    }

    /// The home path of a domain (`/local/domain/<domid>`).
    pub fn get_domain_path(&self, domid: DomId) -> Result<String, Error> {
        match self.call(&Request::GetDomainPath(u32::from(domid.0)), 0)? {
            Reply::Path(p) => Ok(p),
            _ => Err(unexpected()),
        }
    }

    /// Introduces a domain whose store page is `gfn` and event channel `port` (dom0).
    pub fn introduce(&self, domid: DomId, gfn: u64, port: Port) -> Result<(), Error> {
        let (domid, port) = (u32::from(domid.0), port.0);
        Self::expect_ok(self.call(&Request::Introduce { domid, gfn, port }, 0)?)
    }

    /// Releases a domain (dom0).
    pub fn release(&self, domid: DomId) -> Result<(), Error> {
        Self::expect_ok(self.call(&Request::Release(u32::from(domid.0)), 0)?)
    }

    /// Clears a domain's shutdown flag (dom0).
    pub fn resume(&self, domid: DomId) -> Result<(), Error> {
        Self::expect_ok(self.call(&Request::Resume(u32::from(domid.0)), 0)?)
    }

    /// True if the domain is introduced.
    pub fn is_domain_introduced(&self, domid: DomId) -> Result<bool, Error> {
        match self.call(&Request::IsDomainIntroduced(u32::from(domid.0)), 0)? {
            Reply::Bool(b) => Ok(b),
            _ => Err(unexpected()),
        }
    }

    /// Registers a watch on `path` (and its descendants). The daemon fires one event at
    /// once; more follow on changes. Dropping the [`Watch`] unregisters it.
    pub fn watch(&self, path: &str) -> Result<Watch<'_>, Error> {
        let token = format!("pore-{}", self.next_token.fetch_add(1, Ordering::Relaxed));
        // Register the queue first: C xenstored sends the first event before the reply.
        lock(&self.state)
            .watches
            .insert(token.clone(), WatchQueue::default());
        match self.call(
            &Request::Watch {
                path,
                token: &token,
            },
            0,
        ) {
            Ok(Reply::Ok) => Ok(Watch {
                client: self,
                path: path.to_owned(),
                token,
                active: true,
            }),
            other => {
                lock(&self.state).watches.remove(&token);
                match other {
                    Err(e) => Err(e),
                    Ok(_) => Err(unexpected()),
                }
            }
        }
    }

    /// Waits until `predicate` holds for the value of `path` (`None`: absent), re-reading
    /// it on every watch event; returns the value that satisfied it.
    ///
    /// Returns [`Error::TimedOut`] if it does not hold within `timeout`.
    pub fn wait_for(
        &self,
        path: &str,
        mut predicate: impl FnMut(Option<&[u8]>) -> bool,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, Error> {
        let deadline = Instant::now() + timeout;
        let w = self.watch(path)?;
        loop {
            let v = self.try_read(path)?;
            if predicate(v.as_deref()) {
                return Ok(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::TimedOut);
            }
            w.next_event(deadline - now)?;
            // Coalesce a burst of events into one re-read.
            while w.try_next().is_some() {}
        }
    }

    /// Starts a transaction. ENOSPC/EQUOTA (the daemon's transaction quota) is retried
    /// with backoff, a bounded number of times (D12).
    pub fn start_transaction(&self) -> Result<Transaction<'_>, Error> {
        let mut backoff = Duration::from_millis(5);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.call(&Request::TransactionStart, 0) {
                Ok(Reply::TransactionId(id)) => {
                    return Ok(Transaction {
                        client: self,
                        id,
                        ended: false,
                    })
                }
                Ok(_) => return Err(unexpected()),
                Err(Error::Xs(ErrorName::ENOSPC | ErrorName::EQUOTA))
                    if attempt < self.config.transaction_attempts =>
                {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `f` in a transaction and commits it; on a conflict (EAGAIN) the whole
    /// closure is run again, at most [`Config::transaction_attempts`] times. An error
    /// from `f` aborts the transaction and is returned.
    pub fn transaction<T>(
        &self,
        mut f: impl FnMut(&Transaction<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let attempts = self.config.transaction_attempts.max(1);
        let mut backoff = Duration::from_micros(500);
        for _ in 0..attempts {
            let tx = self.start_transaction()?;
            match f(&tx) {
                Ok(v) => match tx.commit() {
                    Ok(()) => return Ok(v),
                    Err(e) if e.is_again() => {}
                    Err(e) => return Err(e),
                },
                Err(e) => {
                    let again = e.is_again();
                    let _ = tx.abort();
                    if !again {
                        return Err(e);
                    }
                }
            }
            tracing::debug!("transaction conflict, retrying");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
        Err(Error::Conflict(attempts))
    }

    fn end_transaction(&self, id: u32, commit: bool) -> Result<(), Error> {
        Self::expect_ok(self.call(&Request::TransactionEnd { commit }, id)?)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        lock(&self.writer).shutdown();
    }
}

fn unexpected() -> Error {
    Error::Codec(CodecError::malformed("reply of another kind"))
}

/// A registered watch. Events arrive in order; the first one is the registration event.
pub struct Watch<'c> {
    client: &'c Client,
    path: String,
    token: String,
    active: bool,
}

impl std::fmt::Debug for Watch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("path", &self.path)
            .field("token", &self.token)
            .finish()
    }
}

impl Watch<'_> {
    /// The watched path, as given.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The token routing this watch's events.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The next event, waiting at most `timeout` ([`Error::TimedOut`] if none came).
    pub fn next_event(&self, timeout: Duration) -> Result<WatchEvent, Error> {
        let deadline = Instant::now() + timeout;
        self.client.wait(deadline, |st| {
            st.watches
                .get_mut(&self.token)
                .and_then(|q| q.events.pop_front())
        })
    }

    /// The next event if one is already queued.
    pub fn try_next(&self) -> Option<WatchEvent> {
        lock(&self.client.state)
            .watches
            .get_mut(&self.token)
            .and_then(|q| q.events.pop_front())
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        lock(&self.client.state)
            .watches
            .get(&self.token)
            .map_or(0, |q| q.dropped)
    }

    /// Unregisters the watch.
    pub fn unwatch(mut self) -> Result<(), Error> {
        self.do_unwatch()
    }

    fn do_unwatch(&mut self) -> Result<(), Error> {
        if !self.active {
            return Ok(());
        }
        self.active = false;
        let r = self.client.call(
            &Request::Unwatch {
                path: &self.path,
                token: &self.token,
            },
            0,
        );
        lock(&self.client.state).watches.remove(&self.token);
        Client::expect_ok(r?)
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.do_unwatch() {
            tracing::debug!(error = %e, token = %self.token, "unwatch on drop failed");
        }
    }
}

/// An open transaction. Reads see its own writes; nothing is visible to others until
/// [`commit`](Transaction::commit). Dropping it without committing aborts it.
pub struct Transaction<'c> {
    client: &'c Client,
    id: u32,
    ended: bool,
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction").field("id", &self.id).finish()
    }
}

impl Transaction<'_> {
    /// The daemon's transaction id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Reads a node's value.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, Error> {
        self.client.read_in(self.id, path)
    }

    /// Reads a node's value, `None` if it does not exist.
    pub fn try_read(&self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        match self.client.read_in(self.id, path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// True if the node exists.
    pub fn exists(&self, path: &str) -> Result<bool, Error> {
        self.client.exists_in(self.id, path)
    }

    /// Writes a node.
    pub fn write(&self, path: &str, value: &[u8]) -> Result<(), Error> {
        self.client.write_in(self.id, path, value)
    }

    /// Creates a node.
    pub fn mkdir(&self, path: &str) -> Result<(), Error> {
        self.client.mkdir_in(self.id, path)
    }

    /// Removes a node and its subtree.
    pub fn rm(&self, path: &str) -> Result<(), Error> {
        self.client.rm_in(self.id, path)
    }

    /// Lists a node's children.
    pub fn directory(&self, path: &str) -> Result<Vec<String>, Error> {
        self.client.directory_in(self.id, path)
    }

    /// A node's permissions.
    pub fn get_perms(&self, path: &str) -> Result<Vec<Perm>, Error> {
        self.client.get_perms_in(self.id, path)
    }

    /// Sets a node's permissions.
    pub fn set_perms(&self, path: &str, perms: &[Perm]) -> Result<(), Error> {
        self.client.set_perms_in(self.id, path, perms)
    }

    /// Commits. A conflict is `Err` with [`Error::is_again`] true.
    pub fn commit(mut self) -> Result<(), Error> {
        self.ended = true;
        self.client.end_transaction(self.id, true)
    }

    /// Aborts.
    pub fn abort(mut self) -> Result<(), Error> {
        self.ended = true;
        self.client.end_transaction(self.id, false)
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.ended {
            if let Err(e) = self.client.end_transaction(self.id, false) {
                tracing::debug!(error = %e, id = self.id, "abort on drop failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{TransportReader, TransportWriter};

    /// A daemon that accepts every request and never replies.
    struct Silent;
    struct SilentRd;
    struct SilentWr;

    impl Transport for Silent {
        fn limits(&self) -> Limits {
            Limits::SOCKET
        }
        fn split(
            self: Box<Self>,
        ) -> std::io::Result<(Box<dyn TransportReader>, Box<dyn TransportWriter>)> {
            Ok((Box::new(SilentRd), Box::new(SilentWr)))
        }
    }

    impl TransportReader for SilentRd {
        fn read(&mut self, _: &mut [u8], timeout: Duration) -> std::io::Result<Option<usize>> {
            std::thread::sleep(timeout.min(Duration::from_millis(5)));
            Ok(None)
        }
    }

    impl TransportWriter for SilentWr {
        fn write_message(&mut self, _: &[u8], _: Instant) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A daemon whose every directory is too big for DIRECTORY and comes in
    /// DIRECTORY_PART chunks of 100 names of 39 bytes (plus NUL); `chunks` chunks in all
    /// (`None`: it never ends).
    struct BigDirs {
        chunks: Option<usize>,
    }
    struct QueueRd(std::sync::Arc<Mutex<VecDeque<u8>>>);
    struct BigDirsWr {
        out: std::sync::Arc<Mutex<VecDeque<u8>>>,
        chunks: Option<usize>,
    }

    impl Transport for BigDirs {
        fn limits(&self) -> Limits {
            Limits::SOCKET
        }
        fn split(
            self: Box<Self>,
        ) -> std::io::Result<(Box<dyn TransportReader>, Box<dyn TransportWriter>)> {
            let q = std::sync::Arc::new(Mutex::new(VecDeque::new()));
            let wr = BigDirsWr {
                out: q.clone(),
                chunks: self.chunks,
            };
            Ok((Box::new(QueueRd(q)), Box::new(wr)))
        }
    }

    impl TransportReader for QueueRd {
        fn read(&mut self, buf: &mut [u8], timeout: Duration) -> std::io::Result<Option<usize>> {
            let mut q = lock(&self.0);
            if q.is_empty() {
                drop(q);
                std::thread::sleep(timeout.min(Duration::from_millis(5)));
                return Ok(None);
            }
            let n = buf.len().min(q.len());
            for (b, v) in buf.iter_mut().zip(q.drain(..n)) {
                *b = v;
            }
            Ok(Some(n))
        }
    }

    impl TransportWriter for BigDirsWr {
        fn write_message(&mut self, msg: &[u8], _: Instant) -> std::io::Result<()> {
            let word = |i: usize| u32::from_le_bytes(msg[4 * i..4 * i + 4].try_into().unwrap());
            let (ty, req_id, tx_id) = (word(0), word(1), word(2));
            let (rty, payload) = if ty == 1 {
                (16, b"E2BIG\0".to_vec())
            } else {
                // DIRECTORY_PART path\0offset\0
                let args: Vec<&[u8]> = msg[16..].split(|&b| b == 0).collect();
                let off: usize = std::str::from_utf8(args[1]).unwrap().parse().unwrap();
                let k = off / 4000;
                let mut p = b"7\0".to_vec();
                for i in 0..100 {
                    p.extend_from_slice(format!("{k:019}-{i:019}\0").as_bytes());
                }
                if self.chunks == Some(k + 1) {
                    p.push(0);
                }
                (22, p)
            };
            let mut q = lock(&self.out);
            for w in [rty, req_id, tx_id, payload.len() as u32] {
                q.extend(w.to_le_bytes());
            }
            q.extend(payload);
            Ok(())
        }
    }

    /// A directory fetched in parts may gather `max_directory_bytes` of names, no more
    /// (a daemon could make it gather 4096 chunks, ~16 MiB, before).
    #[test]
    fn directory_parts_are_capped() {
        let config = Config {
            timeout: Duration::from_secs(5),
            max_directory_bytes: 10_000,
            ..Config::default()
        };
        let c =
            Client::with_transport(Box::new(BigDirs { chunks: Some(2) }), config.clone()).unwrap();
        let names = c.directory("/big").unwrap();
        assert_eq!(names.len(), 200);
        assert_eq!(names[199], format!("{:019}-{:019}", 1, 99));
        let c =
            Client::with_transport(Box::new(BigDirs { chunks: Some(3) }), config.clone()).unwrap();
        match c.directory("/big") {
            Err(Error::Codec(CodecError::PayloadTooLarge { len, max })) => {
                assert_eq!((len, max), (12_000, 10_000));
            }
            r => panic!("{r:?}"),
        }
        let c = Client::with_transport(Box::new(BigDirs { chunks: None }), config).unwrap();
        assert!(matches!(
            c.directory("/big"),
            Err(Error::Codec(CodecError::PayloadTooLarge { .. }))
        ));
        assert_eq!(Config::default().max_directory_bytes, 1024 * 1024);
    }

    fn silent_client(timeout: Duration) -> Client {
        let config = Config {
            timeout,
            ..Config::default()
        };
        Client::with_transport(Box::new(Silent), config).unwrap()
    }

    /// Fire-and-forget requests to a daemon that never replies are capped and given up
    /// after the timeout (they stayed pending forever before).
    #[test]
    fn fire_and_forget_is_bounded_and_expires() {
        let c = silent_client(Duration::from_millis(50));
        for id in 0..1000 {
            c.fire_and_forget(&Request::TransactionEnd { commit: false }, id + 1);
        }
        {
            let st = lock(&c.state);
            assert_eq!(st.core.pending(), MAX_FORGOTTEN_REQUESTS);
            assert_eq!(st.discard.len(), MAX_FORGOTTEN_REQUESTS);
            assert_eq!(st.forgotten.len(), MAX_FORGOTTEN_REQUESTS);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(c.read("/x"), Err(Error::TimedOut)));
        let st = lock(&c.state);
        assert_eq!(st.core.pending(), 0);
        assert!(st.discard.is_empty() && st.forgotten.is_empty());
    }

    #[test]
    fn client_is_send_and_sync() {
        fn is_sync<T: Sync + Send>() {}
        is_sync::<Client>();
        assert_eq!(Config::default().timeout, Duration::from_secs(5));
        assert_eq!(Config::default().max_open_transactions, 8);
    }
}
