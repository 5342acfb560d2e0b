//! The handshake machine itself: its phases, the store operations it waits for, and how each
//! input moves it (see the [module docs](super) for the protocol).

use super::*;

mod inputs;
mod replies;

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
    ReadPeerPolling,
    PublishTxn,
    // opener reads after Initialised
    ReadLayout,
    ReadRef(u8),
    ReadPages,
    ReadCtrlRef,
    ReadPort,
    ReadFormat,
    ReadPolling,
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

/// One straw's handshake, connected phase and close protocol. See the [module docs](super).
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
    /// Polling mode agreed (D26).
    polling: bool,
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
            polling: false,
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
}
