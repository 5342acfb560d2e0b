//! The strawman handshake and close protocol as a sans-IO state machine (D10).
//!
//! One [`StrawMachine`] follows one straw through its whole life: the handshake (the seed's
//! `do_open` on the opener side, `knock_knock` on the listener side), the connected phase
//! (watching the peer's state), and the close chart (D17). It never blocks and never reads a
//! clock: the driver
//!
//! 1. takes [`Action`]s from [`StrawMachine::poll_action`] and performs them (a xenstore
//!    operation, opening or closing the pore), feeding each result back with
//!    [`StrawMachine::handle`];
//! 2. feeds watch events of the machine's [`StrawMachine::token`] as [`Input::Watch`];
//! 3. calls [`StrawMachine::poll_action`] again no later than [`StrawMachine::deadline`], with
//!    the current time, so that timeouts fire.
//!
//! Time is a [`Duration`] since any fixed origin the driver chooses (a monotonic clock).
//!
//! Roles: the **opener** maps the listener's pages (a passive pore); the **listener** grants
//! them (an active pore). With the empty endpoint name, keys, paths, transactions and states are
//! exactly the seed's, so the machine talks to a LING domain.
//!
//! # The protocol, step by step
//!
//! Opener `A` → listener `B` (`SD` = `B`'s straw top + `/<A ident>`, `WD` = `A`'s warts top +
//! `/<B ident>`; see [`StrawPaths`]):
//!
//! 1. `A` reads `WD` (exists: [`HandshakeError::Exists`]) and `B`'s straw top (absent:
//!    [`HandshakeError::PeerNotFound`]); removes a stale `SD`; `mkdir SD` (fails:
//!    `PeerNotFound`); narrows `SD` to `n<A> b<B>` (D18, best effort).
//! 2. `A`, one transaction: `mkdir WD`, narrow it to `n<A> r<B>`, `WD/straw = SD`,
//!    `WD/state = 2`, `WD/format`, `WD/straw-layouts = "ling v2"` (D15), `SD/warts = WD` (the
//!    knock). `A` watches `SD` and waits for `SD/state = 3`.
//! 3. `B`, woken by its watch on its straw top, checks that `SD/warts` is exactly `WD`, writes
//!    `SD/state = 1` (narrowed to `n<B> r<A>` in the same transaction), watches `WD`, waits for
//!    `WD/state = 2`, reads `WD/format` and `WD/straw-layouts`, opens the pore actively, and in
//!    one transaction writes `SD/ring-ref-1..8` + `SD/event-channel` (LING) or
//!    `SD/straw-layout = v2`, `SD/ring-pages`, `SD/ring-ref` + `SD/event-channel` (v2), then
//!    `SD/format` and `SD/state = 3`, each node narrowed to the pair.
//! 4. `A` reads and validates those keys, opens the pore passively, writes `WD/state = 4`, and
//!    waits for `SD/state = 4`; `B` waits for `WD/state = 4`, then writes `SD/state = 4`.
//! 5. Connected: each watches the other's directory. A state that leaves 4 ends the straw (5 or
//!    6: closed by the peer; gone or garbage: lost). Half-close: a side that will send nothing
//!    more writes `straw-eof = 1` in its own directory after its out-ring drained (a key LING
//!    neither writes nor reads).
//! 6. Close (D17, the seed's chart): the granting side writes 5, waits (bounded) for the
//!    mapping side's 6, ends access, writes 6; the mapping side writes 5 (not in the seed's
//!    chart: it tells the peer that the close is graceful before our port goes), unmaps,
//!    writes 6 and waits (bounded) for the peer's 6. A directory that disappears counts as
//!    Closed. Each side finally removes its own directory and its watch.
//!
//! Where we add to the seed (all ignored by a LING peer): the `format` key is always written
//! (D16); the layout keys (D15); the permission narrowing (D18); the existence reads of step 1
//! and the removal of a stale `SD`; `straw-eof`; the mapping side's 5 on close.
//!
//! ```
//! use core::time::Duration;
//! use pore_core::DomId;
//! use pore_straw::handshake::{Action, HandshakeConfig, StrawMachine};
//! use pore_straw::ops::StoreOp;
//! use pore_straw::Endpoint;
//!
//! let me = Endpoint::seed(DomId(1));
//! let mut m = StrawMachine::open(HandshakeConfig::default(), me, Endpoint::seed(DomId(2)), Duration::ZERO);
//! // First the opener checks that it has no straw to domain 2 yet.
//! match m.poll_action(Duration::ZERO) {
//!     Some(Action::Store(StoreOp::Read { path })) => {
//!         assert_eq!(path, "/local/domain/1/data/warts/2")
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use pore_core::{CoreError, DomId, ErrorKind, GrantRef, Port};

use crate::endpoint::{Endpoint, StrawPaths};
use crate::ops::{Access, Perm, StoreError, StoreOp, StoreReply};
use crate::parse::{self, Format, ParseError, PeerFormat, XenbusState, MAX_VALUE_LEN};

/// The number of pages of the LING layout (`NUM_STRAW_REFS`).
pub const LING_PAGES: usize = 8;

/// Settings of the handshake and close protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// How long a handshake may take (D9: 10 s).
    pub handshake_timeout: Duration,
    /// How long the close protocol may wait for the peer (D9: 5 s).
    pub close_timeout: Duration,
    /// The format we write (D16).
    pub format: Format,
    /// `Some(n)`: offer (opener) or choose (listener) the v2 layout with `n` data pages per
    /// direction (a power of two). `None`: LING only.
    pub v2_pages: Option<u32>,
    /// The largest `ring-pages` an opener accepts from a listener.
    pub max_v2_pages: u32,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            format: Format::Json,
            v2_pages: Some(16),
            max_v2_pages: 256,
        }
    }
}

/// Which side of the handshake a machine plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Called `open(peer)`: writes the knock, maps the listener's pages (passive pore).
    Opener,
    /// Was knocked: grants pages and allocates the port (active pore).
    Listener,
}

/// The ring layout of a straw (D15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// The seed's 8 pages, bit-exact with LING.
    Ling,
    /// Our v2 layout: one control page plus `ring_pages` data pages per direction.
    V2 {
        /// Data pages per direction (a power of two).
        ring_pages: u32,
    },
}

/// A pore the machine wants opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoreRequest {
    /// Grant pages to `peer` and allocate an unbound port (listener). For [`Layout::Ling`]
    /// reply with the 8 refs; for [`Layout::V2`] with the control page's ref first.
    Active {
        /// The peer domain.
        peer: DomId,
        /// The layout.
        layout: Layout,
    },
    /// Map the peer's pages and bind its port (opener).
    Passive {
        /// The peer domain.
        peer: DomId,
        /// The layout.
        layout: Layout,
        /// LING: the 8 ring refs; v2: the control page's ref.
        refs: Vec<GrantRef>,
        /// The peer's port.
        port: Port,
    },
}

