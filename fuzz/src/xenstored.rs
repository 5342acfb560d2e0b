//! The xenstored facing hostile guests: a structured sequence of moves from several
//! connections (dom0 sockets, introduced guests, stub domains with targets, a privileged
//! guest) driven through the sans-IO [`Store`], with the store's whole state recounted
//! after every step.
//!
//! Checked after every step (a failed check is a panic, i.e. a fuzz finding):
//! * every request to a live connection gets exactly one well-formed reply (its type or
//!   `ERROR` with a known name, ids echoed, payload within 4096 bytes and decodable);
//!   requests to closed connections get nothing; watch events are well-formed, go to live
//!   connections only and carry a token the connection registered;
//! * the tree is consistent (parents list children exactly once, children exist) and the
//!   per-domain node counts equal a recount of the tree's owners;
//! * an unprivileged domain's own moves keep it within its quotas: nodes owned (one
//!   fewer after a commit, as C), node record size, watches, transactions, nodes a
//!   transaction touches, bytes its transactions are charged for, and what they really
//!   hold is not more than twice what they are charged for;
//! * a failed request, a request inside a transaction and a read-only request leave the
//!   tree as it was; a successful WRITE/MKDIR/RM outside a transaction did what it said;
//! * a released domain leaves no connection, watch, transaction, owned node or target
//!   relation; a closed connection no watch or transaction; RESET_WATCHES leaves none.
//!
//! With `diff` (the `xenstored_diff` target) a small model decides from first principles
//! — C's `perm_for_conn` over the permissions as listed, entries naming a domain released
//! since they were set ignored, the stub domain's target tracked by the model — what every
//! request outside a transaction must get (success, `ENOENT` or `EACCES`, `EPERM`,
//! `ENOSPC` only for an unprivileged caller), whether each watch event may be seen by the
//! domain it goes to, and which permission entries must be in force; any other answer is
//! a finding.

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Arbitrary;
use pore_core::{DomId, Port};
use pore_xenstore::codec::{decode_error, Reply};
use pore_xenstore::error::ErrorName;
use pore_xenstore::perms::{Access, Perm};
use pore_xenstore::server::fuzzing::Snapshot;
use pore_xenstore::server::{Config, ConnId, DomainHooks, OutKind, Outgoing, Quotas, Store};
use pore_xenstore::wire::{MsgType, WireHeader, HEADER_LEN, PAYLOAD_MAX};

/// Quotas low enough to be reached.
#[derive(Arbitrary, Debug)]
#[allow(missing_docs)]
pub struct Limits {
    pub nodes: u8,
    pub entry: u16,
    pub watches: u8,
    pub txs: u8,
    pub path_max: u16,
    pub perms: u8,
    pub tx_nodes: u8,
    pub mem: u16,
}

impl Limits {
    fn quotas(&self) -> Quotas {
        Quotas {
            nodes_per_domain: 2 + usize::from(self.nodes % 30),
            entry_size: 48 + usize::from(self.entry % 1200),
            watches_per_domain: usize::from(self.watches % 6),
            transactions: usize::from(self.txs % 4),
            path_max: 4 + usize::from(self.path_max % 300),
            perms_per_node: 1 + usize::from(self.perms % 6),
            transaction_nodes: 1 + usize::from(self.tx_nodes % 40),
            memory_per_domain: 256 + usize::from(self.mem % 16384),
        }
    }
}

/// The whole input.
#[derive(Arbitrary, Debug)]
pub struct Scenario {
    pub limits: Limits,
    /// A guest that is privileged too (C's `--priv-domid`).
    pub priv_dom: Option<Dom>,
    pub moves: Vec<Move>,
}

/// A domain id: mostly a few small ones so that they meet.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Dom(pub u8);

impl Dom {
    fn id(self) -> u32 {
        match self.0 % 16 {
            v @ 0..=5 => u32::from(v),
            6..=11 => u32::from(self.0 % 4) + 1,
            12 => 0x7ff0,
            13 => 65535,
            14 => u32::MAX,
            _ => 32768 + u32::from(self.0),
        }
    }
}

/// One move.
#[derive(Arbitrary, Debug)]
pub enum Move {
    /// A well-formed request from one connection.
    Req { actor: u8, tx: u8, req: Req },
    /// Any type, transaction id and payload.
    Garbage {
        actor: u8,
        ty: u8,
        tx_id: u32,
        payload: Vec<u8>,
    },
    /// Raw bytes through the frame parser, as the I/O layer reads them.
    Frame { actor: u8, bytes: Vec<u8> },
    /// The toolstack introduces a domain (home, name, domid, data; `@introduceDomain`).
    Toolstack { dom: Dom, fail: bool },
    /// A domain dies.
    Die { dom: Dom },
    /// A new dom0 socket connection.
    Connect,
    /// A connection closes.
    Disconnect { actor: u8 },
}

/// Up to four path components (fixed size: a mutation does not shift what follows).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Comps(pub u8, pub [u8; 4]);

impl Comps {
    fn names(&self) -> &[u8] {
        &self.1[..usize::from(self.0 % 5)]
    }
}

/// A path.
#[derive(Arbitrary, Debug)]
#[allow(missing_docs)]
pub enum PathSel {
    /// `/` and components.
    Abs(Comps),
    /// Below a domain's home.
    Home(Dom, Comps),
    /// Relative to the caller's home.
    Rel(Comps),
    /// A special `@` path.
    Special(u8),
    /// Below a domain's home, components then one repeated (path and size limits).
    Long(Dom, Comps, u8, u16),
    /// Any bytes.
    Raw(Vec<u8>),
}

const NAMES: &[&str] = &[
    "a",
    "b",
    "c",
    "data",
    "local",
    "domain",
    "1",
    "2",
    "3",
    "tool",
    "xenstored",
    "device",
    "0",
    "x-y_z",
    "",
    "@",
    "bad.char",
    "backend",
    "name",
    "domid",
];

const SPECIAL: &[&str] = &[
    "@introduceDomain",
    "@releaseDomain",
    "@other",
    "@",
    "@introduceDomain/x",
];

fn comps(v: &[u8]) -> String {
    v.iter()
        .take(8)
        .map(|&i| NAMES[usize::from(i) % NAMES.len()])
        .collect::<Vec<_>>()
        .join("/")
}

impl PathSel {
    fn bytes(&self) -> Vec<u8> {
        match self {
            PathSel::Abs(c) => format!("/{}", comps(c.names())).into_bytes(),
            PathSel::Home(d, c) if c.names().is_empty() => {
                format!("/local/domain/{}", d.id()).into_bytes()
            }
            PathSel::Home(d, c) => {
                format!("/local/domain/{}/{}", d.id(), comps(c.names())).into_bytes()
            }
            PathSel::Rel(c) => comps(c.names()).into_bytes(),
            PathSel::Special(i) => SPECIAL[usize::from(*i) % SPECIAL.len()].as_bytes().to_vec(),
            PathSel::Long(d, pre, c, n) => {
                let name = NAMES[usize::from(*c) % NAMES.len()];
                let name = if name.is_empty() { "q" } else { name };
                let n = usize::from(*n % 700) + 1;
                let long = vec![name; n].join(if c & 0x80 != 0 { "/" } else { "" });
                let mut pre = comps(pre.names());
                if !pre.is_empty() {
                    pre.push('/');
                }
                format!("/local/domain/{}/{pre}{long}", d.id()).into_bytes()
            }
            PathSel::Raw(b) => b.clone(),
        }
    }
}

/// A value.
#[derive(Arbitrary, Debug)]
#[allow(missing_docs)]
pub enum Val {
    Small(u8, [u8; 3]),
    Big(u16, u8),
    Raw(Vec<u8>),
}

impl Val {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Val::Small(n, v) => v[..usize::from(n % 4)].to_vec(),
            Val::Raw(v) => v.clone(),
            Val::Big(n, b) => vec![*b; usize::from(*n) % 4200],
        }
    }
}

/// A watch token.
#[derive(Arbitrary, Debug)]
pub enum Tok {
    Small(u8),
    Big(u16),
    Raw(Vec<u8>),
}

