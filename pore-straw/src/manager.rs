//! The manager (the seed's `strawman` gen_server), one per endpoint (domain, name) (D14).
//!
//! At start it creates the endpoint's `data/straw[-name]` (perms `b<me>`) and
//! `data/warts[-name]` (`r<me>`) and watches the straw top. [`Manager::open`] runs the opener
//! side of the handshake; a knock runs the listener side, and the connected straw waits in
//! the manager until [`Manager::accept`] or [`Manager::get`] takes it. [`Manager::close`]
//! closes one straw; [`Manager::shutdown`] closes everything following the close chart.
//!
//! Unlike the seed, which blocks its gen_server while it waits for a peer, every straw runs
//! its [`StrawMachine`] on its own thread, so one slow or dead peer never stalls the manager or
//! the other straws; every wait has a timeout. A straw whose peer leaves Connected or whose
//! directory disappears ends with [`StrawError::PeerGone`] (or end of stream after a
//! graceful close), and the manager forgets it and removes its nodes.
//!
//! The manager reaches xenstore through the small [`StoreClient`] trait; without a xenstored,
//! through the in-memory store of [`crate::memstore`] (its docs show two managers on the
//! loopback backend).
//!
//! # What a hostile domain can make a manager hold
//!
//! Every domain may knock (write in our straw top), so the manager bounds, per peer domain
//! (whatever endpoint names it knocks under), and reports in [`Manager::accounting`]:
//!
//! * the handshakes it runs at once ([`ManagerConfig::max_knocks_per_domain`]);
//! * the straws it holds: in the handshake, connected and never accepted, or accepted
//!   ([`ManagerConfig::max_straws_per_domain`], below [`ManagerConfig::max_straws`]): one
//!   domain can never take the slots of the others;
//! * the pages we granted it for straws that ended and that it still maps, which wait on the
//!   backend's revoke-later list ([`ManagerConfig::max_parked_pages_per_domain`]): over it,
//!   its knocks are refused before anything is granted.
//!
//! And it keeps the straw top itself usable: junk children are removed, and a top that junk
//! we cannot remove poisons or that is full is rebuilt without losing the straws in it
//! ([`ManagerConfig::top_check_interval`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::string::String;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use std::vec::Vec;

use pore_core::{Backend, CoreError, DomId, ErrorKind};

use crate::endpoint::parse_knock;
use crate::handshake::{
    setup_ops, teardown_ops, Action, Closed, HandshakeConfig, HandshakeError, Input, PoreGrant,
    PoreRequest, Role, StrawMachine,
};
use crate::ops::{Access, Perm, StoreError, StoreOp, StoreReply};
use crate::straw::{open_active, open_passive, Shared, Straw, StrawConfig, StrawError, StrawPore};
use crate::{Endpoint, Layout};

use self::driver::Driver;

/// A watch event: the path that changed and the token of the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The path.
    pub path: String,
    /// The watch's token.
    pub token: String,
}

/// The xenstore operations a manager needs, blocking and bounded (the client's own request
/// timeout, D9). Implemented for pore-xenstore's client (`xenstore::XsAdapter`, feature
/// `xenstore`) and for the in-memory store ([`crate::memstore::MemoryStoreClient`], a manager
/// without a xenstored).
pub trait StoreClient: Send + Sync + 'static {
    /// Performs `op` (see [`StoreOp`] for transactions and best-effort perms). Watches
    /// registered here deliver their events through [`StoreClient::next_event`].
    fn perform(&self, op: &StoreOp) -> Result<StoreReply, StoreError>;

    /// The next watch event of any watch registered through this client, waiting up to
    /// `timeout`.
    fn next_event(&self, timeout: Duration) -> Option<WatchEvent>;
}

impl<T: StoreClient + ?Sized> StoreClient for Arc<T> {
    fn perform(&self, op: &StoreOp) -> Result<StoreReply, StoreError> {
        (**self).perform(op)
    }
    fn next_event(&self, timeout: Duration) -> Option<WatchEvent> {
        (**self).next_event(timeout)
    }
}

/// Sees every step of every straw of a manager (the peer, then the action the handshake
/// machine asked for), e.g. to print the handshake as it passes (`pore demo`). Called on the
/// straw's thread: keep it quick.
pub type Observer = Arc<dyn Fn(&Endpoint, &Action) + Send + Sync>;