/// What an active pore gives the handshake to publish (empty refs for a passive pore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoreGrant {
    /// LING: the 8 refs in page order; v2: the control page's ref (others are ignored).
    pub refs: Vec<GrantRef>,
    /// Our port.
    pub port: Port,
}

/// A straw that completed its handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The peer endpoint.
    pub peer: Endpoint,
    /// Our role.
    pub role: Role,
    /// The ring layout.
    pub layout: Layout,
    /// The negotiated format.
    pub format: Format,
}

/// How a straw ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// We closed it ([`Input::Close`]).
    Locally,
    /// The peer closed it (it wrote Closing or Closed).
    ByPeer,
}

/// The phase in which a timeout struck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The handshake.
    Handshake,
    /// The close protocol.
    Close,
}

/// Why a straw failed or ended abnormally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The opener already has a straw (a warts directory) to this peer.
    #[error("a straw to this peer already exists")]
    Exists,
    /// The peer endpoint has no straw directory (no such domain, or no manager there).
    #[error("peer endpoint not found")]
    PeerNotFound,
    /// A deadline passed.
    #[error("timed out during the {0:?}")]
    TimedOut(Stage),
    /// The peer's directory or state key disappeared.
    #[error("peer gone")]
    PeerGone,
    /// The peer closed or refused the straw during the handshake.
    #[error("the peer closed the straw during the handshake")]
    PeerClosed,
    /// A value the peer wrote is garbage.
    #[error("the peer wrote a bad {key}: {error}")]
    Protocol {
        /// The key.
        key: &'static str,
        /// What is wrong with it.
        error: ParseError,
    },
    /// The peer's state is not one the protocol allows at this point.
    #[error("unexpected peer state {0}")]
    UnexpectedState(XenbusState),
    /// A xenstore operation failed.
    #[error("xenstore {op} failed: {error}")]
    Store {
        /// The operation.
        op: &'static str,
        /// The error.
        #[source]
        error: StoreError,
    },
    /// Opening the pore failed (its kind; the manager reports the backend's error itself as
    /// `ManagerError::Pore`).
    #[error("opening the pore failed: {0}")]
    Pore(ErrorKind),
    /// The handshake was cancelled locally ([`Input::Close`] before it completed).
    #[error("cancelled")]
    Cancelled,
    /// The knock that woke the listener was gone or not addressed to it: nothing to do.
    #[error("the knock vanished")]
    Vanished,
    /// A generic layer failed (see [`CoreError`]).
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// The classification behind [`pore_core::Error::is_peer_gone`] and
/// [`pore_core::Error::is_retryable`]: a peer that vanished, closed or refused the straw is
/// gone ([`ErrorKind::PeerGone`]); a straw that already exists is [`ErrorKind::Busy`] (it may
/// be closed later); a store failure has the kind of its [`StoreError`].
impl pore_core::Error for HandshakeError {
    fn kind(&self) -> ErrorKind {
        match self {
            HandshakeError::Exists => ErrorKind::Busy,
            HandshakeError::PeerNotFound | HandshakeError::Vanished => ErrorKind::NotFound,
            HandshakeError::TimedOut(_) => ErrorKind::TimedOut,
            HandshakeError::PeerGone | HandshakeError::PeerClosed => ErrorKind::PeerGone,
            HandshakeError::Protocol { .. } | HandshakeError::UnexpectedState(_) => {
                ErrorKind::Protocol
            }
            HandshakeError::Store { error, .. } => error.kind(),
            HandshakeError::Pore(kind) => *kind,
            HandshakeError::Cancelled => ErrorKind::Closed,
            HandshakeError::Core(e) => e.kind(),
        }
    }
}

/// Something the driver must do, or learn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Perform a xenstore operation; reply with [`Input::Store`].
    Store(StoreOp),
    /// Open the pore; reply with [`Input::PoreOpened`].
    OpenPore(PoreRequest),
    /// Stop using the ring and close the pore (end grant access / unmap, then unbind); reply
    /// with [`Input::PoreClosed`].
    ClosePore,
    /// The handshake completed: the pore from the last [`Action::OpenPore`] is now a straw.
    Connected(Connection),
    /// The peer will send nothing more (it wrote `straw-eof`): once its ring is empty, our
    /// receiving direction is at its end. The straw stays open for our sends.
    PeerFinished,
    /// The peer began a graceful close: what is in the ring is the last of its data; the pore
    /// closes soon ([`Action::ClosePore`]).
    PeerClosing,
    /// The machine is finished; nothing follows. Any pore was closed before this.
    Done(Result<Closed, HandshakeError>),
}

/// What the driver feeds the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The result of the last [`Action::Store`].
    Store(Result<StoreReply, StoreError>),
    /// The result of the last [`Action::OpenPore`].
    PoreOpened(Result<PoreGrant, ErrorKind>),
    /// The pore of the last [`Action::ClosePore`] is closed (failures were logged by the driver).
    PoreClosed,
    /// A watch event for [`StrawMachine::token`] fired.
    Watch,
    /// The local user wants the straw closed (after draining, D17), or the handshake cancelled.
    Close,
    /// The data path saw the peer die (its port closed, unmap-notify) while xenstore may still
    /// say Connected: a connected straw is lost ([`HandshakeError::PeerGone`]).
    PeerLost,
    /// We will send nothing more and the peer consumed everything we sent: tell the peer
    /// (half-close; writes `straw-eof = "1"` in our directory, a key LING ignores).
    Finish,
}

/// What an outstanding store operation was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    // opener
    CheckWarts,
    CheckPeerTop,
    RmStale,
    MkdirStraw,
    NarrowStraw,
    OpenTxn,
    // listener
    ReadKnock,
    WriteInitialising,
    ReadPeerFormat,
    ReadPeerLayouts,
    PublishTxn,
    // opener reads after Initialised
    ReadLayout,
    ReadRef(u8),
    ReadPages,
    ReadCtrlRef,
    ReadPort,
    ReadFormat,
    // both
    WatchPeer,
    ReadPeerState,
    ReadPeerDir,
    WriteConnected,
    WriteClosing,
    WriteClosingPassive,
    WriteClosed,
    ReadPeerEof,
    WriteEof,
    Cleanup,
}

