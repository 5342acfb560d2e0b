//! What each store reply does: the handshake's steps, one per outstanding operation.

use super::*;

impl StrawMachine {
    pub(super) fn on_store(&mut self, op: Op, r: Result<StoreReply, StoreError>) {
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
                    if self.cfg.polling && matches!(self.layout, Layout::V2 { .. }) {
                        let path = self.paths.straw("straw-polling");
                        self.store(Op::ReadPolling, StoreOp::Read { path });
                    } else {
                        self.open_passive();
                    }
                } else {
                    let path = self.paths.warts("straw-layouts");
                    self.store(Op::ReadPeerLayouts, StoreOp::Read { path });
                }
            }
            Op::ReadPolling | Op::ReadPeerPolling => {
                // Absent: a peer that does not know the key (LING, an older pore), or one
                // that does not ask: wake flags.
                let parsed = match r {
                    Err(StoreError::NotFound) => Ok(false),
                    Ok(StoreReply::Value(v)) => parse::polling(&v),
                    Ok(StoreReply::Done | StoreReply::Perms(_) | StoreReply::Children(_)) => {
                        Err(ParseError::Empty)
                    }
                    Err(e) => return fail_store(self, "read", e),
                };
                match parsed {
                    Ok(p) => self.polling = p,
                    Err(e) => return self.protocol("straw-polling", e),
                }
                if op == Op::ReadPolling {
                    self.open_passive();
                } else {
                    self.open_active();
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
                        if self.cfg.polling && matches!(self.layout, Layout::V2 { .. }) {
                            let path = self.paths.warts("straw-polling");
                            self.store(Op::ReadPeerPolling, StoreOp::Read { path });
                        } else {
                            self.open_active();
                        }
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

    pub(super) fn idle_or_reread(&mut self) {
        if self.timed_out && self.phase == Phase::CloseAwaitPeer {
            return self.end_after_peer_closed();
        }
        if self.dirty {
            self.read_peer_state();
        }
    }

    pub(super) fn value(
        &mut self,
        r: Result<StoreReply, StoreError>,
        key: &'static str,
    ) -> Option<Vec<u8>> {
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

    pub(super) fn protocol(&mut self, key: &'static str, error: ParseError) {
        tracing::warn!(peer = %self.peer, key, %error, "straw: the peer wrote garbage");
        if self.connected {
            self.lost(HandshakeError::Protocol { key, error });
        } else {
            self.fail(HandshakeError::Protocol { key, error });
        }
    }

    pub(super) fn open_txn(&mut self) {
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
        if self.cfg.polling && self.cfg.v2_pages.is_some() {
            ops.push(w(self.paths.warts("straw-polling"), "1"));
        }
        // This write wakes the peer.
        ops.push(w(self.paths.straw("warts"), &warts));
        self.store(Op::OpenTxn, StoreOp::Transaction(ops));
    }

    pub(super) fn read_ref(&mut self, i: u8) {
        let path = self.paths.straw(&alloc::format!("ring-ref-{i}"));
        self.store(Op::ReadRef(i), StoreOp::Read { path });
    }

    pub(super) fn read_port(&mut self) {
        let path = self.paths.straw("event-channel");
        self.store(Op::ReadPort, StoreOp::Read { path });
    }

    pub(super) fn open_active(&mut self) {
        self.phase = Phase::OpeningPore;
        self.pore_pending = true;
        self.out.push_back(Action::OpenPore(PoreRequest::Active {
            peer: self.peer.domid,
            layout: self.layout,
        }));
    }

    pub(super) fn open_passive(&mut self) {
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
}