/// Decides whether a knocking peer may open a straw to us (before any page is granted).
pub type Admission = Arc<dyn Fn(&Endpoint) -> bool + Send + Sync>;

/// Settings of a manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// The handshake and close protocol.
    pub handshake: HandshakeConfig,
    /// The data path of every straw.
    pub straw: StrawConfig,
    /// The most straws (connected, in the handshake or waiting to be accepted) at once: a
    /// knock beyond it is ignored, an open fails. Every straw costs granted pages and a thread,
    /// and a hostile domain can knock under many names.
    pub max_straws: usize,
    /// The most knocks from one domain whose handshake runs at once (any of its endpoint
    /// names): a knock beyond it is ignored, so one domain knocking under many names cannot
    /// fill [`ManagerConfig::max_straws`] and lock the others out.
    pub max_knocks_per_domain: usize,
    /// The most straws one domain may hold at once of those it opened to us (any of its
    /// endpoint names): in the handshake, connected and waiting for [`Manager::accept`], and
    /// accepted, together. A knock beyond it is refused: no page is granted, and its directory
    /// is removed at a later check of the straw top ([`ManagerConfig::top_check_interval`]),
    /// where the opener sees it go (`PeerGone`).
    ///
    /// The guarantee: one domain never holds more than this many of the
    /// [`ManagerConfig::max_straws`] slots, so at least `max_straws - max_straws_per_domain`
    /// stay for the others (and `k` domains acting together hold at most
    /// `k * max_straws_per_domain`). [`Manager::start`] refuses a value of 0 or one not below
    /// `max_straws`. Straws we open ([`Manager::open`]) do not count here: they are the local
    /// user's choice, bounded by `max_straws` alone.
    pub max_straws_per_domain: usize,
    /// The most pages one domain may leave on the backend's revoke-later list: pages we
    /// granted to it for straws that ended (a handshake that timed out, a close) while it still
    /// mapped them. Their revocation must wait for its unmap (XSA-396), and on Linux they keep
    /// counting against gntalloc's limit until then, so a domain that maps and abandons pages
    /// could otherwise make every later grant fail. A knock from a domain at or over the bound
    /// is refused ([`ManagerError::PagesStillMapped`], logged and counted in
    /// [`Accounting::refused_knocks`]) before any page is granted.
    ///
    /// The guarantee: a domain parks at most this many pages plus those of the straws it held
    /// when it reached the bound (at most [`ManagerConfig::max_straws_per_domain`] straws).
    /// The count ([`Accounting::parked_pages`]) lasts for the manager's life, since no backend
    /// tells when the peer finally unmaps; [`Manager::forget_parked`] clears it, e.g. once
    /// the domain is gone.
    pub max_parked_pages_per_domain: usize,
    /// How often the manager checks its straw top, which every domain may write in: children
    /// that are no peer's straw directory (junk) or stale ones are removed, and a top that
    /// junk we cannot remove poisons, or that is full (C xenstored limits a node with its
    /// child names to 2048 bytes, and a full top refuses every opener), is rebuilt in one
    /// transaction, carrying over the directories of the straws in progress or connected.
    /// A top that another domain removed (whoever may write a node may remove it, and every
    /// domain may write in our top) is made again, empty: without it nobody could knock.
    /// An event naming junk or the top itself brings the next check forward (to 100 ms after
    /// the last one).
    ///
    /// A child named as a peer's straw directory is left alone for a whole interval (an
    /// opener may be making it, or its knock's event be on its way); if it is still not one
    /// of our straws then, its knock is taken if it has one, else it is removed.
    ///
    /// The guarantee: junk in our top blocks new straws for at most about one interval
    /// (children named as peers': two), plus the time of the check, and no straw in progress
    /// or connected is lost to a rebuild (a knock arriving during the rebuild itself may be,
    /// and its opener sees its directory go: `PeerGone`). The limit: the rebuild is one
    /// transaction, which xenstored bounds (C: 1024 nodes touched); a domain that puts most of
    /// its node quota (1000) under our top can make it fail, and the failure is logged.
    pub top_check_interval: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            handshake: HandshakeConfig::default(),
            straw: StrawConfig::default(),
            max_straws: 256,
            max_knocks_per_domain: 8,
            max_straws_per_domain: 32,
            max_parked_pages_per_domain: 64,
            top_check_interval: Duration::from_secs(1),
        }
    }
}

