//! The handshake machine itself: its phases, the store operations it waits for, and how each
//! input moves it (see the [module docs](super) for the protocol).

use super::*;

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
