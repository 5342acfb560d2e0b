//! The straw manager facing hostile knocks: a victim domain's [`Manager`] runs on pore-core's
//! loopback backend and pore-straw's in-memory xenstore (C xenstored's rules: the creator
//! owns a node, only dom0 changes an owner), while several peer domains write arbitrary
//! values, directories and permissions into its `data/straw` tree and their own `data/warts`
//! trees, map the pages it publishes and keep them mapped, and two of them also open straws
//! honestly through managers of their own. The victim accepts, drops and closes straws.
//!
//! Checked after every move (and while a move waits), a failed check being a panic:
//!
//! * straws held: in the handshake, unclaimed and connected together at most
//!   [`ManagerConfig::max_straws`];
//! * per peer domain: its straws in the handshake at most
//!   [`ManagerConfig::max_knocks_per_domain`], all its straws (handshake, unclaimed,
//!   accepted) at most [`ManagerConfig::max_straws_per_domain`], and the same count as
//!   [`Accounting::by_domain`];
//! * per peer domain, the pages it left mapped ([`Accounting::parked_pages`]) at most
//!   [`ManagerConfig::max_parked_pages_per_domain`] plus the pages of the straws it may hold
//!   when it reaches that bound;
//! * no straw for a domain that never wrote under its own name in our straw top (a knock
//!   forged by another domain is refused);
//! * at the end, our straw top exists with the permissions it was made with (whoever removed
//!   it), within a check of the top;
//! * at the end, once every manager is shut down and the peers unmapped, nothing is left:
//!   no grant, mapping or port of the loopback world (waited for, bounded).
//!
//! Threads and real time are involved (the manager runs each straw on its own thread), so a
//! run is not exactly repeatable; the checks hold at every instant, so a finding is real.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pore_core::loopback::{Loopback, LoopbackDomain, LoopbackMapping};
use pore_core::{DomId, GrantRef, Maps};
use pore_straw::handshake::{Action, HandshakeConfig, LING_PAGES};
use pore_straw::manager::{Manager, ManagerConfig};
use pore_straw::memstore::{MemoryStore, MemoryStoreClient};
use pore_straw::ops::{Access, Perm, StoreOp, StoreReply};
use pore_straw::straw::{Straw, StrawConfig};
use pore_straw::Endpoint;

/// The victim's domain.
const VICTIM: DomId = DomId(1);
/// Peer domains: 2..2+PEERS; the first `HONEST` of them also run a manager.
const PEERS: u8 = 4;
const HONEST: u8 = 2;
/// The most moves played from one input, and the most time all `Wait`s may take.
const MAX_MOVES: usize = 64;
const MAX_WAIT: Duration = Duration::from_millis(150);

/// Which peer domain acts.
#[derive(Debug, Clone, Copy)]
pub struct Peer(u8);

impl Peer {
    fn domid(self) -> DomId {
        DomId(2 + u16::from(self.0 % PEERS))
    }
}

/// An endpoint name of a peer (the victim's endpoint is the seed's, no name).
#[derive(Debug, Clone, Copy)]
pub struct NameSel(u8);

impl NameSel {
    fn endpoint(self, d: DomId) -> Endpoint {
        match self.0 % 3 {
            0 => Endpoint::seed(d),
            1 => Endpoint::new(d, "a").expect("valid name"),
            _ => Endpoint::new(d, "b").expect("valid name"),
        }
    }
}

/// A directory of the handshake.
#[derive(Debug, Clone, Copy)]
pub enum Dir {
    /// In the victim's straw top, under the ident of `of` (which may be another domain than
    /// the one acting: a forgery) with `name`.
    Straw { of: Peer, name: NameSel },
    /// The acting peer's warts directory for the victim (the opener's side).
    Warts { name: NameSel },
    /// A child of the victim's straw top that is no peer's ident.
    Junk { name: JunkName },
    /// The victim's straw top itself.
    Top,
}

/// Names of junk children: plausible, odd and long ones.
#[derive(Debug, Clone, Copy)]
pub struct JunkName(u8);