/// Why a manager call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManagerError {
    /// The handshake failed (already connected, no such peer, timeout, garbage, ...).
    #[error("strawman: {0}")]
    Handshake(#[from] HandshakeError),
    /// Opening the pore failed during the handshake (the backend's error is its source).
    #[error("opening the pore: {0}")]
    Pore(#[source] StrawError),
    /// Setting up the endpoint in xenstore failed.
    #[error("xenstore {op} failed during set-up: {error}")]
    Setup {
        /// The operation.
        op: &'static str,
        /// The error.
        #[source]
        error: StoreError,
    },
    /// No straw (yet) for that peer, or nothing to accept before the timeout.
    #[error("no such straw")]
    NotFound,
    /// A straw to or from this peer is already connected or being opened.
    #[error("a straw with this peer already exists")]
    Exists,
    /// The manager is shutting down.
    #[error("the manager is shut down")]
    ShutDown,
    /// A call's own timeout elapsed.
    #[error("timed out")]
    TimedOut,
    /// [`ManagerConfig::max_straws`] straws exist already.
    #[error("too many straws")]
    TooMany,
    /// The domain still maps [`ManagerConfig::max_parked_pages_per_domain`] or more pages we
    /// granted it for straws that ended: it gets no more until it unmaps them.
    #[error(
        "domain {domid} still maps {pages} pages of straws that ended (at most {max}): refused"
    )]
    PagesStillMapped {
        /// The domain.
        domid: u16,
        /// The pages it still maps.
        pages: usize,
        /// The bound.
        max: usize,
    },
    /// The [`ManagerConfig`] cannot keep its promises.
    #[error("bad manager configuration: {0}")]
    Config(&'static str),
    /// A generic layer failed (see [`CoreError`]).
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// The kind of the handshake's, the pore's or xenstore's error; [`ErrorKind::NotFound`],
/// [`ErrorKind::Busy`] (a straw that exists may be closed later), [`ErrorKind::Closed`],
/// [`ErrorKind::TimedOut`], [`ErrorKind::ResourceExhausted`] (too many straws, pages still
/// mapped) and [`ErrorKind::InvalidInput`] (a bad configuration) for the others.
impl pore_core::Error for ManagerError {
    fn kind(&self) -> ErrorKind {
        match self {
            ManagerError::Handshake(e) => e.kind(),
            ManagerError::Pore(e) => e.kind(),
            ManagerError::Setup { error, .. } => error.kind(),
            ManagerError::NotFound => ErrorKind::NotFound,
            ManagerError::Exists => ErrorKind::Busy,
            ManagerError::ShutDown => ErrorKind::Closed,
            ManagerError::TimedOut => ErrorKind::TimedOut,
            ManagerError::TooMany | ManagerError::PagesStillMapped { .. } => {
                ErrorKind::ResourceExhausted
            }
            ManagerError::Config(_) => ErrorKind::InvalidInput,
            ManagerError::Core(e) => e.kind(),
        }
    }
}

/// What a manager holds and what it refused ([`Manager::accounting`]), e.g. for monitoring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounting {
    /// Straws in the handshake (either role).
    pub handshaking: usize,
    /// Connected straws a peer opened that wait for [`Manager::accept`] or [`Manager::get`].
    pub unclaimed: usize,
    /// Connected straws handed out (or opened by us).
    pub connected: usize,
    /// Per peer domain, the straws it opened to us that it holds (handshaking, unclaimed and
    /// accepted), bounded by [`ManagerConfig::max_straws_per_domain`].
    pub by_domain: BTreeMap<DomId, usize>,
    /// Per peer domain, the pages we granted it for straws that ended and that it still maps
    /// (left on the backend's revoke-later list), bounded by
    /// [`ManagerConfig::max_parked_pages_per_domain`].
    pub parked_pages: BTreeMap<DomId, usize>,
    /// Refusals of knocks because their domain was over one of its bounds
    /// ([`ManagerConfig::max_knocks_per_domain`], [`ManagerConfig::max_straws_per_domain`],
    /// [`ManagerConfig::max_parked_pages_per_domain`]) or the table was full (a knock still
    /// there at the next check of the straw top is taken again, and may count twice).
    pub refused_knocks: u64,
    /// Children of our straw top removed as junk (see [`ManagerConfig::top_check_interval`]).
    pub junk_removed: u64,
    /// Rebuilds of our straw top, full or holding junk we could not remove, or removed.
    pub top_rebuilds: u64,
}