impl Tok {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Tok::Small(n) => format!("t{}", n % 4).into_bytes(),
            Tok::Big(n) => vec![b'k'; usize::from(*n) % 4100],
            Tok::Raw(v) => v.iter().copied().filter(|&b| b != 0).collect(),
        }
    }
}

/// A permission entry as sent.
#[derive(Arbitrary, Debug)]
#[allow(missing_docs)]
pub enum PermSel {
    Entry(u8, Dom),
    Bad(u8),
}

const BAD_PERMS: &[&str] = &[
    "",
    "x1",
    "r",
    "r-1",
    "r0x10",
    "b99999999999",
    "n 1",
    "w010",
    "b-4294967295",
];

impl PermSel {
    fn bytes(&self) -> Vec<u8> {
        match self {
            PermSel::Entry(l, d) => {
                format!("{}{}", ['n', 'r', 'w', 'b'][usize::from(l % 4)], d.id()).into_bytes()
            }
            PermSel::Bad(i) => BAD_PERMS[usize::from(*i) % BAD_PERMS.len()]
                .as_bytes()
                .to_vec(),
        }
    }
    fn parsed(&self) -> Option<Perm> {
        match self {
            PermSel::Entry(l, d) => {
                let a =
                    [Access::None, Access::Read, Access::Write, Access::Both][usize::from(l % 4)];
                Some(Perm::new(a, d.id()))
            }
            PermSel::Bad(_) => None,
        }
    }
}

/// A request of each type.
#[derive(Arbitrary, Debug)]
#[allow(missing_docs)]
pub enum Req {
    Read(PathSel),
    Directory(PathSel),
    DirectoryPart(PathSel, u16),
    GetPerms(PathSel),
    Write(PathSel, Val),
    Mkdir(PathSel),
    Rm(PathSel),
    /// The first `.2 % 6` entries.
    SetPerms(PathSel, [PermSel; 5], u8),
    Watch(PathSel, Tok),
    Unwatch(PathSel, Tok),
    TxStart,
    TxEnd(bool),
    Introduce(Dom, u8, i8),
    Release(Dom),
    Resume(Dom),
    GetDomainPath(Dom),
    IsIntroduced(Dom),
    SetTarget(Dom, Dom),
    ResetWatches,
    Control(bool),
}

fn strs(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p);
        v.push(0);
    }
    v
}

impl Req {
    fn encode(&self) -> (MsgType, Vec<u8>) {
        use MsgType as T;
        let dec = |d: &Dom| d.id().to_string().into_bytes();
        match self {
            Req::Read(p) => (T::Read, strs(&[&p.bytes()])),
            Req::Directory(p) => (T::Directory, strs(&[&p.bytes()])),
            Req::DirectoryPart(p, off) => (
                T::DirectoryPart,
                strs(&[&p.bytes(), off.to_string().as_bytes()]),
            ),
            Req::GetPerms(p) => (T::GetPerms, strs(&[&p.bytes()])),
            Req::Write(p, v) => {
                let mut b = strs(&[&p.bytes()]);
                b.extend_from_slice(&v.bytes());
                (T::Write, b)
            }
            Req::Mkdir(p) => (T::Mkdir, strs(&[&p.bytes()])),
            Req::Rm(p) => (T::Rm, strs(&[&p.bytes()])),
            Req::SetPerms(p, perms, n) => {
                let mut parts = vec![p.bytes()];
                parts.extend(perms[..usize::from(n % 6)].iter().map(PermSel::bytes));
                let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
                (T::SetPerms, strs(&refs))
            }
            Req::Watch(p, t) => (T::Watch, strs(&[&p.bytes(), &t.bytes()])),
            Req::Unwatch(p, t) => (T::Unwatch, strs(&[&p.bytes(), &t.bytes()])),
            Req::TxStart => (T::TransactionStart, strs(&[b""])),
            Req::TxEnd(c) => (T::TransactionEnd, strs(&[if *c { b"T" } else { b"F" }])),
            Req::Introduce(d, gfn, port) => (
                T::Introduce,
                strs(&[
                    &dec(d),
                    gfn.to_string().as_bytes(),
                    port.to_string().as_bytes(),
                ]),
            ),
            Req::Release(d) => (T::Release, strs(&[&dec(d)])),
            Req::Resume(d) => (T::Resume, strs(&[&dec(d)])),
            Req::GetDomainPath(d) => (T::GetDomainPath, strs(&[&dec(d)])),
            Req::IsIntroduced(d) => (T::IsDomainIntroduced, strs(&[&dec(d)])),
            Req::SetTarget(a, b) => (T::SetTarget, strs(&[&dec(a), &dec(b)])),
            Req::ResetWatches => (T::ResetWatches, Vec::new()),
            Req::Control(help) => (
                T::Control,
                strs(&[if *help { b"help" as &[u8] } else { b"print" }]),
            ),
        }
    }

    /// The path of a node request, as sent.
    fn path(&self) -> Option<&PathSel> {
        match self {
            Req::Read(p)
            | Req::Directory(p)
            | Req::DirectoryPart(p, _)
            | Req::GetPerms(p)
            | Req::Write(p, _)
            | Req::Mkdir(p)
            | Req::Rm(p)
            | Req::SetPerms(p, _, _) => Some(p),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Hooks {
    fail: bool,
    released: Vec<(ConnId, u32)>,
}

impl DomainHooks for Hooks {
    fn introduce(&mut self, _: ConnId, _: DomId, _: u64, _: Port) -> Result<(), ErrorName> {
        if self.fail {
            Err(ErrorName::EINVAL)
        } else {
            Ok(())
        }
    }
    fn release(&mut self, conn: ConnId, domid: DomId) {
        self.released.push((conn, u32::from(domid.0)));
    }
}

const R: u8 = 1;
const W: u8 = 2;
const O: u8 = 4;

fn bits(a: Access) -> u8 {
    match a {
        Access::None => 0,
        Access::Read => R,
        Access::Write => W,
        Access::Both => R | W,
    }
}

/// The rights of a connection as the model sees them.
#[derive(Clone, Copy, Debug)]
struct Who {
    domid: u32,
    privileged: bool,
    target: Option<u32>,
}

impl Who {
    /// C's `perm_for_conn`, entries naming a domain in `ign` skipped.
    fn rights(&self, listed: &[Perm], ign: &BTreeSet<u32>) -> u8 {
        if self.privileged {
            return R | W | O;
        }
        let Some(owner) = listed.first() else {
            return 0;
        };
        let mine = |d: u32| d == self.domid || self.target == Some(d);
        if mine(owner.domid) {
            return R | W | O;
        }
        for p in &listed[1..] {
            if !ign.contains(&p.domid) && mine(p.domid) {
                return bits(p.access);
            }
        }
        bits(owner.access)
    }
}

/// What the model knows of a node's permissions.
#[derive(Clone, Debug, Default)]
struct PermState {
    /// Domains whose entries are ignored (released since they were set).
    ign: BTreeSet<u32>,
    /// Set by a transaction's commit: which entries are ignored is not known exactly.
    fuzzy: bool,
}

/// The first-principles model of the differential mode.
#[derive(Clone, Default)]
struct Model {
    nodes: BTreeMap<String, PermState>,
    targets: BTreeMap<u32, u32>,
    released_ever: BTreeSet<u32>,
}

/// What a request on a node must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// The node exists and the rights are there.
    Allowed,
    /// Missing, and the nearest ancestor grants (ENOENT or creation).
    Missing,
    /// EACCES.
    Denied,
}

impl Model {
    /// Every set of ignored entries the node may have.
    fn candidates(&self, p: &str, listed: &[Perm]) -> Vec<BTreeSet<u32>> {
        let st = self.nodes.get(p).cloned().unwrap_or_default();
        if !st.fuzzy {
            return vec![st.ign];
        }
        let doubt: Vec<u32> = listed[1..]
            .iter()
            .map(|p| p.domid)
            .filter(|d| self.released_ever.contains(d))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let doubt = &doubt[..doubt.len().min(5)];
        (0..1u32 << doubt.len())
            .map(|mask| {
                doubt
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, d)| *d)
                    .collect()
            })
            .collect()
    }

