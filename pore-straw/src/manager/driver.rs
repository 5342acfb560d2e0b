//! The thread of one straw: it runs the straw's handshake machine, performs its actions and
//! hands the connected straw over.

use super::*;

/// Runs one straw's machine on its own thread.
pub(super) struct Driver<B: Backend, X: StoreClient> {
    pub(super) inner: Arc<Inner<B, X>>,
    pub(super) machine: StrawMachine,
    pub(super) token: String,
    pub(super) input: mpsc::Receiver<Input>,
    pub(super) self_input: mpsc::Sender<Input>,
    pub(super) reply: Option<OpenReply<B>>,
    pub(super) pore: Option<StrawPore<B>>,
    /// Why the last pore failed to open (the machine learns only its kind): reported to an
    /// opener whose handshake ends with [`HandshakeError::Pore`].
    pub(super) open_error: Option<StrawError>,
    pub(super) shared: Option<Arc<Shared<B>>>,
}

impl<B, X> Driver<B, X>
where
    B: Backend + Send + Sync + 'static,
    B::Channel: 'static,
    X: StoreClient,
{
    pub(super) fn run(&mut self) {
        let peer = self.machine.peer().clone();
        // The data path's re-read requests (`Shared::peer_vanished`) answered once the watch
        // input being handled is: its re-read of the peer's state comes after them.
        let mut answering = None;
        loop {
            let now = self.inner.now();
            let Some(action) = self.machine.poll_action(now) else {
                if let (Some(sh), Some(asked)) = (&self.shared, answering.take()) {
                    sh.vanish_answered(asked);
                }
                let wait = self
                    .machine
                    .deadline()
                    .map(|d| d.saturating_sub(now))
                    .unwrap_or(Duration::from_millis(500))
                    .min(Duration::from_millis(500));
                match self.input.recv_timeout(wait) {
                    Ok(i) => {
                        if i == Input::Watch {
                            answering = self.shared.as_ref().map(|sh| sh.vanish_asked());
                        }
                        self.machine.handle(i, self.inner.now())
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        self.machine.handle(Input::Close, self.inner.now())
                    }
                }
                continue;
            };
            let observer = lock(&self.inner.observer).clone();
            if let Some(o) = observer {
                o(&peer, &action);
            }
            match action {
                Action::Store(op) => {
                    let op = self.rewrite_token(op);
                    let r = {
                        // Not while the straw top is rebuilt (see `Inner::check_top`).
                        let _gate = self
                            .inner
                            .store_gate
                            .read()
                            .unwrap_or_else(|p| p.into_inner());
                        self.inner.store.perform(&op)
                    };
                    self.machine.handle(Input::Store(r), self.inner.now());
                }
                Action::OpenPore(req) => {
                    let r = self.open_pore(req);
                    self.machine.handle(Input::PoreOpened(r), self.inner.now());
                }
                Action::ClosePore => {
                    self.close_pore();
                    self.machine.handle(Input::PoreClosed, self.inner.now());
                }
                Action::Connected(conn) => self.connected(conn),
                Action::PeerClosing => {
                    if let Some(sh) = &self.shared {
                        sh.peer_left(true);
                    }
                }
                Action::PeerFinished => {
                    if let Some(sh) = &self.shared {
                        sh.peer_finished();
                    }
                }
                Action::Done(result) => {
                    self.done(&peer, result);
                    return;
                }
            }
        }
    }

    fn rewrite_token(&self, op: StoreOp) -> StoreOp {
        match op {
            StoreOp::Watch { path, .. } => StoreOp::Watch {
                path,
                token: self.token.clone(),
            },
            StoreOp::Unwatch { path, .. } => StoreOp::Unwatch {
                path,
                token: self.token.clone(),
            },
            op => op,
        }
    }

    fn open_pore(&mut self, req: PoreRequest) -> Result<PoreGrant, pore_core::ErrorKind> {
        let backend = &*self.inner.backend;
        let r = match req {
            PoreRequest::Active { peer, layout } => {
                open_active(backend, peer, layout).map(|(p, g)| (p, Some(g)))
            }
            PoreRequest::Passive {
                peer,
                layout,
                refs,
                port,
            } => open_passive(backend, peer, layout, &refs, port).map(|p| (p, None)),
        };
        match r {
            Ok((pore, grant)) => {
                self.pore = Some(pore);
                Ok(grant.unwrap_or(PoreGrant {
                    refs: Vec::new(),
                    port: pore_core::Port(0),
                }))
            }
            Err(e) => {
                tracing::warn!(error = %e, "strawman: opening the pore failed");
                let kind = pore_core::Error::kind(&e);
                self.open_error = Some(e);
                Err(kind)
            }
        }
    }

    fn close_pore(&mut self) {
        if let Some(sh) = self.shared.as_ref() {
            match self.machine.ending() {
                Some(Ok(Closed::ByPeer)) => sh.peer_left(true),
                Some(Err(_)) => sh.peer_left(false),
                _ => {}
            }
            let parked = sh.shutdown_pore(Duration::from_millis(200));
            self.inner.park(self.machine.peer().domid, parked);
        }
        // A pore opened but never handed out (the handshake failed after it was opened).
        if let Some(pore) = self.pore.take() {
            let parked = pore.close_counting_parked();
            self.inner.park(self.machine.peer().domid, parked);
        }
    }

    fn connected(&mut self, conn: crate::handshake::Connection) {
        let Some(mut pore) = self.pore.take() else {
            tracing::warn!("strawman: connected without a pore");
            let _ = self.self_input.send(Input::Close);
            return;
        };
        // Both sides agreed (D26); the machine agrees only on v2, whose halves have it.
        if let Err(e) = pore.set_polling(conn.polling) {
            tracing::warn!(error = %e, "strawman: no polling mode");
            self.pore = Some(pore);
            let _ = self.self_input.send(Input::Close);
            return;
        }
        let input = Mutex::new(self.self_input.clone());
        let hook = Box::new(move |i: Input| {
            let _ = lock(&input).send(i);
        });
        let straw = Straw::build(
            pore,
            conn.peer.clone(),
            conn.role,
            conn.format,
            self.inner.cfg.straw.clone(),
            Some(hook),
        );
        let layout = match conn.layout {
            Layout::Ling => "ling",
            Layout::V2 { .. } => "v2",
        };
        tracing::info!(me = %self.inner.me, peer = %conn.peer, role = ?conn.role, layout, format = conn.format.as_str(), polling = conn.polling, "strawman: connected");
        self.shared = Some(straw.shared());
        let mut st = lock(&self.inner.state);
        if let Some(e) = st.straws.get_mut(&(conn.peer.clone(), conn.role)) {
            e.slot = Slot::Live(straw.shared());
        }
        match self.reply.take() {
            Some(reply) => {
                drop(st);
                if let Err(mpsc::SendError(Ok(straw))) = reply.send(Ok(straw)) {
                    // The caller gave up waiting: close the straw.
                    drop(straw);
                    let _ = self.self_input.send(Input::Close);
                }
            }
            None => {
                st.unclaimed.push_back(straw);
                drop(st);
                self.inner.changed.notify_all();
            }
        }
    }

    fn done(&mut self, peer: &Endpoint, result: Result<Closed, HandshakeError>) {
        match &result {
            Ok(c) => tracing::info!(me = %self.inner.me, %peer, how = ?c, "strawman: straw closed"),
            Err(HandshakeError::Vanished) => tracing::debug!(%peer, "strawman: knock vanished"),
            Err(e) => {
                tracing::warn!(me = %self.inner.me, %peer, error = %e, "strawman: straw ended")
            }
        }
        // Forget the straw before anyone hears of its end: a caller woken below may open to
        // the same peer at once, and must not find the old entry (`Exists`).
        let mut st = lock(&self.inner.state);
        let role = self.machine.role();
        st.straws.remove(&(peer.clone(), role));
        st.unclaimed
            .retain(|s| !(s.peer() == peer && s.role() == role));
        drop(st);
        if let Some(sh) = self.shared.take() {
            sh.finished(result.clone());
        }
        if let (Some(reply), Err(e)) = (self.reply.take(), &result) {
            let e = match (e, self.open_error.take()) {
                (HandshakeError::Pore(_), Some(open)) => ManagerError::Pore(open),
                (e, _) => ManagerError::Handshake(e.clone()),
            };
            let _ = reply.send(Err(e));
        }
        self.inner.changed.notify_all();
    }
}