enum Slot<B: Backend> {
    /// The handshake is running.
    Handshaking,
    /// Connected; the straw has been handed out (or is waiting in `unclaimed`).
    Live(Arc<Shared<B>>),
}

struct Entry<B: Backend> {
    token: String,
    input: mpsc::Sender<Input>,
    slot: Slot<B>,
}

struct State<B: Backend> {
    /// One straw per peer and direction (the seed allows a straw each way).
    straws: HashMap<(Endpoint, Role), Entry<B>>,
    unclaimed: VecDeque<Straw<B>>,
    threads: Vec<JoinHandle<()>>,
    refused_knocks: u64,
    junk_removed: u64,
    rebuilds: u64,
    /// Pages per peer domain left on the backend's revoke-later list.
    parked: BTreeMap<DomId, usize>,
}

struct Inner<B: Backend, X: StoreClient> {
    // Field order is drop order: the xenstore client goes before the backend. The client may
    // ride on the domain's own store ring (the simulator, a stub domain), and a domain that
    // ends first closes that ring under the client's readers, which then report a lost
    // connection (and its watches a stop) at the end of a perfectly normal run.
    store: X,
    backend: Arc<B>,
    me: Endpoint,
    cfg: ManagerConfig,
    origin: Instant,
    prefix: String,
    top_token: String,
    state: Mutex<State<B>>,
    observer: Mutex<Option<Observer>>,
    admission: Mutex<Option<Admission>>,
    changed: Condvar,
    stop: AtomicBool,
    /// Held (shared) by every straw's xenstore operation, and exclusively by a rebuild of the
    /// straw top.
    store_gate: RwLock<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The strawman manager of one endpoint. See the [module docs](self).
pub struct Manager<B: Backend + Send + Sync + 'static, X: StoreClient> {
    inner: Arc<Inner<B, X>>,
    events: Option<JoinHandle<()>>,
}

impl<B: Backend + Send + Sync + 'static, X: StoreClient> core::fmt::Debug for Manager<B, X> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Manager")
            .field("me", &self.inner.me)
            .finish()
    }
}