    /// Every right set `who` may have on node `p` of `snap`.
    fn rights(&self, snap: &Snapshot, who: Who, p: &str) -> BTreeSet<u8> {
        let Some(n) = snap.nodes.get(p) else {
            return BTreeSet::new();
        };
        self.candidates(p, &n.listed)
            .iter()
            .map(|ign| who.rights(&n.listed, ign))
            .collect()
    }

    /// C's `get_node` + `errno_from_parents` for `need` rights (all needed on the node,
    /// any on the nearest existing ancestor).
    fn decide(&self, snap: &Snapshot, who: Who, p: &str, need: u8) -> BTreeSet<Outcome> {
        if snap.nodes.contains_key(p) {
            return self
                .rights(snap, who, p)
                .into_iter()
                .map(|r| {
                    if r & need == need {
                        Outcome::Allowed
                    } else {
                        Outcome::Denied
                    }
                })
                .collect();
        }
        let mut cur = p;
        loop {
            cur = match cur.rfind('/') {
                Some(0) | None => "/",
                Some(i) => &cur[..i],
            };
            if snap.nodes.contains_key(cur) {
                return self
                    .rights(snap, who, cur)
                    .into_iter()
                    .map(|r| {
                        if r & need != 0 {
                            Outcome::Missing
                        } else {
                            Outcome::Denied
                        }
                    })
                    .collect();
            }
            if cur == "/" {
                return [Outcome::Missing].into();
            }
        }
    }
}

