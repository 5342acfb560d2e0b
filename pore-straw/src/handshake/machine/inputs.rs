//! How the driver's inputs other than store replies move the machine (watch events, close
//! requests, the pore opened), and the peer's state once read.

use super::*;

impl StrawMachine {
    pub(super) fn on_watch(&mut self) {
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

    pub(super) fn on_close_request(&mut self) {
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

    pub(super) fn begin_local_close(&mut self) {
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

    pub(super) fn on_pore_opened(&mut self, r: Result<PoreGrant, ErrorKind>) {
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

    pub(super) fn publish(&mut self, grant: PoreGrant) {
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
                if self.polling {
                    write(&mut ops, "straw-polling", String::from("1"));
                }
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

    pub(super) fn connect(&mut self) {
        self.phase = Phase::Connected;
        self.connected = true;
        self.deadline = None;
        let conn = Connection {
            peer: self.peer.clone(),
            role: self.role,
            layout: self.layout,
            format: Format::negotiate(self.cfg.format, self.peer_format),
            polling: self.polling,
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
    pub(super) fn lost(&mut self, error: HandshakeError) {
        self.arm_close();
        tracing::warn!(peer = %self.peer, %error, "straw: connection lost");
        if self.result.is_none() {
            self.result = Some(Err(error));
        }
        self.finish_via_pore(AfterClose::WriteThenFinish);
    }

    pub(super) fn end_after_peer_closed(&mut self) {
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
    pub(super) fn on_peer_state(&mut self, st: Option<XenbusState>) {
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
    pub(super) fn connected_idle(&mut self) {
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

    pub(super) fn await_close(&mut self) {
        self.phase = Phase::CloseAwaitPeer;
        self.after_close = AfterClose::WriteThenFinish;
        self.idle_or_reread();
    }

    pub(super) fn peer_reached(&mut self, st: XenbusState) {
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

    pub(super) fn arm_close(&mut self) {
        if self.connected && !self.close_armed {
            self.close_armed = true;
            self.deadline = Some(self.now.saturating_add(self.cfg.close_timeout));
        }
    }
}