impl<B, X> Manager<B, X>
where
    B: Backend + Send + Sync + 'static,
    B::Channel: 'static,
    X: StoreClient,
{
    /// Starts the manager of endpoint `me`: creates its directories, watches its straw top and
    /// starts the thread that routes watch events.
    pub fn start(
        backend: B,
        store: X,
        me: Endpoint,
        cfg: ManagerConfig,
    ) -> Result<Self, ManagerError> {
        Self::start_shared(Arc::new(backend), store, me, cfg)
    }

    /// As [`Manager::start`], with a backend shared with others (e.g. several named endpoints
    /// of one domain in one process, D14).
    pub fn start_shared(
        backend: Arc<B>,
        store: X,
        me: Endpoint,
        cfg: ManagerConfig,
    ) -> Result<Self, ManagerError> {
        if cfg.max_straws_per_domain == 0 || cfg.max_straws_per_domain >= cfg.max_straws {
            return Err(ManagerError::Config(
                "max_straws_per_domain must be at least 1 and below max_straws",
            ));
        }
        for op in setup_ops(&me) {
            store.perform(&op).map_err(|error| ManagerError::Setup {
                op: op.name(),
                error,
            })?;
        }
        let prefix = std::format!("pore-straw/{}/", me.ident());
        let top_token = std::format!("{prefix}top");
        store
            .perform(&StoreOp::Watch {
                path: me.straw_top(),
                token: top_token.clone(),
            })
            .map_err(|error| ManagerError::Setup { op: "watch", error })?;
        let inner = Arc::new(Inner {
            backend,
            store,
            me,
            cfg,
            origin: Instant::now(),
            prefix,
            top_token,
            state: Mutex::new(State {
                straws: HashMap::new(),
                unclaimed: VecDeque::new(),
                threads: Vec::new(),
                refused_knocks: 0,
                junk_removed: 0,
                rebuilds: 0,
                parked: BTreeMap::new(),
            }),
            observer: Mutex::new(None),
            admission: Mutex::new(None),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            store_gate: RwLock::new(()),
        });
        let i2 = inner.clone();
        let events = std::thread::Builder::new()
            .name(std::format!("straw-events-{}", inner.me.ident()))
            .spawn(move || i2.route_events())
            .map_err(|_| ManagerError::ShutDown)?;
        tracing::debug!(me = %inner.me, "strawman: manager started");
        Ok(Manager {
            inner,
            events: Some(events),
        })
    }

    /// Installs (or removes) the observer of every straw's steps.
    ///
    /// ```no_run
    /// # fn f<B: pore_core::Backend + Send + Sync + 'static, X: pore_straw::manager::StoreClient>(
    /// #     m: &pore_straw::manager::Manager<B, X>) {
    /// use std::sync::Arc;
    /// use pore_straw::Action;
    /// m.observe(Some(Arc::new(|peer: &pore_straw::Endpoint, a: &Action| {
    ///     if let Action::Store(op) = a {
    ///         tracing::info!("{peer}: {op}");
    ///     }
    /// })));
    /// # }
    /// ```
    pub fn observe(&self, observer: Option<Observer>) {
        *lock(&self.inner.observer) = observer;
    }

    /// Installs (or removes) the admission check of knocking peers: a knock from an endpoint
    /// it refuses is ignored (the peer's handshake times out), e.g. `pore straw listen --from`.
    ///
    /// ```no_run
    /// # fn f<B: pore_core::Backend + Send + Sync + 'static, X: pore_straw::manager::StoreClient>(
    /// #     m: &pore_straw::manager::Manager<B, X>) {
    /// use std::sync::Arc;
    /// m.admit(Some(Arc::new(|peer: &pore_straw::Endpoint| peer.domid.0 == 7)));
    /// # }
    /// ```
    pub fn admit(&self, admission: Option<Admission>) {
        *lock(&self.inner.admission) = admission;
    }

    /// Our endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.me
    }

    /// Opens a straw to `peer` (the seed's `open/1`), waiting for the handshake (bounded by
    /// the handshake timeout).
    pub fn open(&self, peer: &Endpoint) -> Result<Straw<B>, ManagerError> {
        let (tx, rx) = mpsc::channel();
        self.inner.spawn(peer.clone(), Role::Opener, Some(tx))?;
        let wait = self.inner.cfg.handshake.handshake_timeout
            + self.inner.cfg.handshake.close_timeout
            + Duration::from_secs(1);
        match rx.recv_timeout(wait) {
            Ok(r) => r,
            Err(_) => Err(ManagerError::TimedOut),
        }
    }

    /// Takes a straw a peer opened to us, waiting up to `timeout` for one.
    pub fn accept(&self, timeout: Duration) -> Result<Straw<B>, ManagerError> {
        let end = Instant::now() + timeout;
        let mut st = lock(&self.inner.state);
        loop {
            if let Some(s) = st.unclaimed.pop_front() {
                return Ok(s);
            }
            if self.inner.stop.load(Ordering::Acquire) {
                return Err(ManagerError::ShutDown);
            }
            let now = Instant::now();
            if now >= end {
                return Err(ManagerError::TimedOut);
            }
            st = self
                .inner
                .changed
                .wait_timeout(st, end - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Takes the not yet claimed straw `peer` opened to us (the seed's `split/1`).
    pub fn get(&self, peer: &Endpoint) -> Result<Straw<B>, ManagerError> {
        let mut st = lock(&self.inner.state);
        let pos = st
            .unclaimed
            .iter()
            .position(|s| s.peer() == peer)
            .ok_or(ManagerError::NotFound)?;
        st.unclaimed.remove(pos).ok_or(ManagerError::NotFound)
    }

    /// The peers with a straw (connected or in the handshake).
    pub fn peers(&self) -> Vec<Endpoint> {
        let set: BTreeSet<Endpoint> = lock(&self.inner.state)
            .straws
            .keys()
            .map(|(p, _)| p.clone())
            .collect();
        set.into_iter().collect()
    }

    /// The peers with a connected straw.
    pub fn connected(&self) -> Vec<Endpoint> {
        let set: BTreeSet<Endpoint> = lock(&self.inner.state)
            .straws
            .iter()
            .filter(|(_, e)| e.slot.is_live())
            .map(|((p, _), _)| p.clone())
            .collect();
        set.into_iter().collect()
    }

    /// What the manager holds now, per state and per peer domain, and what it refused.
    pub fn accounting(&self) -> Accounting {
        let st = lock(&self.inner.state);
        let mut a = Accounting {
            unclaimed: st.unclaimed.len(),
            refused_knocks: st.refused_knocks,
            junk_removed: st.junk_removed,
            top_rebuilds: st.rebuilds,
            parked_pages: st.parked.clone(),
            ..Accounting::default()
        };
        for ((peer, role), e) in &st.straws {
            match e.slot {
                Slot::Handshaking => a.handshaking += 1,
                Slot::Live(_) => a.connected += 1,
            }
            if *role == Role::Listener {
                *a.by_domain.entry(peer.domid).or_default() += 1;
            }
        }
        a.connected = a.connected.saturating_sub(a.unclaimed);
        a
    }

    /// Per peer domain, the straws it opened to us: how many are in the handshake (bounded by
    /// [`ManagerConfig::max_knocks_per_domain`]) and how many are connected (unclaimed or
    /// accepted). [`Accounting::by_domain`] has their sum; the fuzz target `straw_manager`
    /// checks the split after every step. Only with the `fuzzing` feature: not part of the API.
    #[cfg(feature = "fuzzing")]
    #[doc(hidden)]
    pub fn fuzz_knocks_by_domain(&self) -> BTreeMap<DomId, (usize, usize)> {
        let st = lock(&self.inner.state);
        let mut by = BTreeMap::<DomId, (usize, usize)>::new();
        for ((peer, role), e) in &st.straws {
            if *role == Role::Listener {
                let n = by.entry(peer.domid).or_default();
                match e.slot {
                    Slot::Handshaking => n.0 += 1,
                    Slot::Live(_) => n.1 += 1,
                }
            }
        }
        by
    }

    /// Forgets the pages `domid` was counted to keep mapped
    /// ([`ManagerConfig::max_parked_pages_per_domain`]), e.g. once the domain is gone (its
    /// mappings went with it): its knocks are taken again.
    pub fn forget_parked(&self, domid: DomId) {
        lock(&self.inner.state).parked.remove(&domid);
    }

    /// Closes the straws with `peer` (both directions) without draining (use [`Straw::close`]
    /// to drain first) and waits for the close chart (bounded).
    pub fn close(&self, peer: &Endpoint) -> Result<(), ManagerError> {
        let senders: Vec<_> = {
            let st = lock(&self.inner.state);
            st.straws
                .iter()
                .filter(|((p, _), _)| p == peer)
                .map(|(_, e)| e.input.clone())
                .collect()
        };
        if senders.is_empty() {
            return Err(ManagerError::NotFound);
        }
        for s in senders {
            let _ = s.send(Input::Close);
        }
        self.inner.wait_gone(peer, self.close_wait())
    }

    fn close_wait(&self) -> Duration {
        self.inner.close_wait()
    }

    /// Closes every straw (the seed's `terminate(shutdown)`), removes the endpoint's nodes and
    /// stops the manager's threads. Bounded by the close timeout.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.inner.stop.swap(true, Ordering::AcqRel) {
            return;
        }
        let (inputs, threads) = {
            let mut st = lock(&self.inner.state);
            let inputs: Vec<_> = st.straws.values().map(|e| e.input.clone()).collect();
            // Unclaimed straws close with the manager.
            st.unclaimed.clear();
            (inputs, core::mem::take(&mut st.threads))
        };
        for i in inputs {
            let _ = i.send(Input::Close);
        }
        let end = Instant::now() + self.close_wait();
        for t in threads {
            while !t.is_finished() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        let _ = self.inner.store.perform(&StoreOp::Unwatch {
            path: self.inner.me.straw_top(),
            token: self.inner.top_token.clone(),
        });
        {
            // Not while a check of the top runs: it could make the top again (`restore_top`).
            let _gate = self
                .inner
                .store_gate
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for op in teardown_ops(&self.inner.me) {
                let _ = self.inner.store.perform(&op);
            }
        }
        if let Some(e) = self.events.take() {
            let _ = e.join();
        }
        self.inner.changed.notify_all();
        tracing::debug!(me = %self.inner.me, "strawman: manager stopped");
    }
}

impl<B: Backend + Send + Sync + 'static, X: StoreClient> Drop for Manager<B, X> {
    fn drop(&mut self) {
        if !self.inner.stop.load(Ordering::Acquire) {
            // Same as shutdown, without the bounds on `Self`'s methods.
            self.inner.stop.store(true, Ordering::Release);
            let inputs: Vec<_> = lock(&self.inner.state)
                .straws
                .values()
                .map(|e| e.input.clone())
                .collect();
            for i in inputs {
                let _ = i.send(Input::Close);
            }
            // Not joined: the events thread still routes the watch events of the straws in
            // their close chart, and ends by itself once they are gone (see `route_events`).
            drop(self.events.take());
        }
    }
}

type OpenReply<B> = mpsc::Sender<Result<Straw<B>, ManagerError>>;

/// The child of our straw top that [`Inner::top_is_full`] makes and removes (no peer's ident).
const PROBE: &str = "_pore-probe";

/// The keys of a listener's straw directory a rebuild of the top carries over: the knock,
/// everything the listener publishes, and its half-close.
const STRAW_KEYS: [&str; 16] = [
    "warts",
    "state",
    "ring-ref-1",
    "ring-ref-2",
    "ring-ref-3",
    "ring-ref-4",
    "ring-ref-5",
    "ring-ref-6",
    "ring-ref-7",
    "ring-ref-8",
    "ring-ref",
    "ring-pages",
    "straw-layout",
    "event-channel",
    "format",
    "straw-eof",
];

/// A child name for the logs, cut short (junk names can be 2 KiB long).
struct Short<'a>(&'a str);