impl JunkName {
    fn name(self) -> String {
        match self.0 % 8 {
            0 => "junk".into(),
            1 => "1".into(), // the victim's own ident
            2 => "2-".into(),
            3 => "_pore-probe".into(),
            4 => "99999".into(),
            5 => "3-a-b".into(),
            6 => "x".repeat(usize::from(self.0)),
            _ => std::format!("0-{}", self.0),
        }
    }
}

/// Keys of a straw directory (the handshake's, and others).
#[derive(Debug, Clone, Copy)]
pub struct Key(u8);

const KEYS: [&str; 22] = [
    "warts",
    "state",
    "straw",
    "format",
    "straw-layouts",
    "ring-ref-1",
    "ring-ref-2",
    "ring-ref-8",
    "event-channel",
    "straw-layout",
    "ring-pages",
    "ring-ref",
    "straw-eof",
    "ring-ref-3",
    "ring-ref-4",
    "ring-ref-5",
    "ring-ref-6",
    "ring-ref-7",
    "state/deeper",
    "x",
    "warts/x",
    "",
];

impl Key {
    fn name(self) -> &'static str {
        KEYS[usize::from(self.0) % KEYS.len()]
    }
}

/// A value to write: plausible ones first, then anything.
#[derive(Debug, Clone)]
pub enum Value {
    /// One of a few plausible values (states, layouts, formats, paths).
    Known(u8),
    /// Anything.
    Raw(String),
}

/// A permission entry to set: access and whom (a peer, or the victim).
#[derive(Debug, Clone, Copy)]
pub struct PermSel {
    /// None, read, write, both (modulo 4).
    pub access: u8,
    /// The victim (0) or a peer (modulo the peers + 1).
    pub who: u8,
}

/// One step.
#[derive(Debug, Clone)]
pub enum Move {
    /// A peer knocks by hand, as an opener does (its directory in our top, its warts
    /// directory and the knock), under the ident of `dir`'s domain: a forgery if that is not
    /// its own.
    Knock {
        /// Who writes.
        peer: Peer,
        /// Under which ident.
        of: Peer,
        /// Which of its names.
        name: NameSel,
    },
    /// A peer opens a straw to the victim with its own manager (honest peers only; in the
    /// background).
    Open {
        /// Who opens.
        peer: Peer,
    },
    /// A peer writes one key.
    Write {
        /// Who writes.
        peer: Peer,
        /// Where.
        dir: Dir,
        /// Which key.
        key: Key,
        /// What.
        value: Value,
    },
    /// A peer makes a directory (or the key `key` in it).
    Mkdir {
        /// Who.
        peer: Peer,
        /// Where.
        dir: Dir,
        /// The key below, if any.
        key: Option<Key>,
    },
    /// A peer removes a directory (or a key in it).
    Rm {
        /// Who.
        peer: Peer,
        /// Where.
        dir: Dir,
        /// The key below, if any.
        key: Option<Key>,
    },
    /// A peer sets the permissions of a directory it owns (or of a key in it).
    SetPerms {
        /// Who.
        peer: Peer,
        /// Where.
        dir: Dir,
        /// The key below, if any.
        key: Option<Key>,
        /// The entries (the owner first; none at all too).
        perms: Vec<PermSel>,
    },
    /// A peer maps the pages the victim published for it (and keeps them mapped).
    Map {
        /// Who.
        peer: Peer,
        /// Under which of its names.
        name: NameSel,
    },
    /// A peer unmaps everything it mapped.
    Unmap {
        /// Who.
        peer: Peer,
    },
    /// The victim takes a connected straw, if one waits.
    Accept,
    /// A straw held (by the victim or an honest peer) is dropped (closed).
    Drop {
        /// Which.
        index: u8,
    },
    /// The victim closes its straws with a peer's endpoint.
    Close {
        /// Whose.
        peer: Peer,
        /// Which name.
        name: NameSel,
    },
    /// The victim forgets the pages a peer left mapped.
    Forget {
        /// Whose.
        peer: Peer,
    },
    /// Time passes (a few milliseconds): handshakes and checks of the top run.
    Wait {
        /// Milliseconds, modulo 32.
        ms: u8,
    },
}