/// Where the protocol stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Steps that do not wait for the peer.
    Handshake,
    /// Waiting for the peer's state to reach `want`.
    AwaitPeer(XenbusState),
    /// Opening the pore.
    OpeningPore,
    /// Up and running; watching the peer's state.
    Connected,
    /// Closing: waiting for the peer to reach Closed (or vanish).
    CloseAwaitPeer,
    /// Closing the pore before the final steps.
    ClosingPore,
    /// Best-effort cleanup ops, then `Done`.
    Finishing,
    /// Finished.
    Done,
}

/// One straw's handshake, connected phase and close protocol. See the [module docs](self).
#[derive(Debug)]
pub struct StrawMachine {
    cfg: HandshakeConfig,
    me: Endpoint,
    peer: Endpoint,
    role: Role,
    paths: StrawPaths,
    token: String,
    phase: Phase,
    out: VecDeque<Action>,
    pending: Option<Op>,
    pore_pending: bool,
    close_pending: bool,
    deadline: Option<Duration>,
    /// A watch fired while an operation was outstanding: re-read the peer's state after it.
    dirty: bool,
    watching: bool,
    pore_open: bool,
    close_requested: bool,
    timed_out: bool,
    connected: bool,
    close_armed: bool,
    now: Duration,
    finish_requested: bool,
    finish_written: bool,
    peer_finished: bool,
    // negotiation
    peer_format: Option<PeerFormat>,
    peer_offers_v2: bool,
    layout: Layout,
    refs: Vec<GrantRef>,
    port: Option<Port>,
    /// The steps left after the pore closes / the peer reaches Closed.
    after_close: AfterClose,
    cleanup: VecDeque<StoreOp>,
    result: Option<Result<Closed, HandshakeError>>,
}

/// What to do once the pore is closed / the peer reached Closed during close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterClose {
    /// Write Closed, then wait for the peer's Closed (passive local close, peer Closing).
    WriteThenWait,
    /// Write Closed, then finish.
    WriteThenFinish,
    /// Finish (cleanup) without writing.
    Finish,
}

impl StrawMachine {
    fn new(cfg: HandshakeConfig, me: Endpoint, peer: Endpoint, role: Role, now: Duration) -> Self {
        let paths = match role {
            Role::Opener => StrawPaths::new(&me, &peer),
            Role::Listener => StrawPaths::new(&peer, &me),
        };
        let token = alloc::format!("straw:{}:{:?}", peer.ident(), role);
        let deadline = now.checked_add(cfg.handshake_timeout);
        StrawMachine {
            cfg,
            me,
            peer,
            role,
            paths,
            token,
            phase: Phase::Handshake,
            out: VecDeque::new(),
            pending: None,
            pore_pending: false,
            close_pending: false,
            deadline: Some(deadline.unwrap_or(Duration::MAX)),
            dirty: false,
            watching: false,
            pore_open: false,
            close_requested: false,
            timed_out: false,
            connected: false,
            close_armed: false,
            now,
            finish_requested: false,
            finish_written: false,
            peer_finished: false,
            peer_format: None,
            peer_offers_v2: false,
            layout: Layout::Ling,
            refs: Vec::new(),
            port: None,
            after_close: AfterClose::Finish,
            cleanup: VecDeque::new(),
            result: None,
        }
    }

    /// The opener side (the seed's `open/1` → `do_open`): `me` opens a straw to `peer`.
    pub fn open(cfg: HandshakeConfig, me: Endpoint, peer: Endpoint, now: Duration) -> Self {
        let mut m = Self::new(cfg, me, peer, Role::Opener, now);
        let path = m.paths.warts_dir.clone();
        m.store(Op::CheckWarts, StoreOp::Read { path });
        m
    }