fn parent(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

fn record_size(n: &pore_xenstore::server::fuzzing::NodeInfo) -> usize {
    24 + 8 * n.listed.len() + n.value.len() + n.children.iter().map(|c| c.len() + 1).sum::<usize>()
}

/// The reply decoded: the error name, or the payload.
type Answer = Result<Vec<u8>, ErrorName>;

/// The harness.
struct Harness {
    store: Store,
    hooks: Hooks,
    q: Quotas,
    priv_dom: Option<u32>,
    /// Every connection ever opened (closed ones stay: requests to them get nothing).
    conns: Vec<ConnId>,
    snap: Snapshot,
    diff: bool,
    model: Model,
    /// The node path of the current move's request, as sent (if text).
    last_req: Option<String>,
    /// The entries of the current move's SET_PERMS, if all well-formed.
    last_perms: Option<Vec<Perm>>,
    /// The length of the current move's WRITE value (0 for MKDIR).
    last_value: usize,
    /// The stub and target of the current move's SET_TARGET.
    last_target: Option<(u32, u32)>,
}

impl Harness {
    fn note(&mut self, mv: &Move) {
        self.last_req = None;
        self.last_perms = None;
        self.last_value = 0;
        self.last_target = None;
        if let Move::Req { req, .. } = mv {
            if let Some(p) = req.path() {
                self.last_req = String::from_utf8(p.bytes())
                    .ok()
                    .filter(|s| !s.contains('\0'));
            }
            if let Req::SetPerms(_, perms, n) = req {
                self.last_perms = perms[..usize::from(n % 6)]
                    .iter()
                    .map(PermSel::parsed)
                    .collect();
            }
            if let Req::Write(_, v) = req {
                self.last_value = v.bytes().len();
            }
            if let Req::SetTarget(a, b) = req {
                self.last_target = Some((a.id(), b.id()));
            }
        }
    }

    fn who(&self, domid: u32) -> Who {
        Who {
            domid,
            privileged: domid == 0 || self.priv_dom == Some(domid),
            target: self.model.targets.get(&domid).copied(),
        }
    }

    fn actor(&self, a: u8) -> ConnId {
        let i = usize::from(a) % (self.conns.len() + 1);
        self.conns.get(i).copied().unwrap_or(ConnId(u64::MAX))
    }

    fn tx_of(&self, conn: ConnId, t: u8) -> u32 {
        match t {
            0..=127 => 0,
            128..=250 => self
                .snap
                .conns
                .get(&conn)
                .and_then(|c| c.txs.get(usize::from(t - 128) % c.txs.len().max(1)))
                .map_or(1, |t| t.id),
            _ => u32::from(t) * 1000,
        }
    }

    fn learn_conns(&mut self) {
        for c in self.snap.conns.keys() {
            if !self.conns.contains(c) {
                self.conns.push(*c);
            }
        }
    }

    /// Sends one request and checks the outputs; returns the answer (None: the
    /// connection is closed).
    fn request(
        &mut self,
        conn: ConnId,
        ty: u32,
        tx_id: u32,
        payload: &[u8],
    ) -> (Option<Answer>, Vec<Outgoing>) {
        let req_id = ty.wrapping_mul(7919) ^ tx_id;
        let hdr = WireHeader::new(ty, req_id, tx_id, payload.len() as u32);
        let mut out = Vec::new();
        self.store
            .handle_frame(conn, &hdr, payload, &mut self.hooks, &mut out);
        let live = self.snap.conns.contains_key(&conn);
        let mut answer = None;
        for o in &out {
            let h = WireHeader::read(&o.bytes).expect("short message");
            let body = &o.bytes[HEADER_LEN..];
            assert_eq!(h.len.get() as usize, body.len(), "length field");
            assert!(body.len() <= PAYLOAD_MAX, "payload over the limit");
            match o.kind {
                OutKind::Reply => {
                    assert!(live, "reply to a closed connection");
                    assert_eq!(o.conn, conn, "reply to another connection");
                    assert!(answer.is_none(), "two replies");
                    assert_eq!(h.req_id.get(), req_id);
                    assert_eq!(h.tx_id.get(), tx_id);
                    if h.ty.get() == MsgType::Error.as_u32() {
                        let e = decode_error(body).expect("malformed error");
                        assert!(
                            !matches!(e, ErrorName::Other(_) | ErrorName::EQUOTA),
                            "unknown error {e:?}"
                        );
                        answer = Some(Err(e));
                    } else {
                        assert_eq!(h.ty.get(), ty, "reply type");
                        let t = MsgType::from_u32(ty).expect("success for an unknown type");
                        Reply::decode_payload(t, body).expect("malformed reply");
                        answer = Some(Ok(body.to_vec()));
                    }
                }
                OutKind::Event => self.check_event(o, &h),
            }
        }
        assert_eq!(answer.is_some(), live, "no reply");
        (answer, out)
    }

    fn check_event(&self, o: &Outgoing, h: &WireHeader) {
        assert_eq!(h.ty.get(), MsgType::WatchEvent.as_u32());
        assert_eq!((h.req_id.get(), h.tx_id.get()), (0, 0));
        let body = &o.bytes[HEADER_LEN..];
        let parts: Vec<&[u8]> = body.split(|&b| b == 0).collect();
        assert!(
            parts.len() == 3 && parts[2].is_empty(),
            "event payload {body:?}"
        );
        let live = self.store.domid_of(o.conn).is_some();
        assert!(live, "event for a closed connection");
        let registered = |s: &Snapshot| {
            s.watches
                .iter()
                .any(|(c, _, t)| *c == o.conn && t == parts[1])
        };
        assert!(
            registered(&self.snap) || registered(&self.store.fuzz_snapshot()),
            "event with a token the connection did not register"
        );
    }

    fn step(&mut self, mv: &Move) {
        let pre = self.snap.clone();
        let mut kind = Step::Other;
        let mut events = Vec::new();
        match mv {
            Move::Req { actor, tx, req } => {
                let conn = self.actor(*actor);
                let tx = self.tx_of(conn, *tx);
                let (t, payload) = req.encode();
                if payload.len() > PAYLOAD_MAX {
                    return;
                }
                let (ans, out) = self.request(conn, t.as_u32(), tx, &payload);
                events = out;
                if let Some(ans) = ans {
                    kind = Step::Req {
                        conn,
                        tx,
                        ty: t,
                        ans,
                    };
                }
            }
            Move::Garbage {
                actor,
                ty,
                tx_id,
                payload,
            } => {
                let conn = self.actor(*actor);
                let ty = u32::from(*ty % 32);
                let payload = &payload[..payload.len().min(PAYLOAD_MAX)];
                let tx_id = if tx_id % 3 == 0 { 0 } else { *tx_id % 8 };
                let (ans, out) = self.request(conn, ty, tx_id, payload);
                events = out;
                if let (Some(ans), Some(t)) = (ans, MsgType::from_u32(ty)) {
                    kind = Step::Req {
                        conn,
                        tx: tx_id,
                        ty: t,
                        ans,
                    };
                }
            }
            Move::Frame { actor, bytes } => {
                let conn = self.actor(*actor);
                let mut buf = &bytes[..];
                loop {
                    // Several requests in one move: each is checked against the state
                    // it met.
                    let pre = self.snap.clone();
                    match pore_xenstore::codec::parse_frame(buf, PAYLOAD_MAX) {
                        Ok(Some((h, payload, n))) => {
                            let (ty, tx) = (h.ty.get(), h.tx_id.get());
                            let payload = payload.to_vec();
                            let (_, out) = self.request(conn, ty, tx, &payload);
                            self.after(&pre, Step::Other, &out);
                            buf = &buf[n..];
                        }
                        Ok(None) => break,
                        Err(_) => {
                            // The I/O layer closes a socket; a guest's ring is no longer read.
                            if self.snap.conns.get(&conn).is_some_and(|c| c.domid == 0)
                                && !pre.domains.values().any(|&c| c == conn)
                            {
                                self.store.disconnect(conn);
                                self.after(&pre, Step::Disconnect(conn), &[]);
                            }
                            break;
                        }
                    }
                }
                return;
            }
            Move::Toolstack { dom, fail } => {
                // The toolstack only knows domain ids Xen can have.
                let Ok(id) = u16::try_from(dom.id()) else {
                    return;
                };
                self.hooks.fail = *fail;
                let mut out = Vec::new();
                let r = self
                    .store
                    .introduce_domain(DomId(id), "guest", &mut self.hooks, &mut out);
                self.hooks.fail = false;
                for o in &out {
                    assert_eq!(o.kind, OutKind::Event);
                    self.check_event(o, &WireHeader::read(&o.bytes).expect("short"));
                }
                events = out;
                if r.is_ok() {
                    kind = Step::Toolstack(dom.id());
                }
            }
            Move::Die { dom } => {
                if dom.id() == 0 {
                    // Domain 0 does not die.
                    return;
                }
                // Only a domain id Xen can have dies (and only those can be introduced).
                let Ok(id) = u16::try_from(dom.id()) else {
                    assert!(!pre.domains.contains_key(&dom.id()));
                    return;
                };
                kind = Step::Die;
                let mut out = Vec::new();
                let was = pre.domains.contains_key(&dom.id());
                let done = self
                    .store
                    .release_domain(DomId(id), &mut self.hooks, &mut out);
                assert_eq!(done, was, "release of a domain not introduced");
                for o in &out {
                    assert_eq!(o.kind, OutKind::Event);
                    self.check_event(o, &WireHeader::read(&o.bytes).expect("short"));
                }
                events = out;
            }
            Move::Connect => {
                if self.conns.len() < 16 {
                    let c = self.store.connect(DomId::DOM0);
                    self.conns.push(c);
                }
            }
            Move::Disconnect { actor } => {
                let conn = self.actor(*actor);
                // A guest's ring connection ends with its release, not here.
                if !pre.domains.values().any(|&c| c == conn) {
                    self.store.disconnect(conn);
                    kind = Step::Disconnect(conn);
                }
            }
        }
        self.after(&pre, kind, &events);
    }

    /// The checks after a step that started from `pre`.
    fn after(&mut self, pre: &Snapshot, kind: Step, events: &[Outgoing]) {
        let post = self.store.fuzz_snapshot();
        check_state(&post, &self.q, self.priv_dom);
        let released: Vec<u32> = pre
            .domains
            .keys()
            .filter(|d| !post.domains.contains_key(d))
            .copied()
            .collect();
        for &d in &released {
            let conn = pre.domains[&d];
            assert!(
                !post.conns.contains_key(&conn),
                "released domain's connection left"
            );
            assert!(
                self.hooks.released.contains(&(conn, d)),
                "release hook not called"
            );
            assert!(
                !post.nodes.values().any(|n| n.perms[0].domid == d),
                "node owned by released domain {d} left"
            );
            assert!(
                !post.targets.iter().any(|(a, b)| *a == d || *b == d),
                "target relation of released domain {d} left"
            );
        }
        if let Step::Disconnect(c) = kind {
            assert!(!post.conns.contains_key(&c), "closed connection left");
            assert!(
                !post.watches.iter().any(|w| w.0 == c),
                "closed connection's watch left"
            );
        }
        if let Step::Req { conn, tx, ty, ans } = &kind {
            self.check_request(pre, &post, *conn, *tx, *ty, ans);
        }
        if self.diff {
            self.differential(pre, &post, &kind, events, &released);
        }
        self.snap = post;
        self.learn_conns();
    }

    fn check_request(
        &self,
        pre: &Snapshot,
        post: &Snapshot,
        conn: ConnId,
        tx: u32,
        ty: MsgType,
        ans: &Answer,
    ) {
        use MsgType as T;
        let domid = pre.conns[&conn].domid;
        let privileged = domid == 0 || self.priv_dom == Some(domid);
        let tree_changes = match ty {
            T::TransactionEnd => ans.is_ok() && tx != 0,
            T::Write | T::Mkdir | T::Rm | T::SetPerms => ans.is_ok() && tx == 0,
            T::Introduce | T::Release => ans.is_ok(),
            _ => false,
        };
        if !tree_changes {
            assert!(pre.nodes == post.nodes, "{ty:?} {ans:?} changed the tree");
        }
        if ty == T::ResetWatches && ans.is_ok() {
            if let Some(c) = post.conns.get(&conn) {
                assert!(c.txs.is_empty(), "transaction left by RESET_WATCHES");
            }
            assert!(
                !post.watches.iter().any(|w| w.0 == conn),
                "watch left by RESET_WATCHES"
            );
        }
        if ty == T::TransactionEnd && tx != 0 {
            if let Some(c) = post.conns.get(&conn) {
                assert!(!c.txs.iter().any(|t| t.id == tx), "ended transaction left");
            }
        }
        if privileged || !tree_changes {
            return;
        }
        // An unprivileged domain's own changes keep it within its quotas.
        let owned = |s: &Snapshot, d: u32| s.owned.get(&d).copied().unwrap_or(0);
        for (&d, &n) in &post.owned {
            if n > owned(pre, d) {
                assert_eq!(d, domid, "domain {domid} made domain {d} own more nodes");
                assert!(n <= self.q.nodes_per_domain, "node quota: {n}");
                if ty == T::TransactionEnd {
                    assert!(n < self.q.nodes_per_domain, "node quota at commit: {n}");
                }
            }
        }
        for (p, n) in &post.nodes {
            let size = record_size(n);
            let grew = pre.nodes.get(p).is_none_or(|o| record_size(o) < size);
            assert!(
                !grew || size < self.q.entry_size,
                "{p}: record size {size} after {ty:?}"
            );
        }
    }

    fn differential(
        &mut self,
        pre: &Snapshot,
        post: &Snapshot,
        kind: &Step,
        events: &[Outgoing],
        released: &[u32],
    ) {
        // Event visibility: an unprivileged domain sees a change only if it may read the
        // node or its parent, before or after (not checked for commits: C uses the perms
        // of the transaction's first access).
        let commit = matches!(
            kind,
            Step::Req {
                ty: MsgType::TransactionEnd,
                ..
            }
        );
        let reg = match kind {
            Step::Req {
                conn,
                ty: MsgType::Watch,
                ans: Ok(_),
                ..
            } => Some(*conn),
            _ => None,
        };
        let post_targets = self.model_targets_after(kind, released, post);
        if let Step::Req {
            conn,
            tx: 0,
            ty,
            ans,
        } = kind
        {
            self.check_decision(pre, *conn, *ty, ans);
        }
        let pre_model = self.model.clone();
        self.update_model(pre, post, kind, released, commit, post_targets);
        let check_events = match kind {
            Step::Req { .. } => !commit,
            Step::Toolstack(_) | Step::Die => true,
            Step::Disconnect(_) | Step::Other => false,
        };
        if check_events {
            for o in events.iter().filter(|o| o.kind == OutKind::Event) {
                if Some(o.conn) == reg {
                    continue;
                }
                let Some(domid) = post.conns.get(&o.conn).map(|c| c.domid) else {
                    continue;
                };
                let body = &o.bytes[HEADER_LEN..];
                let path =
                    String::from_utf8_lossy(body.split(|&b| b == 0).next().unwrap_or_default())
                        .into_owned();
                let mut ok = false;
                let combos = [
                    (pre, &pre_model, &pre_model.targets),
                    (pre, &pre_model, &self.model.targets),
                    (post, &self.model, &self.model.targets),
                ];
                for (snap, model, targets) in combos {
                    let who = Who {
                        domid,
                        privileged: domid == 0 || self.priv_dom == Some(domid),
                        target: targets.get(&domid).copied(),
                    };
                    if path.starts_with('@') {
                        if let Some(perms) = snap.special_perms.get(&path) {
                            ok |= who.rights(perms, &BTreeSet::new()) & R != 0;
                        }
                        continue;
                    }
                    let abs = if path.starts_with('/') {
                        path.clone()
                    } else {
                        format!("/local/domain/{domid}/{path}")
                    };
                    for p in [abs.as_str(), parent(&abs)] {
                        ok |= model.rights(snap, who, p).iter().any(|r| r & R != 0);
                    }
                }
                // Removed nodes are judged with their perms at removal (released
                // domains' entries already ignored): the pre state covers them.
                assert!(ok, "event {path} leaked to domain {domid}");
            }
        }
        assert_eq!(self.model.targets, post.targets, "stub domain targets");
        // The entries in force are the listed ones minus the ignored ones.
        for (p, n) in &post.nodes {
            let st = self.model.nodes.get(p).cloned().unwrap_or_default();
            if st.fuzzy {
                continue;
            }
            let mut want = n.listed.clone();
            let mut first = true;
            want.retain(|e| std::mem::take(&mut first) || !st.ign.contains(&e.domid));
            assert_eq!(
                n.perms, want,
                "{p}: entries in force (listed {:?}, ignored {:?})",
                n.listed, st.ign
            );
        }
    }

    /// Model update: releases, then changed nodes by their cause.
    fn update_model(
        &mut self,
        pre: &Snapshot,
        post: &Snapshot,
        kind: &Step,
        released: &[u32],
        commit: bool,
        post_targets: BTreeMap<u32, u32>,
    ) {
        for &d in released {
            self.model.released_ever.insert(d);
            for (p, n) in &post.nodes {
                if n.listed[1..].iter().any(|e| e.domid == d) {
                    self.model.nodes.entry(p.clone()).or_default().ign.insert(d);
                }
            }
        }
        self.model.targets = post_targets;
        let set_perms_path = match (kind, &self.last_req) {
            (
                Step::Req {
                    ty: MsgType::SetPerms,
                    ans: Ok(_),
                    tx: 0,
                    conn,
                },
                Some(p),
            ) => {
                let domid = pre.conns[conn].domid;
                Some(if p.starts_with('/') || p.starts_with('@') {
                    p.clone()
                } else {
                    format!("/local/domain/{domid}/{p}")
                })
            }
            _ => None,
        };
        let home = match kind {
            Step::Toolstack(d) => Some(format!("/local/domain/{d}")),
            _ => None,
        };
        for (p, n) in &post.nodes {
            let old = pre.nodes.get(p);
            // A successful SET_PERMS counts even when it lists the same entries: C writes
            // the node with a new generation and checks its entries against that one
            // (`access_node` then `write_node_raw`'s `domain_adjust_node_perms`), so an
            // entry naming a domain introduced since the release of its namesake is in
            // force again.
            let changed = Some(p) == set_perms_path.as_ref()
                || old.is_none_or(|o| {
                    o.listed != n.listed || (commit && o.generation != n.generation)
                });
            if !changed {
                continue;
            }
            let st = if (old.is_some() && Some(p) == set_perms_path.as_ref())
                || Some(p) == home.as_ref()
            {
                PermState::default()
            } else {
                let mut st = self.model.nodes.get(parent(p)).cloned().unwrap_or_default();
                st.ign
                    .retain(|d| n.listed[1..].iter().any(|e| e.domid == *d));
                st.fuzzy |= commit || old.is_some();
                st
            };
            self.model.nodes.insert(p.clone(), st);
        }
        self.model.nodes.retain(|p, _| post.nodes.contains_key(p));
    }

    /// Whether creating `path` (and its missing ancestors) with a value of `value` bytes
    /// takes domain `domid` over a quota.
    fn creation_over_quota(&self, pre: &Snapshot, domid: u32, path: &str, value: usize) -> bool {
        let mut missing = vec![path];
        let mut cur = parent(path);
        while !pre.nodes.contains_key(cur) {
            missing.push(cur);
            cur = parent(cur);
        }
        let anc = &pre.nodes[cur];
        let base = |p: &str| p[p.rfind('/').map_or(0, |i| i + 1)..].len();
        let entry = 24 + 8 * anc.listed.len();
        let owned = pre.owned.get(&domid).copied().unwrap_or(0);
        let top = missing.last().map_or(0, |p| base(p));
        owned + missing.len() > self.q.nodes_per_domain
            || entry + value >= self.q.entry_size
            || missing
                .windows(2)
                .any(|w| entry + base(w[0]) + 1 >= self.q.entry_size)
            || record_size(anc) + top + 1 >= self.q.entry_size
    }

    fn model_targets_after(
        &self,
        kind: &Step,
        released: &[u32],
        post: &Snapshot,
    ) -> BTreeMap<u32, u32> {
        let mut t = self.model.targets.clone();
        match (kind, self.last_target) {
            (
                Step::Req {
                    ty: MsgType::SetTarget,
                    ans: Ok(_),
                    ..
                },
                Some((a, b)),
            ) => {
                t.insert(a, b);
            }
            // A SET_TARGET the model did not compose (garbage, frames): take the relation.
            (
                Step::Req {
                    ty: MsgType::SetTarget,
                    ans: Ok(_),
                    ..
                },
                None,
            )
            | (Step::Other, _) => {
                t.extend(post.targets.iter().map(|(&a, &b)| (a, b)));
            }
            _ => {}
        }
        t.retain(|a, b| !released.contains(a) && !released.contains(b));
        t
    }

    fn check_decision(&self, pre: &Snapshot, conn: ConnId, ty: MsgType, ans: &Answer) {
        use MsgType as T;
        let Some(raw) = &self.last_req else {
            return;
        };
        let domid = pre.conns[&conn].domid;
        let who = self.who(domid);
        if ans == &Err(ErrorName::EINVAL) {
            return;
        }
        if ty == T::SetTarget {
            if let Some((a, b)) = self.last_target {
                let want = if !who.privileged {
                    Err(ErrorName::EACCES)
                } else if pre.domains.contains_key(&a) && (b == 0 || pre.domains.contains_key(&b)) {
                    Ok(b"OK\0".to_vec())
                } else {
                    Err(ErrorName::ENOENT)
                };
                assert_eq!(ans, &want, "SET_TARGET {a} {b}");
            }
            return;
        }
        let path = if raw.starts_with('/') || raw.starts_with('@') {
            raw.clone()
        } else {
            format!("/local/domain/{domid}/{raw}")
        };
        let need = match ty {
            T::Read | T::Directory | T::DirectoryPart | T::GetPerms => R,
            T::Write | T::Mkdir | T::Rm => W,
            T::SetPerms => W | O,
            _ => return,
        };
        if path.starts_with('@') {
            if ty == T::SetPerms {
                let want_ok = pre
                    .special_perms
                    .get(&path)
                    .is_some_and(|p| who.rights(p, &BTreeSet::new()) & need == need);
                let perms_ok = self
                    .last_perms
                    .as_ref()
                    .is_some_and(|v| who.privileged || v.len() <= self.q.perms_per_node);
                if perms_ok {
                    assert_eq!(ans.is_ok(), want_ok, "SET_PERMS {path}: {ans:?}");
                }
            }
            return;
        }
        if ty == T::SetPerms {
            let Some(perms) = &self.last_perms else {
                return;
            };
            if !who.privileged && perms.len() > self.q.perms_per_node {
                assert_eq!(
                    ans,
                    &Err(ErrorName::ENOSPC),
                    "SET_PERMS with {} entries",
                    perms.len()
                );
                return;
            }
        }
        let outcomes = self.model.decide(pre, who, &path, need);
        let node = pre.nodes.get(&path);
        // The quotas of an unprivileged caller, predicted as C applies them: the record of
        // every node written (24 bytes, 8 per listed entry, value, child names) stays
        // under the entry size; the caller's nodes, the new ones included, within its
        // node quota.
        let q = &self.q;
        let unpriv = !who.privileged;
        let value = self.last_value;
        let new_perms = self.last_perms.as_ref().map_or(0, Vec::len);
        let write_full =
            node.is_some_and(|n| unpriv && record_size(n) - n.value.len() + value >= q.entry_size);
        let perms_full = node.is_some_and(|n| {
            unpriv && record_size(n) - 8 * n.listed.len() + 8 * new_perms >= q.entry_size
        });
        let create_full = unpriv && self.creation_over_quota(pre, domid, &path, value);
        let nospc = |r: &Answer, full: bool| match r {
            Ok(_) => !full,
            Err(ErrorName::ENOSPC) => full,
            _ => false,
        };
        let good = outcomes.iter().any(|o| match (o, ty, ans) {
            (Outcome::Denied, _, Err(ErrorName::EACCES)) => true,
            (Outcome::Denied, _, _) => false,
            (Outcome::Allowed, T::Read, Ok(v)) => Some(v) == node.map(|n| &n.value),
            (Outcome::Allowed, T::Directory, Ok(v)) => node.is_some_and(|n| {
                *v == strs(&n.children.iter().map(|c| c.as_bytes()).collect::<Vec<_>>())
            }),
            (Outcome::Allowed, T::GetPerms, Ok(v)) => node.is_some_and(|n| {
                *v == strs(
                    &n.listed
                        .iter()
                        .map(|p| p.to_string().into_bytes())
                        .collect::<Vec<_>>()
                        .iter()
                        .map(Vec::as_slice)
                        .collect::<Vec<_>>(),
                )
            }),
            (
                Outcome::Allowed,
                T::Read | T::Directory | T::DirectoryPart | T::GetPerms,
                Err(ErrorName::E2BIG),
            ) => true,
            (Outcome::Allowed, T::DirectoryPart, Ok(_)) => true,
            (Outcome::Allowed, T::Mkdir, Ok(_)) => true,
            (Outcome::Allowed, T::Write, r) => nospc(r, write_full),
            (Outcome::Allowed, T::Rm, Ok(_)) => path != "/",
            (Outcome::Allowed, T::Rm, Err(ErrorName::EINVAL)) => path == "/",
            (Outcome::Allowed, T::SetPerms, r @ (Ok(_) | Err(ErrorName::ENOSPC))) => {
                let new_owner = self
                    .last_perms
                    .as_ref()
                    .and_then(|v| v.first())
                    .map(|p| p.domid);
                (who.privileged || new_owner == node.map(|n| n.perms[0].domid))
                    && nospc(r, perms_full)
            }
            (Outcome::Allowed, T::SetPerms, Err(ErrorName::EPERM)) => {
                let new_owner = self
                    .last_perms
                    .as_ref()
                    .and_then(|v| v.first())
                    .map(|p| p.domid);
                !who.privileged && new_owner != node.map(|n| n.perms[0].domid)
            }
            (
                Outcome::Missing,
                T::Read | T::Directory | T::DirectoryPart | T::GetPerms | T::SetPerms,
                Err(ErrorName::ENOENT),
            ) => true,
            (Outcome::Missing, T::Write | T::Mkdir, r) => nospc(r, create_full),
            (Outcome::Missing, T::Rm, Ok(_)) => pre.nodes.contains_key(parent(&path)),
            (Outcome::Missing, T::Rm, Err(ErrorName::ENOENT)) => {
                !pre.nodes.contains_key(parent(&path))
            }
            _ => false,
        });
        assert!(
            good,
            "{ty:?} {path} by {who:?}: got {ans:?}, model says {outcomes:?}"
        );
    }
}

/// What a step was, for the checks after it.
#[derive(Debug)]
enum Step {
    Req {
        conn: ConnId,
        tx: u32,
        ty: MsgType,
        ans: Answer,
    },
    Toolstack(u32),
    Die,
    Disconnect(ConnId),
    Other,
}

/// The invariants of one state, recounted from scratch.
fn check_state(s: &Snapshot, q: &Quotas, priv_dom: Option<u32>) {
    assert!(s.nodes.contains_key("/"), "root gone");
    let mut owned: BTreeMap<u32, usize> = BTreeMap::new();
    for (p, n) in &s.nodes {
        assert!(!n.perms.is_empty() && !n.listed.is_empty(), "{p}: no perms");
        assert_eq!(n.perms[0], n.listed[0], "{p}: owner entry");
        let mut it = n.listed.iter();
        assert!(
            n.perms.iter().all(|e| it.any(|l| l == e)),
            "{p}: entries in force {:?} not among those listed {:?}",
            n.perms,
            n.listed
        );
        *owned.entry(n.perms[0].domid).or_default() += 1;
        let mut seen = BTreeSet::new();
        for c in &n.children {
            assert!(seen.insert(c), "{p}: child {c} listed twice");
            let cp = if p == "/" {
                format!("/{c}")
            } else {
                format!("{p}/{c}")
            };
            assert!(s.nodes.contains_key(&cp), "{p}: child {c} missing");
        }
        if p != "/" {
            let base = &p[p.rfind('/').map_or(0, |i| i + 1)..];
            let par = s
                .nodes
                .get(parent(p))
                .unwrap_or_else(|| panic!("{p}: no parent"));
            assert!(
                par.children.iter().any(|c| c == base),
                "{p}: not listed by its parent"
            );
        }
    }
    let kept: BTreeMap<u32, usize> = s
        .owned
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(&d, &n)| (d, n))
        .collect();
    assert_eq!(kept, owned, "per-domain node counts differ from a recount");
    for (d, c) in &s.domains {
        assert_eq!(
            s.conns.get(c).map(|c| c.domid),
            Some(*d),
            "domain {d}: connection"
        );
    }
    for (id, c) in &s.conns {
        if c.domid != 0 {
            assert_eq!(
                s.domains.get(&c.domid),
                Some(id),
                "guest connection of no domain"
            );
        }
        let privileged = c.domid == 0 || priv_dom == Some(c.domid);
        if privileged {
            continue;
        }
        assert!(
            c.txs.len() <= q.transactions + 1,
            "transactions: {}",
            c.txs.len()
        );
        let mem: usize = c.txs.iter().map(|t| t.mem).sum();
        assert!(
            mem <= q.memory_per_domain + 2 * PAYLOAD_MAX,
            "transaction memory {mem}"
        );
        for t in &c.txs {
            assert!(
                t.nodes <= q.transaction_nodes,
                "transaction nodes {}",
                t.nodes
            );
            assert!(
                t.held <= 2 * t.mem + 64,
                "transaction holds {} bytes, charged {}",
                t.held,
                t.mem
            );
        }
        let watches = s.watches.iter().filter(|w| w.0 == *id).count();
        assert!(watches <= q.watches_per_domain + 1, "watches: {watches}");
    }
    for w in &s.watches {
        assert!(s.conns.contains_key(&w.0), "watch of a closed connection");
    }
    for (a, b) in &s.targets {
        assert!(
            s.domains.contains_key(a),
            "target relation of a domain not introduced"
        );
        assert!(
            *b == 0 || s.domains.contains_key(b),
            "target not introduced"
        );
    }
    for (name, p) in &s.special_perms {
        assert!(!p.is_empty(), "{name}: no perms");
    }
}

