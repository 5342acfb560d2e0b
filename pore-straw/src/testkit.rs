//! Test-only: a harness that drives strawman machines of several domains against the
//! in-memory xenstore's tree.

use alloc::collections::VecDeque;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::time::Duration;

use pore_core::{GrantRef, Port};

use crate::handshake::{
    setup_ops, Action, Closed, Connection, HandshakeConfig, HandshakeError, Input, PoreGrant,
    PoreRequest, StrawMachine,
};
use crate::ops::StoreOp;
use crate::Endpoint;

pub(crate) use crate::memtree::{Ownership, Store};

/// How new nodes created by an unprivileged domain are owned.
/// What happened to one straw machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub peer: Endpoint,
    pub connected: Option<Connection>,
    pub done: Option<Result<Closed, HandshakeError>>,
    pub pore_open: bool,
    pub pores_opened: usize,
    pub peer_finished: bool,
}

pub struct Domain {
    pub me: Endpoint,
    pub cfg: HandshakeConfig,
    pub machines: Vec<(StrawMachine, Outcome)>,
    /// Listen for knocks (the manager's watch on the straw top).
    pub listening: bool,
    /// Frozen: performs nothing (a hung peer).
    pub frozen: bool,
    /// Overrides for values this domain writes (a hostile peer): path suffix → value.
    pub hostile: Vec<(String, String)>,
    events: VecDeque<String>,
}

pub const TOP_TOKEN: &str = "straw-top";

impl Domain {
    pub fn new(me: Endpoint, cfg: HandshakeConfig) -> Self {
        Domain {
            me,
            cfg,
            machines: Vec::new(),
            listening: true,
            frozen: false,
            hostile: Vec::new(),
            events: VecDeque::new(),
        }
    }

    pub fn outcome(&self, peer: &Endpoint) -> Option<&Outcome> {
        self.machines
            .iter()
            .rev()
            .find(|(m, _)| m.peer() == peer)
            .map(|(_, o)| o)
    }

    pub fn machine(&mut self, peer: &Endpoint) -> Option<&mut StrawMachine> {
        self.machines
            .iter_mut()
            .rev()
            .find(|(m, _)| m.peer() == peer)
            .map(|(m, _)| m)
    }
}

pub struct World {
    pub store: Store,
    pub doms: Vec<Domain>,
    pub now: Duration,
    next_ref: u32,
}

impl World {
    pub fn new(ownership: Ownership) -> Self {
        World {
            store: Store::new(ownership),
            doms: Vec::new(),
            now: Duration::ZERO,
            next_ref: 100,
        }
    }

    /// Adds a domain endpoint with its manager's setup (directories, perms, top watch).
    pub fn add(&mut self, me: Endpoint, cfg: HandshakeConfig) -> usize {
        if !self.store.nodes.contains_key(&me.domain_path()) {
            self.store.add_domain(me.domid.0);
        }
        for op in setup_ops(&me) {
            self.store.perform(me.domid, &op).unwrap();
        }
        let watch = StoreOp::Watch {
            path: me.straw_top(),
            token: TOP_TOKEN.to_string(),
        };
        self.store.perform(me.domid, &watch).unwrap();
        self.doms.push(Domain::new(me, cfg));
        self.doms.len() - 1
    }

    pub fn open(&mut self, d: usize, peer: &Endpoint) {
        let dom = &mut self.doms[d];
        let m = StrawMachine::open(dom.cfg.clone(), dom.me.clone(), peer.clone(), self.now);
        let o = Outcome {
            peer: peer.clone(),
            connected: None,
            done: None,
            pore_open: false,
            pores_opened: 0,
            peer_finished: false,
        };
        dom.machines.push((m, o));
    }

    pub fn close(&mut self, d: usize, peer: &Endpoint) {
        let now = self.now;
        if let Some(m) = self.doms[d].machine(peer) {
            m.handle(Input::Close, now);
        }
    }

    fn route_events(&mut self) {
        for (conn, _path, token) in core::mem::take(&mut self.store.events) {
            for d in &mut self.doms {
                if u64::from(d.me.domid.0) == conn {
                    d.events.push_back(token.clone());
                }
            }
            // Knocks need the path: re-scan the straw tops.
            let _ = &token;
        }
    }