fn config() -> ManagerConfig {
    ManagerConfig {
        handshake: HandshakeConfig {
            // pore-core's loopback maps whole grants only: the LING layout.
            v2_pages: None,
            handshake_timeout: Duration::from_millis(80),
            close_timeout: Duration::from_millis(20),
            ..HandshakeConfig::default()
        },
        straw: StrawConfig {
            close_timeout: Duration::from_millis(20),
            io_timeout: Duration::from_millis(200),
            ..StrawConfig::default()
        },
        max_straws: 6,
        max_knocks_per_domain: 2,
        max_straws_per_domain: 3,
        max_parked_pages_per_domain: 2 * LING_PAGES,
        top_check_interval: Duration::from_millis(10),
    }
}

type Mgr = Manager<LoopbackDomain, MemoryStoreClient>;

struct World {
    xen: Loopback,
    store: MemoryStore,
    cfg: ManagerConfig,
    victim: Mgr,
    me: Endpoint,
    honest: Vec<Option<Arc<Mgr>>>,
    opens: Vec<JoinHandle<()>>,
    straws: Arc<Mutex<Vec<Straw<LoopbackDomain>>>>,
    mappings: Vec<(DomId, LoopbackMapping)>,
    /// Domains that acted under their own ident in our straw top.
    knockers: BTreeSet<DomId>,
    waited: Duration,
}

fn value(v: &Value, w: &World, peer: &Endpoint) -> String {
    match v {
        Value::Raw(s) => s.clone(),
        Value::Known(k) => {
            let sd = std::format!("{}/{}", w.me.straw_top(), peer.ident());
            let wd = std::format!("{}/{}", peer.warts_top(), w.me.ident());
            match k % 16 {
                0..=5 => std::format!("{}", k % 16 + 1),
                6 => wd,
                7 => sd,
                8 => "ling v2".into(),
                9 => "json".into(),
                10 => "raw".into(),
                11 => "v2".into(),
                12 => "1".repeat(3000),
                13 => String::new(),
                14 => "-1".into(),
                _ => "4294967295".into(),
            }
        }
    }
}

impl World {
    fn new() -> Self {
        let xen = Loopback::new();
        let store = MemoryStore::new();
        let cfg = config();
        store.add_domain(VICTIM);
        for p in 0..PEERS {
            store.add_domain(Peer(p).domid());
        }
        let me = Endpoint::seed(VICTIM);
        let victim = Manager::start(
            xen.domain(VICTIM),
            store.client(VICTIM),
            me.clone(),
            cfg.clone(),
        )
        .expect("the victim's manager starts");
        World {
            xen,
            store,
            cfg,
            victim,
            me,
            honest: (0..HONEST).map(|_| None).collect(),
            opens: Vec::new(),
            straws: Arc::new(Mutex::new(Vec::new())),
            mappings: Vec::new(),
            knockers: BTreeSet::new(),
            waited: Duration::ZERO,
        }
    }

    fn path(&self, actor: DomId, dir: Dir, key: Option<Key>) -> String {
        let d = match dir {
            Dir::Straw { of, name } => {
                let ep = name.endpoint(of.domid());
                std::format!("{}/{}", self.me.straw_top(), ep.ident())
            }
            Dir::Warts { name } => {
                std::format!("{}/{}", name.endpoint(actor).warts_top(), self.me.ident())
            }
            Dir::Junk { name } => std::format!("{}/{}", self.me.straw_top(), name.name()),
            Dir::Top => self.me.straw_top(),
        };
        match key {
            Some(k) => std::format!("{d}/{}", k.name()),
            None => d,
        }
    }

    fn note_actor(&mut self, actor: DomId, dir: Dir) {
        if let Dir::Straw { of, .. } = dir {
            if of.domid() == actor {
                self.knockers.insert(actor);
            }
        }
    }