/// Runs the scenario `data` encodes; `diff` adds the first-principles model. Moves are
/// decoded one at a time (a mutation changes one move, not the length of the list).
pub fn run(data: &[u8], diff: bool) {
    let mut u = arbitrary::Unstructured::new(data);
    let (Ok(limits), Ok(priv_dom)) = (Limits::arbitrary(&mut u), Option::<Dom>::arbitrary(&mut u))
    else {
        return;
    };
    let mut h = Harness::new(&limits, priv_dom, diff);
    let Ok(moves) = u.arbitrary_iter::<Move>() else {
        return;
    };
    for mv in moves.take(MAX_MOVES) {
        let Ok(mv) = mv else {
            break;
        };
        h.play(&mv);
    }
}

/// Moves per input at most.
const MAX_MOVES: usize = 200;

/// Runs one scenario (regression tests build them by hand).
pub fn run_scenario(sc: &Scenario, diff: bool) {
    let mut h = Harness::new(&sc.limits, sc.priv_dom, diff);
    for mv in sc.moves.iter().take(MAX_MOVES) {
        h.play(mv);
    }
}

impl Harness {
    fn new(limits: &Limits, priv_dom: Option<Dom>, diff: bool) -> Self {
        let q = limits.quotas();
        let priv_dom = priv_dom.map(Dom::id).filter(|&d| d != 0);
        let config = Config {
            quotas: q.clone(),
            priv_domid: priv_dom,
            max_queued_events: 16,
        };
        let mut store = Store::new(config);
        let conns = vec![store.connect(DomId::DOM0), store.connect(DomId::DOM0)];
        let snap = store.fuzz_snapshot();
        Harness {
            store,
            hooks: Hooks::default(),
            q,
            priv_dom,
            conns,
            snap,
            diff,
            model: Model::default(),
            last_req: None,
            last_perms: None,
            last_value: 0,
            last_target: None,
        }
    }