    /// One step of domain `d`; `pick` chooses among its ready machines. Returns whether it did
    /// anything.
    pub fn step(&mut self, d: usize, pick: usize) -> bool {
        self.route_events();
        if self.doms[d].frozen {
            return false;
        }
        let now = self.now;
        // Knocks: the manager re-scans its straw top on a top-watch event.
        if let Some(pos) = self.doms[d].events.iter().position(|t| t == TOP_TOKEN) {
            self.doms[d].events.remove(pos);
            if self.doms[d].listening {
                let me = self.doms[d].me.clone();
                let top = me.straw_top();
                let knocks: Vec<String> = self
                    .store
                    .nodes
                    .keys()
                    .filter(|k| crate::endpoint::parse_knock(&me, k).is_some())
                    .filter(|k| k.starts_with(&top))
                    .cloned()
                    .collect();
                for k in knocks {
                    let peer = crate::endpoint::parse_knock(&me, &k).unwrap();
                    let busy = self.doms[d]
                        .machines
                        .iter()
                        .any(|(m, _)| m.peer() == &peer && !m.is_done());
                    if !busy {
                        let cfg = self.doms[d].cfg.clone();
                        let m = StrawMachine::listen(cfg, me.clone(), peer.clone(), now);
                        let o = Outcome {
                            peer,
                            connected: None,
                            done: None,
                            pore_open: false,
                            pores_opened: 0,
                            peer_finished: false,
                        };
                        self.doms[d].machines.push((m, o));
                    }
                }
            }
            return true;
        }
        // Straw watch events.
        if let Some(token) = self.doms[d].events.pop_front() {
            if let Some((m, _)) = self.doms[d]
                .machines
                .iter_mut()
                .find(|(m, _)| m.token() == token && !m.is_done())
            {
                m.handle(Input::Watch, now);
            }
            return true;
        }
        let n = self.doms[d].machines.len();
        for i in 0..n {
            let idx = (pick + i) % n;
            if self.act(d, idx) {
                return true;
            }
        }
        false
    }

    fn act(&mut self, d: usize, idx: usize) -> bool {
        let now = self.now;
        let domid = self.doms[d].me.domid;
        let Some(action) = self.doms[d].machines[idx].0.poll_action(now) else {
            return false;
        };
        match action {
            Action::Store(mut op) => {
                let hostile = self.doms[d].hostile.clone();
                rewrite(&mut op, &hostile);
                let r = self.store.perform(domid, &op);
                self.doms[d].machines[idx].0.handle(Input::Store(r), now);
            }
            Action::OpenPore(req) => {
                let r = match req {
                    PoreRequest::Active { layout, .. } => {
                        let n = match layout {
                            crate::Layout::Ling => 8,
                            crate::Layout::V2 { .. } => 1,
                        };
                        let refs = (0..n).map(|i| GrantRef(self.next_ref + i)).collect();
                        self.next_ref += 100;
                        Ok(PoreGrant {
                            refs,
                            port: Port(7),
                        })
                    }
                    PoreRequest::Passive { .. } => Ok(PoreGrant {
                        refs: Vec::new(),
                        port: Port(9),
                    }),
                };
                let o = &mut self.doms[d].machines[idx].1;
                o.pore_open = true;
                o.pores_opened += 1;
                self.doms[d].machines[idx]
                    .0
                    .handle(Input::PoreOpened(r), now);
            }
            Action::ClosePore => {
                self.doms[d].machines[idx].1.pore_open = false;
                self.doms[d].machines[idx].0.handle(Input::PoreClosed, now);
            }
            Action::Connected(c) => self.doms[d].machines[idx].1.connected = Some(c),
            Action::PeerFinished => self.doms[d].machines[idx].1.peer_finished = true,
            Action::PeerClosing => {}
            Action::Done(r) => self.doms[d].machines[idx].1.done = Some(r),
        }
        true
    }

    /// Runs until nothing moves; then advances time by `tick` up to `limit` in total.
    pub fn run(&mut self, tick: Duration, limit: Duration) {
        let end = self.now + limit;
        loop {
            let mut moved = true;
            let mut guard = 0;
            while moved {
                moved = false;
                for d in 0..self.doms.len() {
                    while self.step(d, 0) {
                        moved = true;
                        guard += 1;
                        assert!(guard < 100_000, "livelock");
                    }
                }
            }
            if self.now >= end {
                return;
            }
            self.now += tick;
        }
    }
}

fn rewrite(op: &mut StoreOp, hostile: &[(String, String)]) {
    match op {
        StoreOp::Write { path, value } => {
            for (suffix, v) in hostile {
                if path.ends_with(suffix.as_str()) {
                    *value = v.clone();
                }
            }
        }
        StoreOp::Transaction(ops) => {
            for o in ops {
                rewrite(o, hostile);
            }
        }
        _ => {}
    }
}