    /// The listener side (the seed's `knock_knock`): `me` was knocked by `peer` (see
    /// [`crate::endpoint::parse_knock`]).
    pub fn listen(cfg: HandshakeConfig, me: Endpoint, peer: Endpoint, now: Duration) -> Self {
        let mut m = Self::new(cfg, me, peer, Role::Listener, now);
        let path = m.paths.straw("warts");
        m.store(Op::ReadKnock, StoreOp::Read { path });
        m
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The peer endpoint.
    pub fn peer(&self) -> &Endpoint {
        &self.peer
    }

    /// The straw's two directories.
    pub fn paths(&self) -> &StrawPaths {
        &self.paths
    }

    /// The watch token this machine uses: route watch events carrying it here.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether the handshake completed and the close protocol has not begun.
    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// Whether the machine emitted [`Action::Done`] (or has it queued).
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// How the straw is ending, once that is decided (before [`Action::Done`] reports it): lets
    /// a driver tell blocked users why the pore is closing.
    pub fn ending(&self) -> Option<&Result<Closed, HandshakeError>> {
        self.result.as_ref()
    }

    /// When the driver must call [`StrawMachine::poll_action`] again at the latest.
    pub fn deadline(&self) -> Option<Duration> {
        match self.phase {
            Phase::Connected | Phase::Done | Phase::Finishing => None,
            _ => self.deadline,
        }
    }

    /// The next action, after checking `now` against the deadline. `None`: wait for an input
    /// (or the deadline).
    pub fn poll_action(&mut self, now: Duration) -> Option<Action> {
        self.now = self.now.max(now);
        if let Some(d) = self.deadline() {
            if now >= d && !self.timed_out {
                self.on_timeout();
            }
        }
        self.out.pop_front()
    }

    /// Feeds a result or an event.
    pub fn handle(&mut self, input: Input, now: Duration) {
        self.now = self.now.max(now);
        match input {
            Input::Store(r) => match self.pending.take() {
                Some(op) => self.on_store(op, r),
                None => {
                    tracing::warn!(peer = %self.peer, "straw: store reply with nothing pending")
                }
            },
            Input::PoreOpened(r) => {
                if !self.pore_pending {
                    tracing::warn!(peer = %self.peer, "straw: pore reply with nothing pending");
                    return;
                }
                self.pore_pending = false;
                self.on_pore_opened(r);
            }
            Input::PoreClosed => {
                if !self.close_pending {
                    tracing::warn!(peer = %self.peer, "straw: pore-closed with nothing pending");
                    return;
                }
                self.close_pending = false;
                self.pore_open = false;
                self.on_pore_closed();
            }
            Input::Watch => self.on_watch(),
            Input::Close => self.on_close_request(),
            Input::PeerLost => {
                if self.phase == Phase::Connected && !self.close_requested {
                    self.lost(HandshakeError::PeerGone);
                }
            }
            Input::Finish => {
                self.finish_requested = true;
                if self.phase == Phase::Connected && !self.busy() {
                    self.connected_idle();
                }
            }
        }
    }

    // ----- plumbing -----

    fn busy(&self) -> bool {
        self.pending.is_some() || self.pore_pending || self.close_pending
    }

    fn store(&mut self, op: Op, what: StoreOp) {
        debug_assert!(!self.busy());
        self.pending = Some(op);
        self.out.push_back(Action::Store(what));
    }

    fn my_state_path(&self) -> String {
        match self.role {
            Role::Opener => self.paths.warts("state"),
            Role::Listener => self.paths.straw("state"),
        }
    }

    fn peer_state_path(&self) -> String {
        match self.role {
            Role::Opener => self.paths.straw("state"),
            Role::Listener => self.paths.warts("state"),
        }
    }

    fn peer_dir(&self) -> String {
        match self.role {
            Role::Opener => self.paths.straw_dir.clone(),
            Role::Listener => self.paths.warts_dir.clone(),
        }
    }

    fn my_dir(&self) -> String {
        match self.role {
            Role::Opener => self.paths.warts_dir.clone(),
            Role::Listener => self.paths.straw_dir.clone(),
        }
    }

    fn write_state(&mut self, op: Op, st: XenbusState) {
        let path = self.my_state_path();
        self.store(
            op,
            StoreOp::Write {
                path,
                value: String::from(st.as_str()),
            },
        );
    }

    fn narrow(&self, path: String) -> StoreOp {
        StoreOp::SetPerms {
            path,
            perms: vec![
                Perm::new(Access::None, self.me.domid),
                Perm::new(Access::Read, self.peer.domid),
            ],
            best_effort: true,
        }
    }

    fn read_peer_state(&mut self) {
        self.dirty = false;
        let path = self.peer_state_path();
        self.store(Op::ReadPeerState, StoreOp::Read { path });
    }

    fn await_peer(&mut self, want: XenbusState) {
        self.phase = Phase::AwaitPeer(want);
        self.read_peer_state();
    }

    /// Fails the straw: close the pore if open, best-effort cleanup, then `Done(Err)`.
    fn fail(&mut self, error: HandshakeError) {
        if matches!(self.phase, Phase::Done | Phase::Finishing) || self.result.is_some() {
            return;
        }
        tracing::debug!(peer = %self.peer, role = ?self.role, %error, "straw: failing");
        self.result = Some(Err(error));
        let mut ops = VecDeque::new();
        if self.watching {
            ops.push_back(StoreOp::Unwatch {
                path: self.peer_dir(),
                token: self.token.clone(),
            });
        }
        // Only touch what we created: an opener that found an existing straw, or a listener
        // whose knock vanished, leaves everything alone.
        let created = !matches!(
            self.result,
            Some(Err(HandshakeError::Exists
                | HandshakeError::PeerNotFound
                | HandshakeError::Vanished))
        );
        if created {
            ops.push_back(StoreOp::Rm {
                path: self.my_dir(),
            });
            if self.role == Role::Opener {
                // The straw dir we made in the peer's tree.
                ops.push_back(StoreOp::Rm {
                    path: self.paths.straw_dir.clone(),
                });
            }
        }
        self.cleanup = ops;
        self.finish_via_pore(AfterClose::Finish);
    }

    /// Closes the pore if it is open, then continues with `after`.
    fn finish_via_pore(&mut self, after: AfterClose) {
        self.after_close = after;
        if self.pore_open {
            self.phase = Phase::ClosingPore;
            if !self.busy() {
                self.close_pending = true;
                self.out.push_back(Action::ClosePore);
            }
        } else if !self.busy() {
            self.after_pore_closed();
        } else {
            // An operation is outstanding: its reply lands in `on_store`, which sees
            // `Phase::ClosingPore` and resumes.
            self.phase = Phase::ClosingPore;
        }
    }

    fn on_pore_closed(&mut self) {
        if self.phase == Phase::ClosingPore {
            self.after_pore_closed();
        }
    }

    fn after_pore_closed(&mut self) {
        match self.after_close {
            AfterClose::WriteThenWait | AfterClose::WriteThenFinish => {
                self.phase = Phase::ClosingPore;
                self.write_state(Op::WriteClosed, XenbusState::Closed);
            }
            AfterClose::Finish => self.run_cleanup(),
        }
    }

    /// Resumes a close that was waiting for an outstanding operation.
    fn resume_closing(&mut self) {
        if self.pore_open {
            self.close_pending = true;
            self.out.push_back(Action::ClosePore);
        } else {
            self.after_pore_closed();
        }
    }

    fn run_cleanup(&mut self) {
        self.phase = Phase::Finishing;
        if let Some(op) = self.cleanup.pop_front() {
            self.pending = Some(Op::Cleanup);
            self.out.push_back(Action::Store(op));
        } else {
            self.phase = Phase::Done;
            let result = self.result.take().unwrap_or(Ok(Closed::Locally));
            self.result = Some(result.clone());
            self.out.push_back(Action::Done(result));
        }
    }

    /// The normal end of a connected straw: unwatch and remove our directory, then `Done`.
    fn end(&mut self, result: Result<Closed, HandshakeError>) {
        if self.result.is_none() {
            self.result = Some(result);
        }
        let mut ops = VecDeque::new();
        if self.watching {
            self.watching = false;
            ops.push_back(StoreOp::Unwatch {
                path: self.peer_dir(),
                token: self.token.clone(),
            });
        }
        ops.push_back(StoreOp::Rm {
            path: self.my_dir(),
        });
        self.cleanup = ops;
        self.run_cleanup();
    }

    fn on_timeout(&mut self) {
        self.timed_out = true;
        match self.phase {
            Phase::CloseAwaitPeer if self.connected => {
                tracing::warn!(peer = %self.peer, "straw: the peer did not close in time");
                self.result = Some(Err(HandshakeError::TimedOut(Stage::Close)));
                if !self.busy() {
                    // Stop waiting: the active side ends access now (deferred if still mapped).
                    self.end_after_peer_closed();
                }
                // else: `idle_or_reread` ends it when the outstanding read returns.
            }
            // If busy, the reply decides: `timed_out` makes it fail.
            Phase::Handshake | Phase::AwaitPeer(_) | Phase::OpeningPore if !self.busy() => {
                self.fail(HandshakeError::TimedOut(Stage::Handshake));
            }
            _ => {}
        }
    }

    // ----- inputs -----

    fn on_watch(&mut self) {
        match self.phase {
            Phase::AwaitPeer(_) | Phase::Connected | Phase::CloseAwaitPeer => {
                if self.busy() {
                    self.dirty = true;
                } else {
                    self.read_peer_state();
                }
            }
            _ => self.dirty = true,
        }
    }

    fn on_close_request(&mut self) {
        if self.close_requested {
            return;
        }
        self.close_requested = true;
        match self.phase {
            // If busy, the close begins once the outstanding operation returns.
            Phase::Connected if !self.busy() => self.begin_local_close(),
            Phase::Handshake | Phase::AwaitPeer(_) | Phase::OpeningPore if !self.busy() => {
                self.fail(HandshakeError::Cancelled);
            }
            _ => {}
        }
    }

    fn begin_local_close(&mut self) {
        self.result = Some(Ok(Closed::Locally));
        self.arm_close();
        match self.role {
            // Active (granting) side: Closing, wait for Closed, end access, Closed.
            Role::Listener => {
                self.phase = Phase::ClosingPore;
                self.after_close = AfterClose::Finish;
                self.write_state(Op::WriteClosing, XenbusState::Closing);
            }
            // Passive (mapping) side: unmap, Closed, wait for Closed. We first say Closing,
            // which the seed's chart does not, so that the peer learns of a graceful close
            // before our port goes (a LING peer ignores it).
            Role::Opener => {
                self.phase = Phase::ClosingPore;
                self.write_state(Op::WriteClosingPassive, XenbusState::Closing);
            }
        }
    }

    fn on_pore_opened(&mut self, r: Result<PoreGrant, ErrorKind>) {
        let grant = match r {
            Ok(g) => g,
            Err(kind) => return self.fail(HandshakeError::Pore(kind)),
        };
        self.pore_open = true;
        if self.timed_out {
            return self.fail(HandshakeError::TimedOut(Stage::Handshake));
        }
        if self.close_requested {
            return self.fail(HandshakeError::Cancelled);
        }
        match self.role {
            Role::Opener => {
                self.phase = Phase::Handshake;
                self.write_state(Op::WriteConnected, XenbusState::Connected);
            }
            Role::Listener => self.publish(grant),
        }
    }

    fn publish(&mut self, grant: PoreGrant) {
        let mut ops = Vec::new();
        let write = |ops: &mut Vec<StoreOp>, key: &str, value: String| {
            let path = self.paths.straw(key);
            ops.push(StoreOp::Write {
                path: path.clone(),
                value,
            });
            ops.push(self.narrow(path));
        };
        match self.layout {
            Layout::Ling => {
                if grant.refs.len() != LING_PAGES {
                    return self.fail(HandshakeError::Pore(ErrorKind::InvalidInput));
                }
                for (i, r) in grant.refs.iter().enumerate() {
                    write(
                        &mut ops,
                        &alloc::format!("ring-ref-{}", i + 1),
                        alloc::format!("{}", r.0),
                    );
                }
            }
            Layout::V2 { ring_pages } => {
                let Some(ctrl) = grant.refs.first() else {
                    return self.fail(HandshakeError::Pore(ErrorKind::InvalidInput));
                };
                write(&mut ops, "straw-layout", String::from("v2"));
                write(&mut ops, "ring-pages", alloc::format!("{ring_pages}"));
                write(&mut ops, "ring-ref", alloc::format!("{}", ctrl.0));
            }
        }
        write(
            &mut ops,
            "event-channel",
            alloc::format!("{}", grant.port.0),
        );
        write(&mut ops, "format", String::from(self.cfg.format.as_str()));
        write(
            &mut ops,
            "state",
            String::from(XenbusState::Initialised.as_str()),
        );
        self.phase = Phase::Handshake;
        self.store(Op::PublishTxn, StoreOp::Transaction(ops));
    }

    fn on_store(&mut self, op: Op, r: Result<StoreReply, StoreError>) {
        if op == Op::Cleanup {
            if let Err(e) = r {
                tracing::debug!(peer = %self.peer, error = %e, "straw: cleanup step failed");
            }
            return self.run_cleanup();
        }
        // A close or failure decided while this op was outstanding.
        if self.phase == Phase::ClosingPore
            && !matches!(
                op,
                Op::WriteClosing | Op::WriteClosingPassive | Op::WriteClosed
            )
        {
            return self.resume_closing();
        }
        if self.timed_out
            && matches!(
                self.phase,
                Phase::Handshake | Phase::AwaitPeer(_) | Phase::OpeningPore
            )
        {
            return self.fail(HandshakeError::TimedOut(Stage::Handshake));
        }
        if self.close_requested && !self.connected && self.phase != Phase::Done {
            return self.fail(HandshakeError::Cancelled);
        }
        let fail_store = |m: &mut Self, name: &'static str, e: StoreError| {
            m.fail(HandshakeError::Store { op: name, error: e })
        };
        match op {
            // ----- opener -----
            Op::CheckWarts => match r {
                Ok(_) => self.fail(HandshakeError::Exists),
                Err(StoreError::NotFound) => {
                    // Does the peer endpoint run a manager? (A privileged connection could
                    // otherwise create its straw top for it, and wait in vain.)
                    let path = self.peer.straw_top();
                    self.store(Op::CheckPeerTop, StoreOp::Read { path });
                }
                Err(e) => fail_store(self, "read", e),
            },
            Op::CheckPeerTop => match r {
                Err(StoreError::NotFound) => self.fail(HandshakeError::PeerNotFound),
                // Readable, or hidden from us: the mkdir below decides.
                Ok(_) | Err(StoreError::PermissionDenied) => {
                    let path = self.paths.straw_dir.clone();
                    self.store(Op::RmStale, StoreOp::Rm { path });
                }
                Err(e) => fail_store(self, "read", e),
            },
            Op::RmStale => {
                let path = self.paths.straw_dir.clone();
                self.store(Op::MkdirStraw, StoreOp::Mkdir { path });
            }
            Op::MkdirStraw => match r {
                Ok(_) => {
                    let path = self.paths.straw_dir.clone();
                    // D18: narrow the straw dir to the pair.
                    self.store(
                        Op::NarrowStraw,
                        StoreOp::SetPerms {
                            path,
                            perms: vec![
                                Perm::new(Access::None, self.me.domid),
                                Perm::new(Access::Both, self.peer.domid),
                            ],
                            best_effort: true,
                        },
                    );
                }
                Err(StoreError::NotFound | StoreError::PermissionDenied) => {
                    self.fail(HandshakeError::PeerNotFound)
                }
                Err(e) => fail_store(self, "mkdir", e),
            },
            Op::NarrowStraw => match r {
                Ok(_) => self.open_txn(),
                Err(e) => fail_store(self, "set-perms", e),
            },
            Op::OpenTxn => match r {
                Ok(_) => {
                    let path = self.peer_dir();
                    let token = self.token.clone();
                    self.store(Op::WatchPeer, StoreOp::Watch { path, token });
                }
                Err(e) => fail_store(self, "transaction", e),
            },
            Op::WatchPeer => match r {
                Ok(_) => {
                    self.watching = true;
                    match self.role {
                        Role::Opener => self.await_peer(XenbusState::Initialised),
                        Role::Listener => self.await_peer(XenbusState::InitWait),
                    }
                }
                Err(e) => fail_store(self, "watch", e),
            },
            Op::ReadLayout => match r {
                Err(StoreError::NotFound) => {
                    self.layout = Layout::Ling;
                    self.read_ref(1);
                }
                Ok(StoreReply::Value(v)) => match parse::layout_is_v2(&v) {
                    Ok(()) if self.cfg.v2_pages.is_some() => {
                        self.layout = Layout::V2 { ring_pages: 0 };
                        let path = self.paths.straw("ring-pages");
                        self.store(Op::ReadPages, StoreOp::Read { path });
                    }
                    // We did not offer v2 (or it is garbage).
                    Ok(()) => self.protocol("straw-layout", ParseError::BadToken),
                    Err(e) => self.protocol("straw-layout", e),
                },
                Ok(StoreReply::Done | StoreReply::Perms(_) | StoreReply::Children(_)) => {
                    self.protocol("straw-layout", ParseError::Empty)
                }
                Err(e) => fail_store(self, "read", e),
            },
            Op::ReadRef(i) => {
                if let Some(v) = self.value(r, "ring-ref") {
                    match parse::grant_ref(&v) {
                        Ok(g) => {
                            self.refs.push(g);
                            if usize::from(i) < LING_PAGES {
                                self.read_ref(i + 1);
                            } else {
                                self.read_port();
                            }
                        }
                        Err(e) => self.protocol("ring-ref", e),
                    }
                }
            }
            Op::ReadPages => {
                if let Some(v) = self.value(r, "ring-pages") {
                    match parse::ring_pages(&v, self.cfg.max_v2_pages) {
                        Ok(n) => {
                            self.layout = Layout::V2 { ring_pages: n };
                            let path = self.paths.straw("ring-ref");
                            self.store(Op::ReadCtrlRef, StoreOp::Read { path });
                        }
                        Err(e) => self.protocol("ring-pages", e),
                    }
                }
            }
            Op::ReadCtrlRef => {
                if let Some(v) = self.value(r, "ring-ref") {
                    match parse::grant_ref(&v) {
                        Ok(g) => {
                            self.refs.push(g);
                            self.read_port();
                        }
                        Err(e) => self.protocol("ring-ref", e),
                    }
                }
            }
            Op::ReadPort => {
                if let Some(v) = self.value(r, "event-channel") {
                    match parse::port(&v) {
                        Ok(p) => {
                            self.port = Some(p);
                            let path = self.paths.straw("format");
                            self.store(Op::ReadFormat, StoreOp::Read { path });
                        }
                        Err(e) => self.protocol("event-channel", e),
                    }
                }
            }
            Op::ReadFormat | Op::ReadPeerFormat => {
                let parsed = match r {
                    Err(StoreError::NotFound) => Ok(None),
                    Ok(StoreReply::Value(v)) if v.len() <= MAX_VALUE_LEN => {
                        parse::format(&v).map(Some)
                    }
                    Ok(_) => Err(ParseError::TooLong),
                    Err(e) => return fail_store(self, "read", e),
                };
                match parsed {
                    Ok(f) => self.peer_format = f,
                    Err(e) => return self.protocol("format", e),
                }
                if op == Op::ReadFormat {
                    self.open_passive();
                } else {
                    let path = self.paths.warts("straw-layouts");
                    self.store(Op::ReadPeerLayouts, StoreOp::Read { path });
                }
            }
            Op::WriteConnected => match r {
                Ok(_) => match self.role {
                    Role::Opener => self.await_peer(XenbusState::Connected),
                    Role::Listener => self.connect(),
                },
                Err(e) => fail_store(self, "write", e),
            },

            // ----- listener -----
            Op::ReadKnock => match r {
                Err(StoreError::NotFound) => self.fail(HandshakeError::Vanished),
                Ok(StoreReply::Value(v)) => {
                    if v == self.paths.warts_dir.as_bytes() {
                        // The seed's plain write, wrapped with the narrowing (D18) so that the
                        // node is never visible with the wrong permissions.
                        let path = self.paths.straw("state");
                        let ops = vec![
                            StoreOp::Write {
                                path: path.clone(),
                                value: String::from(XenbusState::Initialising.as_str()),
                            },
                            self.narrow(path),
                        ];
                        self.store(Op::WriteInitialising, StoreOp::Transaction(ops));
                    } else {
                        self.protocol("warts", ParseError::BadPath);
                    }
                }
                Ok(StoreReply::Done | StoreReply::Perms(_) | StoreReply::Children(_)) => {
                    self.protocol("warts", ParseError::Empty)
                }
                Err(e) => fail_store(self, "read", e),
            },
            Op::WriteInitialising => match r {
                Ok(_) => {
                    let path = self.peer_dir();
                    let token = self.token.clone();
                    self.store(Op::WatchPeer, StoreOp::Watch { path, token });
                }
                Err(e) => fail_store(self, "transaction", e),
            },
            Op::ReadPeerLayouts => {
                let offers_v2 = match r {
                    Err(StoreError::NotFound) => Ok(false),
                    Ok(StoreReply::Value(v)) => parse::layouts_offer_v2(&v),
                    Ok(StoreReply::Done | StoreReply::Perms(_) | StoreReply::Children(_)) => {
                        Err(ParseError::Empty)
                    }
                    Err(e) => return fail_store(self, "read", e),
                };
                match offers_v2 {
                    Ok(v2) => {
                        self.peer_offers_v2 = v2;
                        self.layout = match (v2, self.cfg.v2_pages) {
                            (true, Some(n)) => Layout::V2 { ring_pages: n },
                            _ => Layout::Ling,
                        };
                        self.phase = Phase::OpeningPore;
                        self.pore_pending = true;
                        self.out.push_back(Action::OpenPore(PoreRequest::Active {
                            peer: self.peer.domid,
                            layout: self.layout,
                        }));
                    }
                    Err(e) => self.protocol("straw-layouts", e),
                }
            }
            Op::PublishTxn => match r {
                Ok(_) => self.await_peer(XenbusState::Connected),
                Err(e) => fail_store(self, "transaction", e),
            },

            // ----- peer state -----
            Op::ReadPeerState => match r {
                Ok(StoreReply::Value(v)) => match XenbusState::parse(&v) {
                    Ok(st) => self.on_peer_state(Some(st)),
                    Err(e) => self.protocol("state", e),
                },
                Ok(StoreReply::Done | StoreReply::Perms(_) | StoreReply::Children(_)) => {
                    self.protocol("state", ParseError::Empty)
                }
                // Not written yet (or, on a racing xenstored, not yet narrowed for us), or is
                // the whole directory gone?
                Err(StoreError::NotFound | StoreError::PermissionDenied)
                    if matches!(self.phase, Phase::AwaitPeer(_)) =>
                {
                    let path = self.peer_dir();
                    self.store(Op::ReadPeerDir, StoreOp::Read { path });
                }
                // Gone. A missing node under an ancestor we may not read is EACCES, not ENOENT
                // (C xenstored): so reads the state of a peer whose manager removed its straw
                // top, or whose domain is gone. A normal end, not a warning.
                Err(StoreError::NotFound | StoreError::PermissionDenied) => {
                    self.on_peer_state(None);
                }
                Err(e) => match self.phase {
                    Phase::Connected | Phase::CloseAwaitPeer => {
                        tracing::warn!(peer = %self.peer, error = %e, "straw: cannot read the peer's state");
                        self.on_peer_state(None)
                    }
                    _ => fail_store(self, "read", e),
                },
            },
            Op::ReadPeerDir => match r {
                Err(StoreError::NotFound) => self.on_peer_state(None),
                Ok(_) => self.idle_or_reread(),
                Err(e) => fail_store(self, "read", e),
            },
            Op::WriteClosing => {
                if let Err(e) = r {
                    tracing::debug!(peer = %self.peer, error = %e, "straw: writing Closing failed");
                }
                self.phase = Phase::CloseAwaitPeer;
                self.after_close = AfterClose::WriteThenFinish;
                self.read_peer_state();
            }
            Op::WriteClosingPassive => {
                if let Err(e) = r {
                    tracing::debug!(peer = %self.peer, error = %e, "straw: writing Closing failed");
                }
                self.finish_via_pore(AfterClose::WriteThenWait);
            }
            Op::WriteClosed => {
                if let Err(e) = r {
                    tracing::debug!(peer = %self.peer, error = %e, "straw: writing Closed failed");
                }
                match self.after_close {
                    AfterClose::WriteThenWait if !self.timed_out => {
                        self.phase = Phase::CloseAwaitPeer;
                        self.after_close = AfterClose::Finish;
                        self.read_peer_state();
                    }
                    _ => {
                        let res = self.result.clone().unwrap_or(Ok(Closed::Locally));
                        self.end(res);
                    }
                }
            }
            Op::ReadPeerEof => match r {
                Ok(StoreReply::Value(v)) if v == b"1" => {
                    self.peer_finished = true;
                    self.out.push_back(Action::PeerFinished);
                    self.connected_idle();
                }
                Ok(_) => self.protocol("straw-eof", ParseError::BadToken),
                Err(StoreError::NotFound) => self.connected_idle(),
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "straw: reading straw-eof");
                    self.connected_idle();
                }
            },
            Op::WriteEof => {
                if let Err(e) = r {
                    tracing::warn!(peer = %self.peer, error = %e, "straw: writing straw-eof failed");
                }
                self.finish_written = true;
                self.connected_idle();
            }
            // Cleanup replies are handled before this match.
            Op::Cleanup => {}
        }
    }

    fn idle_or_reread(&mut self) {
        if self.timed_out && self.phase == Phase::CloseAwaitPeer {
            return self.end_after_peer_closed();
        }
        if self.dirty {
            self.read_peer_state();
        }
    }

    fn value(&mut self, r: Result<StoreReply, StoreError>, key: &'static str) -> Option<Vec<u8>> {
        match r {
            Ok(StoreReply::Value(v)) if v.len() <= MAX_VALUE_LEN => Some(v),
            Ok(StoreReply::Value(_)) => {
                self.protocol(key, ParseError::TooLong);
                None
            }
            Ok(StoreReply::Done | StoreReply::Perms(_) | StoreReply::Children(_)) => {
                self.protocol(key, ParseError::Empty);
                None
            }
            Err(StoreError::NotFound) => {
                self.protocol(key, ParseError::Empty);
                None
            }
            Err(e) => {
                self.fail(HandshakeError::Store {
                    op: "read",
                    error: e,
                });
                None
            }
        }
    }

    fn protocol(&mut self, key: &'static str, error: ParseError) {
        tracing::warn!(peer = %self.peer, key, %error, "straw: the peer wrote garbage");
        if self.connected {
            self.lost(HandshakeError::Protocol { key, error });
        } else {
            self.fail(HandshakeError::Protocol { key, error });
        }
    }

    fn open_txn(&mut self) {
        let w = |path: String, value: &str| StoreOp::Write {
            path,
            value: String::from(value),
        };
        let warts = self.paths.warts_dir.clone();
        let mut ops = vec![
            StoreOp::Mkdir {
                path: warts.clone(),
            },
            self.narrow(warts.clone()),
            w(self.paths.warts("straw"), &self.paths.straw_dir),
            w(self.paths.warts("state"), XenbusState::InitWait.as_str()),
            w(self.paths.warts("format"), self.cfg.format.as_str()),
        ];
        let layouts = if self.cfg.v2_pages.is_some() {
            "ling v2"
        } else {
            "ling"
        };
        ops.push(w(self.paths.warts("straw-layouts"), layouts));
        // This write wakes the peer.
        ops.push(w(self.paths.straw("warts"), &warts));
        self.store(Op::OpenTxn, StoreOp::Transaction(ops));
    }

    fn read_ref(&mut self, i: u8) {
        let path = self.paths.straw(&alloc::format!("ring-ref-{i}"));
        self.store(Op::ReadRef(i), StoreOp::Read { path });
    }

    fn read_port(&mut self) {
        let path = self.paths.straw("event-channel");
        self.store(Op::ReadPort, StoreOp::Read { path });
    }

    fn open_passive(&mut self) {
        let Some(port) = self.port else {
            return self.protocol("event-channel", ParseError::Empty);
        };
        self.phase = Phase::OpeningPore;
        self.pore_pending = true;
        self.out.push_back(Action::OpenPore(PoreRequest::Passive {
            peer: self.peer.domid,
            layout: self.layout,
            refs: core::mem::take(&mut self.refs),
            port,
        }));
    }

    fn connect(&mut self) {
        self.phase = Phase::Connected;
        self.connected = true;
        self.deadline = None;
        let conn = Connection {
            peer: self.peer.clone(),
            role: self.role,
            layout: self.layout,
            format: Format::negotiate(self.cfg.format, self.peer_format),
        };
        tracing::debug!(?conn, "straw: connected");
        self.out.push_back(Action::Connected(conn));
        if self.close_requested {
            self.begin_local_close();
        } else if self.dirty {
            self.read_peer_state();
        } else {
            self.connected_idle();
        }
    }

    /// A connected straw whose peer misbehaved or vanished.
    fn lost(&mut self, error: HandshakeError) {
        self.arm_close();
        tracing::warn!(peer = %self.peer, %error, "straw: connection lost");
        if self.result.is_none() {
            self.result = Some(Err(error));
        }
        self.finish_via_pore(AfterClose::WriteThenFinish);
    }

    fn end_after_peer_closed(&mut self) {
        // The peer reached Closed (or vanished) while we close.
        match self.role {
            Role::Listener => self.finish_via_pore(AfterClose::WriteThenFinish),
            Role::Opener => {
                let res = self.result.clone().unwrap_or(Ok(Closed::Locally));
                self.end(res);
            }
        }
    }

    /// The peer's state (`None`: its state key or directory is gone).
    fn on_peer_state(&mut self, st: Option<XenbusState>) {
        use XenbusState as S;
        match self.phase {
            Phase::AwaitPeer(want) => match st {
                None => self.fail(HandshakeError::PeerGone),
                Some(s) if s == want => self.peer_reached(want),
                Some(S::Closing | S::Closed) => self.fail(HandshakeError::PeerClosed),
                // States on the way there: keep waiting.
                Some(S::Initialising) if want == S::Initialised => self.idle_or_reread(),
                Some(S::Initialised) if want == S::Connected && self.role == Role::Opener => {
                    self.idle_or_reread()
                }
                Some(S::InitWait) if want == S::Connected && self.role == Role::Listener => {
                    self.idle_or_reread()
                }
                Some(s) => self.fail(HandshakeError::UnexpectedState(s)),
            },
            Phase::Connected => {
                if self.close_requested {
                    return self.begin_local_close();
                }
                match st {
                    Some(S::Connected) if !self.peer_finished => {
                        let path = alloc::format!("{}/straw-eof", self.peer_dir());
                        self.store(Op::ReadPeerEof, StoreOp::Read { path });
                    }
                    Some(S::Connected) => self.connected_idle(),
                    None => self.lost(HandshakeError::PeerGone),
                    Some(S::Closing) => {
                        self.arm_close();
                        tracing::debug!(peer = %self.peer, "straw: the peer is closing");
                        self.result = Some(Ok(Closed::ByPeer));
                        self.out.push_back(Action::PeerClosing);
                        match self.role {
                            // Passive: unmap, Closed, wait for Closed.
                            Role::Opener => self.finish_via_pore(AfterClose::WriteThenWait),
                            // Active: the mapping side should not write Closing; wait for Closed.
                            Role::Listener => self.await_close(),
                        }
                    }
                    Some(S::Closed) => {
                        self.arm_close();
                        tracing::debug!(peer = %self.peer, "straw: the peer closed");
                        self.result = Some(Ok(Closed::ByPeer));
                        self.out.push_back(Action::PeerClosing);
                        self.finish_via_pore(AfterClose::WriteThenFinish);
                    }
                    Some(s) => self.lost(HandshakeError::UnexpectedState(s)),
                }
            }
            Phase::CloseAwaitPeer => match st {
                Some(S::Closed) | None => self.end_after_peer_closed(),
                Some(S::Connected | S::Closing) => self.idle_or_reread(),
                Some(s) => {
                    tracing::warn!(peer = %self.peer, state = %s, "straw: odd peer state while closing");
                    self.end_after_peer_closed();
                }
            },
            _ => {}
        }
    }

    /// Connected with nothing outstanding: write our end-of-stream if asked, else re-read the
    /// peer's state if a watch fired meanwhile.
    fn connected_idle(&mut self) {
        if self.close_requested {
            return self.begin_local_close();
        }
        if self.finish_requested && !self.finish_written {
            let path = alloc::format!("{}/straw-eof", self.my_dir());
            let ops = vec![
                StoreOp::Write {
                    path: path.clone(),
                    value: String::from("1"),
                },
                self.narrow(path),
            ];
            return self.store(Op::WriteEof, StoreOp::Transaction(ops));
        }
        self.idle_or_reread();
    }

    fn await_close(&mut self) {
        self.phase = Phase::CloseAwaitPeer;
        self.after_close = AfterClose::WriteThenFinish;
        self.idle_or_reread();
    }

    fn peer_reached(&mut self, st: XenbusState) {
        match (self.role, st) {
            (Role::Opener, XenbusState::Initialised) => {
                self.phase = Phase::Handshake;
                let path = self.paths.straw("straw-layout");
                self.store(Op::ReadLayout, StoreOp::Read { path });
            }
            (Role::Opener, XenbusState::Connected) => self.connect(),
            (Role::Listener, XenbusState::InitWait) => {
                self.phase = Phase::Handshake;
                let path = self.paths.warts("format");
                self.store(Op::ReadPeerFormat, StoreOp::Read { path });
            }
            (Role::Listener, XenbusState::Connected) => {
                self.phase = Phase::Handshake;
                self.write_state(Op::WriteConnected, XenbusState::Connected);
            }
            _ => self.fail(HandshakeError::UnexpectedState(st)),
        }
    }

    fn arm_close(&mut self) {
        if self.connected && !self.close_armed {
            self.close_armed = true;
            self.deadline = Some(self.now.saturating_add(self.cfg.close_timeout));
        }
    }
}