    fn play(&mut self, mv: &Move) {
        self.note(mv);
        self.step(mv);
    }
}

/// The moves `data` encodes (to read a corpus entry or a crash).
pub fn decode(data: &[u8]) -> Vec<Move> {
    let mut u = arbitrary::Unstructured::new(data);
    let (Ok(_), Ok(_)) = (Limits::arbitrary(&mut u), Option::<Dom>::arbitrary(&mut u)) else {
        return Vec::new();
    };
    let Ok(moves) = u.arbitrary_iter::<Move>() else {
        return Vec::new();
    };
    moves.take(MAX_MOVES).map_while(Result::ok).collect()
}

/// Writes values in the byte form `arbitrary` reads them from (for seed inputs). Values
/// holding a `Vec` are not encodable (their lengths come from the end of the input).
pub trait Encode {
    /// Appends `self`.
    fn enc(&self, out: &mut Vec<u8>);
}

fn variant(out: &mut Vec<u8>, i: u64, count: u64) {
    let x = (i << 32).div_ceil(count);
    out.extend_from_slice(&(x as u32).to_le_bytes());
}

impl Encode for u8 {
    fn enc(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }
}

impl Encode for u16 {
    fn enc(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl<T: Encode, const N: usize> Encode for [T; N] {
    fn enc(&self, out: &mut Vec<u8>) {
        self.iter().for_each(|x| x.enc(out));
    }
}

impl Encode for bool {
    fn enc(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl Encode for Dom {
    fn enc(&self, out: &mut Vec<u8>) {
        self.0.enc(out);
    }
}

impl Encode for Comps {
    fn enc(&self, out: &mut Vec<u8>) {
        self.0.enc(out);
        self.1.enc(out);
    }
}

impl Encode for Limits {
    fn enc(&self, out: &mut Vec<u8>) {
        self.nodes.enc(out);
        self.entry.enc(out);
        self.watches.enc(out);
        self.txs.enc(out);
        self.path_max.enc(out);
        self.perms.enc(out);
        self.tx_nodes.enc(out);
        self.mem.enc(out);
    }
}

impl Encode for PathSel {
    fn enc(&self, out: &mut Vec<u8>) {
        match self {
            PathSel::Abs(c) => {
                variant(out, 0, 6);
                c.enc(out);
            }
            PathSel::Home(d, c) => {
                variant(out, 1, 6);
                d.enc(out);
                c.enc(out);
            }
            PathSel::Rel(c) => {
                variant(out, 2, 6);
                c.enc(out);
            }
            PathSel::Special(i) => {
                variant(out, 3, 6);
                i.enc(out);
            }
            PathSel::Long(d, pre, c, n) => {
                variant(out, 4, 6);
                d.enc(out);
                pre.enc(out);
                c.enc(out);
                n.enc(out);
            }
            PathSel::Raw(_) => unimplemented!("Vec"),
        }
    }
}

impl Encode for Val {
    fn enc(&self, out: &mut Vec<u8>) {
        match self {
            Val::Small(n, v) => {
                variant(out, 0, 3);
                n.enc(out);
                v.enc(out);
            }
            Val::Big(n, b) => {
                variant(out, 1, 3);
                n.enc(out);
                b.enc(out);
            }
            Val::Raw(_) => unimplemented!("Vec"),
        }
    }
}

impl Encode for Tok {
    fn enc(&self, out: &mut Vec<u8>) {
        match self {
            Tok::Small(n) => {
                variant(out, 0, 3);
                n.enc(out);
            }
            Tok::Big(n) => {
                variant(out, 1, 3);
                n.enc(out);
            }
            Tok::Raw(_) => unimplemented!("Vec"),
        }
    }
}

impl Encode for PermSel {
    fn enc(&self, out: &mut Vec<u8>) {
        match self {
            PermSel::Entry(l, d) => {
                variant(out, 0, 2);
                l.enc(out);
                d.enc(out);
            }
            PermSel::Bad(i) => {
                variant(out, 1, 2);
                i.enc(out);
            }
        }
    }
}

impl Encode for Req {
    fn enc(&self, out: &mut Vec<u8>) {
        let v = |out: &mut Vec<u8>, i| variant(out, i, 20);
        match self {
            Req::Read(p) => {
                v(out, 0);
                p.enc(out);
            }
            Req::Directory(p) => {
                v(out, 1);
                p.enc(out);
            }
            Req::DirectoryPart(p, o) => {
                v(out, 2);
                p.enc(out);
                o.enc(out);
            }
            Req::GetPerms(p) => {
                v(out, 3);
                p.enc(out);
            }
            Req::Write(p, x) => {
                v(out, 4);
                p.enc(out);
                x.enc(out);
            }
            Req::Mkdir(p) => {
                v(out, 5);
                p.enc(out);
            }
            Req::Rm(p) => {
                v(out, 6);
                p.enc(out);
            }
            Req::SetPerms(p, e, n) => {
                v(out, 7);
                p.enc(out);
                e.enc(out);
                n.enc(out);
            }
            Req::Watch(p, t) => {
                v(out, 8);
                p.enc(out);
                t.enc(out);
            }
            Req::Unwatch(p, t) => {
                v(out, 9);
                p.enc(out);
                t.enc(out);
            }
            Req::TxStart => v(out, 10),
            Req::TxEnd(c) => {
                v(out, 11);
                c.enc(out);
            }
            Req::Introduce(d, g, p) => {
                v(out, 12);
                d.enc(out);
                g.enc(out);
                out.push(*p as u8);
            }
            Req::Release(d) => {
                v(out, 13);
                d.enc(out);
            }
            Req::Resume(d) => {
                v(out, 14);
                d.enc(out);
            }
            Req::GetDomainPath(d) => {
                v(out, 15);
                d.enc(out);
            }
            Req::IsIntroduced(d) => {
                v(out, 16);
                d.enc(out);
            }
            Req::SetTarget(a, b) => {
                v(out, 17);
                a.enc(out);
                b.enc(out);
            }
            Req::ResetWatches => v(out, 18),
            Req::Control(h) => {
                v(out, 19);
                h.enc(out);
            }
        }
    }
}

impl Encode for Move {
    fn enc(&self, out: &mut Vec<u8>) {
        let v = |out: &mut Vec<u8>, i| variant(out, i, 7);
        match self {
            Move::Req { actor, tx, req } => {
                v(out, 0);
                actor.enc(out);
                tx.enc(out);
                req.enc(out);
            }
            Move::Garbage { .. } | Move::Frame { .. } => unimplemented!("Vec"),
            Move::Toolstack { dom, fail } => {
                v(out, 3);
                dom.enc(out);
                fail.enc(out);
            }
            Move::Die { dom } => {
                v(out, 4);
                dom.enc(out);
            }
            Move::Connect => v(out, 5),
            Move::Disconnect { actor } => {
                v(out, 6);
                actor.enc(out);
            }
        }
    }
}

/// The input that [`run`] decodes into `sc` (moves holding a `Vec` are not encodable).
pub fn encode(sc: &Scenario) -> Vec<u8> {
    let mut out = Vec::new();
    sc.limits.enc(&mut out);
    match sc.priv_dom {
        None => out.push(0),
        Some(d) => {
            out.push(1);
            d.enc(&mut out);
        }
    }
    for m in &sc.moves {
        out.push(1);
        m.enc(&mut out);
    }
    out.push(0);
    out
}

/// Hand-written scenarios: the seed corpus of both targets (written by
/// `cargo run --example seeds`) and regression tests. Each reaches a state a hostile
/// guest aims for: a released domain's id reused, a stub domain with a target, quotas
/// reached through parallel transactions, watches on other domains' nodes.
pub fn seeds() -> Vec<Scenario> {
    let lim = || Limits {
        nodes: 4,
        entry: 200,
        watches: 2,
        txs: 1,
        path_max: 60,
        perms: 3,
        tx_nodes: 12,
        mem: 3000,
    };
    let c = |n: u8, v: [u8; 4]| Comps(n, v);
    let req = |actor, req| Move::Req { actor, tx: 0, req };
    let txreq = |actor, req| Move::Req {
        actor,
        tx: 128,
        req,
    };
    let small = |b: u8| Val::Small(1, [b, 0, 0]);
    let entry = |l, d| PermSel::Entry(l, Dom(d));
    let none = PermSel::Bad(0);
    let set_local = || {
        Req::SetPerms(
            PathSel::Abs(c(1, [4, 0, 0, 0])),
            [
                entry(0, 0),
                entry(1, 2),
                PermSel::Bad(0),
                PermSel::Bad(0),
                PermSel::Bad(0),
            ],
            2,
        )
    };
    vec![
        // dom0 grants domain 2 read access, domain 2 dies, a new domain 2 reads.
        Scenario {
            limits: lim(),
            priv_dom: None,
            moves: vec![
                Move::Toolstack {
                    dom: Dom(2),
                    fail: false,
                },
                req(0, Req::Write(PathSel::Abs(c(1, [0; 4])), small(b'v'))),
                req(
                    0,
                    Req::SetPerms(
                        PathSel::Abs(c(1, [0; 4])),
                        [
                            entry(0, 0),
                            entry(1, 2),
                            entry(2, 3),
                            PermSel::Bad(1),
                            PermSel::Bad(2),
                        ],
                        2,
                    ),
                ),
                req(2, Req::Read(PathSel::Abs(c(1, [0; 4])))),
                Move::Die { dom: Dom(2) },
                Move::Toolstack {
                    dom: Dom(2),
                    fail: false,
                },
                req(3, Req::Read(PathSel::Abs(c(1, [0; 4])))),
                req(3, Req::Write(PathSel::Abs(c(2, [0, 1, 0, 0])), small(b'w'))),
            ],
        },
        // A stub domain (3) with a target (1): writes in the target's home.
        Scenario {
            limits: lim(),
            priv_dom: None,
            moves: vec![
                Move::Toolstack {
                    dom: Dom(1),
                    fail: false,
                },
                Move::Toolstack {
                    dom: Dom(3),
                    fail: false,
                },
                req(0, Req::SetTarget(Dom(3), Dom(1))),
                req(
                    3,
                    Req::Write(PathSel::Home(Dom(1), c(2, [3, 0, 0, 0])), small(b'x')),
                ),
                req(3, Req::GetPerms(PathSel::Home(Dom(1), c(2, [3, 0, 0, 0])))),
                req(
                    3,
                    Req::SetPerms(
                        PathSel::Home(Dom(1), c(2, [3, 0, 0, 0])),
                        [
                            entry(1, 1),
                            entry(3, 2),
                            none,
                            PermSel::Bad(0),
                            PermSel::Bad(0),
                        ],
                        2,
                    ),
                ),
                req(0, Req::Release(Dom(1))),
                req(3, Req::Read(PathSel::Home(Dom(1), c(0, [0; 4])))),
            ],
        },
        // Parallel transactions of one guest creating nodes up to the node quota.
        Scenario {
            limits: lim(),
            priv_dom: None,
            moves: vec![
                Move::Toolstack {
                    dom: Dom(1),
                    fail: false,
                },
                req(2, Req::TxStart),
                req(2, Req::TxStart),
                txreq(2, Req::Write(PathSel::Rel(c(2, [3, 0, 0, 0])), small(b'1'))),
                Move::Req {
                    actor: 2,
                    tx: 129,
                    req: Req::Write(PathSel::Rel(c(2, [3, 1, 0, 0])), small(b'2')),
                },
                txreq(2, Req::Mkdir(PathSel::Rel(c(3, [3, 2, 1, 0])))),
                txreq(2, Req::TxEnd(true)),
                txreq(2, Req::TxEnd(true)),
                req(2, Req::Directory(PathSel::Rel(c(1, [3, 0, 0, 0])))),
            ],
        },
        // A guest creates a node and a missing parent whose record (the child's long
        // name) is over the entry size quota.
        Scenario {
            limits: Limits {
                entry: 200,
                path_max: 299,
                ..lim()
            },
            priv_dom: None,
            moves: vec![
                Move::Toolstack {
                    dom: Dom(1),
                    fail: false,
                },
                req(
                    2,
                    Req::Write(
                        PathSel::Long(Dom(1), c(1, [13, 0, 0, 0]), 0, 249),
                        small(b'l'),
                    ),
                ),
                req(2, Req::Directory(PathSel::Rel(c(1, [13, 0, 0, 0])))),
            ],
        },
        // Watches of a guest on its home and on dom0's nodes; oversized events; reset.
        Scenario {
            limits: lim(),
            priv_dom: Some(Dom(5)),
            moves: vec![
                Move::Toolstack {
                    dom: Dom(1),
                    fail: false,
                },
                req(2, Req::Watch(PathSel::Rel(c(0, [0; 4])), Tok::Small(1))),
                req(
                    2,
                    Req::Watch(PathSel::Abs(c(1, [1, 0, 0, 0])), Tok::Big(4090)),
                ),
                req(2, Req::Watch(PathSel::Special(1), Tok::Small(2))),
                req(0, Req::Write(PathSel::Abs(c(2, [1, 2, 0, 0])), small(b'z'))),
                req(
                    2,
                    Req::Write(PathSel::Rel(c(1, [3, 0, 0, 0])), Val::Big(300, b'q')),
                ),
                req(0, Req::Introduce(Dom(5), 1, 1)),
                req(3, Req::Release(Dom(1))),
                req(0, Req::ResetWatches),
                Move::Connect,
                Move::Disconnect { actor: 1 },
            ],
        },
        // dom0 grants domain 2 read access on /local, domain 2 dies and is introduced
        // again, dom0 sets the same permissions again: the new domain 2 reads (the entry
        // is in force again, as the node was written after the introduction).
        Scenario {
            limits: lim(),
            priv_dom: None,
            moves: vec![
                Move::Toolstack {
                    dom: Dom(2),
                    fail: false,
                },
                req(0, set_local()),
                Move::Die { dom: Dom(2) },
                Move::Toolstack {
                    dom: Dom(2),
                    fail: false,
                },
                req(3, Req::Read(PathSel::Abs(c(1, [4, 0, 0, 0])))),
                req(0, set_local()),
                req(3, Req::Read(PathSel::Abs(c(1, [4, 0, 0, 0])))),
            ],
        },
    ]
}