impl core::fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0.char_indices().nth(40) {
            Some((i, _)) => write!(f, "{}... ({} bytes)", &self.0[..i], self.0.len()),
            None => f.write_str(self.0),
        }
    }
}

impl<B, X> Inner<B, X>
where
    B: Backend + Send + Sync + 'static,
    B::Channel: 'static,
    X: StoreClient,
{
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// How long closing every straw may take at most (the close chart, twice bounded).
    fn close_wait(&self) -> Duration {
        self.cfg.handshake.close_timeout * 2 + Duration::from_secs(1)
    }

    fn route_events(self: Arc<Self>) {
        let mut stopping: Option<Instant> = None;
        let mut checked: Option<Instant> = None;
        let mut check_soon = false;
        let mut stale = BTreeMap::new();
        loop {
            if !self.stop.load(Ordering::Acquire) {
                let since = checked.map(|c| c.elapsed());
                let due = since.is_none_or(|s| {
                    s >= self.cfg.top_check_interval
                        || (check_soon && s >= Duration::from_millis(100))
                });
                if due {
                    self.check_top(&mut stale);
                    checked = Some(Instant::now());
                    check_soon = false;
                }
            }
            if self.stop.load(Ordering::Acquire) {
                // Shutting down: a straw in its close chart still learns its peer's steps from
                // our watch events (the listener waits for the opener's Closed, the opener for
                // the listener's). Stopping the routing before those straws are done would
                // leave them waiting for the close timeout, and their peers fail with it
                // (`timed out during the Close`). So keep routing until the last straw is
                // gone (no new one starts once `stop` is set), bounded by the close wait.
                let since = *stopping.get_or_insert_with(Instant::now);
                if lock(&self.state).straws.is_empty() || since.elapsed() >= self.close_wait() {
                    break;
                }
            }
            let Some(ev) = self.store.next_event(Duration::from_millis(100)) else {
                continue;
            };
            if ev.token == self.top_token {
                if self.stop.load(Ordering::Acquire) {
                    continue; // no new straw while shutting down
                }
                if self.is_junk_event(&ev.path) || ev.path == self.me.straw_top() {
                    check_soon = true;
                }
                if let Some(peer) = parse_knock(&self.me, &ev.path) {
                    self.take_knock(peer);
                }
                continue;
            }
            let st = lock(&self.state);
            if let Some(e) = st.straws.values().find(|e| e.token == ev.token) {
                let _ = e.input.send(Input::Watch);
            }
        }
    }

    /// Answers a knock from `peer` (unless refused); whether a straw with it runs now.
    fn take_knock(self: &Arc<Self>, peer: Endpoint) -> bool {
        let known = lock(&self.state)
            .straws
            .contains_key(&(peer.clone(), Role::Listener));
        if known {
            return true;
        }
        let admitted = lock(&self.admission).as_ref().is_none_or(|a| a(&peer));
        if !admitted {
            tracing::debug!(me = %self.me, %peer, "strawman: knock refused");
            return false;
        }
        if !self.knock_is_genuine(&peer) {
            return false;
        }
        tracing::debug!(me = %self.me, %peer, "strawman: knock");
        match self.clone().spawn(peer, Role::Listener, None) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "strawman: knock ignored");
                if matches!(
                    e,
                    ManagerError::TooMany | ManagerError::PagesStillMapped { .. }
                ) {
                    lock(&self.state).refused_knocks += 1;
                }
                false
            }
        }
    }

    fn spawn(
        self: &Arc<Self>,
        peer: Endpoint,
        role: Role,
        reply: Option<OpenReply<B>>,
    ) -> Result<(), ManagerError> {
        if self.stop.load(Ordering::Acquire) {
            return Err(ManagerError::ShutDown);
        }
        let now = self.now();
        let cfg = self.cfg.handshake.clone();
        let machine = match role {
            Role::Opener => StrawMachine::open(cfg, self.me.clone(), peer.clone(), now),
            Role::Listener => StrawMachine::listen(cfg, self.me.clone(), peer.clone(), now),
        };
        let token = std::format!("{}{}", self.prefix, machine.token());
        let (tx, rx) = mpsc::channel();
        let mut st = lock(&self.state);
        let connected_back = st
            .straws
            .get(&(peer.clone(), Role::Listener))
            .is_some_and(|e| e.slot.is_live());
        if st.straws.contains_key(&(peer.clone(), role)) || (role == Role::Opener && connected_back)
        {
            return Err(ManagerError::Exists);
        }
        if role == Role::Listener {
            let pending = st
                .straws
                .iter()
                .filter(|((p, r), e)| {
                    p.domid == peer.domid
                        && *r == Role::Listener
                        && matches!(e.slot, Slot::Handshaking)
                })
                .count();
            if pending >= self.cfg.max_knocks_per_domain {
                tracing::warn!(me = %self.me, %peer, pending, "strawman: too many knocks from one domain");
                return Err(ManagerError::TooMany);
            }
            let held = st
                .straws
                .keys()
                .filter(|(p, r)| p.domid == peer.domid && *r == Role::Listener)
                .count();
            if held >= self.cfg.max_straws_per_domain {
                tracing::warn!(me = %self.me, %peer, held, "strawman: knock refused: its domain holds its share of straws");
                return Err(ManagerError::TooMany);
            }
            let parked = st.parked.get(&peer.domid).copied().unwrap_or(0);
            if parked >= self.cfg.max_parked_pages_per_domain {
                let e = ManagerError::PagesStillMapped {
                    domid: peer.domid.0,
                    pages: parked,
                    max: self.cfg.max_parked_pages_per_domain,
                };
                tracing::warn!(me = %self.me, %peer, "strawman: knock refused: {e}");
                return Err(e);
            }
        }
        if st.straws.len() >= self.cfg.max_straws {
            tracing::warn!(me = %self.me, %peer, "strawman: too many straws");
            return Err(ManagerError::TooMany);
        }
        st.straws.insert(
            (peer.clone(), role),
            Entry {
                token: token.clone(),
                input: tx.clone(),
                slot: Slot::Handshaking,
            },
        );
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name(std::format!("straw-{}", peer.ident()))
            .spawn(move || {
                let mut d = Driver {
                    inner: me,
                    machine,
                    token,
                    input: rx,
                    self_input: tx,
                    reply,
                    pore: None,
                    open_error: None,
                    shared: None,
                };
                d.run();
            });
        match spawned {
            Ok(h) => {
                st.threads.retain(|t| !t.is_finished());
                st.threads.push(h);
                Ok(())
            }
            Err(_) => {
                st.straws.remove(&(peer, role));
                Err(ManagerError::ShutDown)
            }
        }
    }

    /// Counts `pages` granted to `domid` that it still maps after their straw ended.
    fn park(&self, domid: DomId, pages: usize) {
        if pages == 0 {
            return;
        }
        let mut st = lock(&self.state);
        let total = st.parked.entry(domid).or_default();
        *total = total.saturating_add(pages);
        tracing::debug!(me = %self.me, domid = domid.0, pages, total = *total, "strawman: pages left mapped by the peer");
    }

    fn wait_gone(&self, peer: &Endpoint, timeout: Duration) -> Result<(), ManagerError> {
        let end = Instant::now() + timeout;
        let mut st = lock(&self.state);
        while st.straws.keys().any(|(p, _)| p == peer) {
            let now = Instant::now();
            if now >= end {
                return Err(ManagerError::TimedOut);
            }
            st = self
                .changed
                .wait_timeout(st, end - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }
}

impl<B: Backend> Slot<B> {
    fn is_live(&self) -> bool {
        matches!(self, Slot::Live(sh) if !sh.is_finished())
    }
}

mod driver;
#[cfg(test)]
mod tests;
mod top;