/// What a manager does at start for endpoint `me` (the seed's `init/1`): create the straw top
/// (everyone may write: perms `b<me>`) and the warts top (everyone may read: `r<me>`). The
/// manager then watches [`Endpoint::straw_top`] and hands knocks
/// ([`crate::endpoint::parse_knock`]) to [`StrawMachine::listen`].
///
/// ```
/// use pore_core::DomId;
/// use pore_straw::{handshake::setup_ops, Endpoint};
/// assert_eq!(setup_ops(&Endpoint::seed(DomId(1))).len(), 4);
/// ```
pub fn setup_ops(me: &Endpoint) -> Vec<StoreOp> {
    let straw = me.straw_top();
    let warts = me.warts_top();
    vec![
        StoreOp::Mkdir {
            path: straw.clone(),
        },
        StoreOp::SetPerms {
            path: straw,
            perms: vec![Perm::new(Access::Both, me.domid)],
            best_effort: false,
        },
        StoreOp::Mkdir {
            path: warts.clone(),
        },
        StoreOp::SetPerms {
            path: warts,
            perms: vec![Perm::new(Access::Read, me.domid)],
            best_effort: false,
        },
    ]
}

/// What a manager removes when it shuts down after closing its straws: both tops.
pub fn teardown_ops(me: &Endpoint) -> Vec<StoreOp> {
    vec![
        StoreOp::Rm {
            path: me.straw_top(),
        },
        StoreOp::Rm {
            path: me.warts_top(),
        },
    ]
}

#[cfg(test)]
mod tests;