    fn perform(&self, actor: DomId, op: StoreOp) -> Option<StoreReply> {
        self.store.perform_as(actor, &op).ok()
    }

    fn play(&mut self, m: &Move) {
        match m {
            Move::Knock { peer, of, name } => {
                let actor = peer.domid();
                let ep = name.endpoint(of.domid());
                let dir = Dir::Straw {
                    of: *of,
                    name: *name,
                };
                self.note_actor(actor, dir);
                let sd = std::format!("{}/{}", self.me.straw_top(), ep.ident());
                let wd = std::format!("{}/{}", ep.warts_top(), self.me.ident());
                let write = |path: String, value: String| StoreOp::Write { path, value };
                let ops = std::vec![
                    StoreOp::Mkdir { path: sd.clone() },
                    StoreOp::SetPerms {
                        path: sd.clone(),
                        perms: std::vec![
                            Perm::new(Access::None, actor),
                            Perm::new(Access::Both, VICTIM)
                        ],
                        best_effort: true,
                    },
                    StoreOp::Mkdir { path: wd.clone() },
                    StoreOp::SetPerms {
                        path: wd.clone(),
                        perms: std::vec![
                            Perm::new(Access::None, actor),
                            Perm::new(Access::Read, VICTIM)
                        ],
                        best_effort: true,
                    },
                    write(std::format!("{wd}/straw"), sd.clone()),
                    write(std::format!("{wd}/state"), "2".into()),
                    write(std::format!("{wd}/format"), "json".into()),
                    write(std::format!("{wd}/straw-layouts"), "ling v2".into()),
                    write(std::format!("{sd}/warts"), wd),
                ];
                for op in ops {
                    self.perform(actor, op);
                }
            }
            Move::Open { peer } => {
                let i = usize::from(peer.0 % HONEST);
                let d = Peer(i as u8).domid();
                self.knockers.insert(d);
                if self.honest[i].is_none() {
                    let m = Manager::start(
                        self.xen.domain(d),
                        self.store.client(d),
                        Endpoint::seed(d),
                        self.cfg.clone(),
                    )
                    .expect("an honest peer's manager starts");
                    self.honest[i] = Some(Arc::new(m));
                }
                if self.opens.len() < 8 {
                    let m = self.honest[i].clone().expect("started above");
                    let (to, straws) = (self.me.clone(), self.straws.clone());
                    self.opens.push(std::thread::spawn(move || {
                        if let Ok(s) = m.open(&to) {
                            straws.lock().expect("not poisoned").push(s);
                        }
                    }));
                }
            }
            Move::Write {
                peer,
                dir,
                key,
                value: v,
            } => {
                let actor = peer.domid();
                self.note_actor(actor, *dir);
                let ep = Endpoint::seed(actor);
                let value = value(v, self, &ep);
                let path = self.path(actor, *dir, Some(*key));
                self.perform(actor, StoreOp::Write { path, value });
            }
            Move::Mkdir { peer, dir, key } => {
                let actor = peer.domid();
                self.note_actor(actor, *dir);
                let path = self.path(actor, *dir, *key);
                self.perform(actor, StoreOp::Mkdir { path });
            }
            Move::Rm { peer, dir, key } => {
                let actor = peer.domid();
                let path = self.path(actor, *dir, *key);
                self.perform(actor, StoreOp::Rm { path });
            }
            Move::SetPerms {
                peer,
                dir,
                key,
                perms,
            } => {
                let actor = peer.domid();
                let path = self.path(actor, *dir, *key);
                let perms = perms
                    .iter()
                    .take(4)
                    .map(|p| {
                        let access = match p.access % 4 {
                            0 => Access::None,
                            1 => Access::Read,
                            2 => Access::Write,
                            _ => Access::Both,
                        };
                        let who = match p.who % (PEERS + 1) {
                            0 => VICTIM,
                            w => Peer(w - 1).domid(),
                        };
                        Perm::new(access, who)
                    })
                    .collect();
                self.perform(
                    actor,
                    StoreOp::SetPerms {
                        path,
                        perms,
                        best_effort: false,
                    },
                );
            }
            Move::Map { peer, name } => {
                let actor = peer.domid();
                let ep = name.endpoint(actor);
                let sd = std::format!("{}/{}", self.me.straw_top(), ep.ident());
                let refs: Option<Vec<GrantRef>> = (1..=LING_PAGES)
                    .map(|i| {
                        let path = std::format!("{sd}/ring-ref-{i}");
                        match self.perform(actor, StoreOp::Read { path }) {
                            Some(StoreReply::Value(v)) => std::str::from_utf8(&v)
                                .ok()
                                .and_then(|s| s.parse().ok())
                                .map(GrantRef),
                            _ => None,
                        }
                    })
                    .collect();
                if let Some(refs) = refs {
                    if let Ok(m) = self.xen.domain(actor).map(VICTIM, &refs) {
                        self.mappings.push((actor, m));
                    }
                }
            }
            Move::Unmap { peer } => {
                let d = peer.domid();
                self.mappings.retain(|(m, _)| *m != d);
            }
            Move::Accept => {
                if let Ok(s) = self.victim.accept(Duration::ZERO) {
                    self.straws.lock().expect("not poisoned").push(s);
                }
            }
            Move::Drop { index } => {
                let mut straws = self.straws.lock().expect("not poisoned");
                if !straws.is_empty() {
                    let i = usize::from(*index) % straws.len();
                    drop(straws.remove(i));
                }
            }
            Move::Close { peer, name } => {
                let _ = self.victim.close(&name.endpoint(peer.domid()));
            }
            Move::Forget { peer } => self.victim.forget_parked(peer.domid()),
            Move::Wait { ms } => {
                let want = Duration::from_millis(u64::from(ms % 32));
                let d = want.min(MAX_WAIT.saturating_sub(self.waited));
                self.waited += d;
                let end = Instant::now() + d;
                while Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(1));
                    self.check();
                }
            }
        }
    }

    /// The manager's bounds (see the module docs).
    fn check(&self) {
        let cfg = &self.cfg;
        let a = self.victim.accounting();
        let held = a.handshaking + a.unclaimed + a.connected;
        assert!(held <= cfg.max_straws, "{held} straws held: {a:?}");
        for (d, n) in &a.by_domain {
            assert!(
                *n <= cfg.max_straws_per_domain,
                "domain {} holds {n} straws: {a:?}",
                d.0
            );
            assert!(
                self.knockers.contains(d),
                "a straw for domain {}, which never knocked: {a:?}",
                d.0
            );
        }
        for (d, p) in &a.parked_pages {
            let most = cfg.max_parked_pages_per_domain + cfg.max_straws_per_domain * LING_PAGES;
            assert!(*p <= most, "domain {} parks {p} pages: {a:?}", d.0);
        }
        for (d, (hs, live)) in self.victim.fuzz_knocks_by_domain() {
            assert!(
                hs <= cfg.max_knocks_per_domain,
                "domain {} has {hs} handshakes at once: {a:?}",
                d.0
            );
            assert!(
                hs + live <= cfg.max_straws_per_domain,
                "domain {} holds {hs} + {live} straws: {a:?}",
                d.0
            );
        }
    }

    /// Everything closed, shut down and unmapped; then the loopback world must empty.
    fn finish(self) {
        // The honest peers give up their opens first; the bounds still hold then.
        for m in self.honest.iter().flatten() {
            let _ = m.close(&self.me);
        }
        self.check();
        // Whatever the peers did to it, our straw top is there again (as made at the start)
        // within a check of the top (waited for generously: the machine may be loaded).
        let top = self.me.straw_top();
        let want = std::vec![Perm::new(Access::Both, VICTIM)];
        let end = Instant::now() + Duration::from_secs(10);
        while self.store.perms(&top).as_ref() != Some(&want) {
            assert!(
                Instant::now() < end,
                "our straw top is not back: {:?}",
                self.store.perms(&top)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let World {
            xen,
            victim,
            honest,
            opens,
            straws,
            mappings,
            ..
        } = self;
        for t in opens {
            t.join().expect("an open's thread ends");
        }
        drop(std::mem::take(&mut *straws.lock().expect("not poisoned")));
        for m in honest.into_iter().flatten() {
            if let Ok(m) = Arc::try_unwrap(m) {
                m.shutdown();
            }
        }
        victim.shutdown();
        drop(mappings);
        // Straw threads end by themselves within their close timeouts; bounded generously
        // (the machine may be loaded).
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let o = xen.outstanding();
            if o.grants == 0 && o.mappings == 0 && o.ports == 0 {
                break;
            }
            assert!(Instant::now() < end, "left behind after shutdown: {o:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Decodes an input: moves of 6 bytes `[kind, peer, dir, dir argument, key, value]` (the
/// bytes a move does not use are ignored); a `Write` whose value byte is 200 or more takes
/// that minus 200 bytes after it as its raw value, a `SetPerms` takes `value % 5` entries of
/// two bytes (access, whom) after it.
pub fn decode(data: &[u8]) -> Vec<Move> {
    let mut moves = Vec::new();
    let mut rest = data;
    while rest.len() >= 6 && moves.len() < MAX_MOVES {
        let (m, tail) = rest.split_at(6);
        rest = tail;
        let peer = Peer(m[1]);
        let dir = match m[2] % 4 {
            0 => Dir::Straw {
                of: Peer(m[3]),
                name: NameSel(m[3] / 4),
            },
            1 => Dir::Warts {
                name: NameSel(m[3]),
            },
            2 => Dir::Junk {
                name: JunkName(m[3]),
            },
            _ => Dir::Top,
        };
        let key = (m[4] & 0x80 == 0).then_some(Key(m[4]));
        let mut take = |n: usize| {
            let (a, b) = rest.split_at(n.min(rest.len()));
            rest = b;
            a
        };
        moves.push(match m[0] % 13 {
            0 => Move::Knock {
                peer,
                of: Peer(m[3]),
                name: NameSel(m[3] / 4),
            },
            1 => Move::Open { peer },
            2 => Move::Write {
                peer,
                dir,
                key: Key(m[4]),
                value: if m[5] >= 200 {
                    Value::Raw(String::from_utf8_lossy(take(usize::from(m[5] - 200))).into_owned())
                } else {
                    Value::Known(m[5])
                },
            },
            3 => Move::Mkdir { peer, dir, key },
            4 => Move::Rm { peer, dir, key },
            5 => Move::SetPerms {
                peer,
                dir,
                key,
                perms: take(usize::from(m[5] % 5) * 2)
                    .chunks_exact(2)
                    .map(|p| PermSel {
                        access: p[0],
                        who: p[1],
                    })
                    .collect(),
            },
            6 => Move::Map {
                peer,
                name: NameSel(m[3]),
            },
            7 => Move::Unmap { peer },
            8 => Move::Accept,
            9 => Move::Drop { index: m[1] },
            10 => Move::Close {
                peer,
                name: NameSel(m[3]),
            },
            11 => Move::Forget { peer },
            _ => Move::Wait { ms: m[1] },
        });
    }
    moves
}

/// Plays an input's moves ([`decode`]), checking the bounds after each, then shuts
/// everything down and checks that nothing is left.
///
/// With `PORE_FUZZ_VERBOSE` set, prints each move and the victim's accounting after it.
pub fn run(data: &[u8]) {
    let verbose = std::env::var_os("PORE_FUZZ_VERBOSE").is_some();
    let mut w = World::new();
    if verbose {
        w.victim
            .observe(Some(Arc::new(|peer: &Endpoint, a: &Action| {
                eprintln!("  victim, straw with {peer}: {a:?}");
            })));
    }
    for m in decode(data) {
        w.play(&m);
        w.check();
        if verbose {
            eprintln!("{m:?}\n    {:?}", w.victim.accounting());
        }
    }
    w.finish();
}
