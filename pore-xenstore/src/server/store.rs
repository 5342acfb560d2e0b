//! The sans-IO server core: one [`Store`] holds the tree, the connections, their
//! transactions and watches, and the introduced domains. It turns a request message into
//! reply and watch-event messages; it does no I/O.

use std::collections::{BTreeMap, HashMap};

use pore_core::{DomId, Port};
use zerocopy::IntoBytes;

use crate::codec::Message;
use crate::error::ErrorName;
use crate::perms::{Access, Perm};
use crate::wire::{MsgType, WireHeader, PAYLOAD_MAX};

use super::path;
use super::quota::Config;
use super::transaction::{Refusal, Transaction, TxView};
use super::tree::{Node, Perms, Tree, View};
use super::watch::{self, Change, Fired, Vis, Watches};
use super::ConnId;

#[cfg(feature = "fuzzing")]
#[path = "fuzzing.rs"]
pub mod fuzzing;

const PERM_READ: u8 = 1;
const PERM_WRITE: u8 = 2;
const PERM_OWNER: u8 = 4;

/// The reply of C xenstored 4.17 to `CONTROL help`.
const CONTROL_HELP: &[u8] = b"check\t\nlog\ton|off\nlive-update\t[-c <cmdline>] [-F] [-t <timeout>] <file>\n    Default timeout is 60 seconds.\nlogfile\t<file>\nmemreport\t[<file>]\nprint\t<string>\nquota\t[set <name> <val>|<domid>]\nquota-soft\t[set <name> <val>]\nhelp\t\n\0";

/// The special nodes whose permissions SET_PERMS may change.
const SPECIALS: [&str; 2] = ["@introduceDomain", "@releaseDomain"];

/// Whether an outgoing message is a reply or a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutKind {
    /// The reply to a request (never dropped).
    Reply,
    /// A watch event (may be dropped for a connection that does not read).
    Event,
}

/// A message for one connection, header included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Where it goes.
    pub conn: ConnId,
    /// Reply or event.
    pub kind: OutKind,
    /// Header and payload.
    pub bytes: Vec<u8>,
}

/// What the store asks of its embedder when a domain is introduced or released
/// (D13): reach the guest's ring, and let it go.
pub trait DomainHooks {
    /// Domain `domid` is being introduced with its ring page `gfn` and event channel
    /// `port`; its requests will come as connection `conn`. An error is the reply.
    fn introduce(
        &mut self,
        conn: ConnId,
        domid: DomId,
        gfn: u64,
        port: Port,
    ) -> Result<(), ErrorName>;
    /// Domain `domid` (connection `conn`) is released: stop serving its ring.
    fn release(&mut self, conn: ConnId, domid: DomId);
}

/// [`DomainHooks`] that accept every domain and do nothing: the guest's connection is
/// driven by the caller through [`Store::handle`] (tests, embedders that connect rings
/// themselves).
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptDomains;

impl DomainHooks for AcceptDomains {
    fn introduce(&mut self, _: ConnId, _: DomId, _: u64, _: Port) -> Result<(), ErrorName> {
        Ok(())
    }
    fn release(&mut self, _: ConnId, _: DomId) {}
}

#[derive(Debug)]
struct Conn {
    domid: u32,
    txs: HashMap<u32, Transaction>,
    next_tx: u32,
}

#[derive(Debug)]
struct Domain {
    conn: ConnId,
    id: DomId,
}

/// The rights of a connection.
#[derive(Clone, Copy, Debug)]
struct Who {
    domid: u32,
    privileged: bool,
    /// The domain this one manages (SET_TARGET): it has the target's rights too.
    target: Option<u32>,
}

impl Who {
    /// C's `perm_for_conn`.
    fn perm(&self, perms: &[Perm]) -> u8 {
        let all = PERM_READ | PERM_WRITE | PERM_OWNER;
        if self.privileged {
            return all;
        }
        let Some(owner) = perms.first() else {
            return 0;
        };
        let me = |d: u32| d == self.domid || Some(d) == self.target;
        if me(owner.domid) {
            return all;
        }
        let acc = perms[1..]
            .iter()
            .find(|p| me(p.domid))
            .map_or(owner.access, |p| p.access);
        match acc {
            Access::None => 0,
            Access::Read => PERM_READ,
            Access::Write => PERM_WRITE,
            Access::Both => PERM_READ | PERM_WRITE,
        }
    }
}

type Res<T> = Result<T, ErrorName>;

/// A request as received: header fields and payload.
struct Req<'a> {
    ty: u32,
    req_id: u32,
    tx_id: u32,
    payload: &'a [u8],
}

/// The whole state of a xenstored, without I/O.
///
/// ```
/// use pore_xenstore::codec::{Message, Request};
/// use pore_xenstore::server::{AcceptDomains, Config, Store};
///
/// let mut store = Store::new(Config::default());
/// let dom0 = store.connect(pore_core::DomId::DOM0);
/// let bytes = Request::Write { path: "/a", value: b"1" }.encode(1, 0, 4096).unwrap();
/// let msg = Message { ty: 11, req_id: 1, tx_id: 0, payload: bytes[16..].to_vec() };
/// let mut out = Vec::new();
/// store.handle(dom0, &msg, &mut AcceptDomains, &mut out);
/// assert_eq!(&out[0].bytes[16..], b"OK\0");
/// ```
#[derive(Debug)]
pub struct Store {
    tree: Tree,
    watches: Watches,
    conns: HashMap<ConnId, Conn>,
    domains: BTreeMap<u32, Domain>,
    special_perms: HashMap<String, Vec<Perm>>,
    targets: HashMap<u32, u32>,
    config: Config,
    next_conn: u64,
    /// Watch events not sent because their payload would exceed 4096 bytes.
    oversized_events: std::cell::Cell<u64>,
}

fn encode(ty: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + payload.len());
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    v.extend_from_slice(WireHeader::new(ty, req_id, tx_id, len).as_bytes());
    v.extend_from_slice(payload);
    v
}

/// C's `get_strings`: the NUL-terminated strings at the start of `p`, at most `max`.
fn strings(p: &[u8], max: usize) -> Vec<&[u8]> {
    let mut v = Vec::new();
    let mut rest = p;
    while v.len() < max {
        let Some(n) = rest.iter().position(|&b| b == 0) else {
            break;
        };
        v.push(&rest[..n]);
        rest = &rest[n + 1..];
    }
    v
}

/// C's `onearg`: the payload is exactly one NUL-terminated string.
fn onearg(p: &[u8]) -> Res<&[u8]> {
    match p.iter().position(|&b| b == 0) {
        Some(n) if n + 1 == p.len() => Ok(&p[..n]),
        _ => Err(ErrorName::EINVAL),
    }
}

fn as_str(b: &[u8]) -> Res<&str> {
    std::str::from_utf8(b).map_err(|_| ErrorName::EINVAL)
}

/// Permissions as C parses them (`xs_strings_to_perms`: letter + `strtol(…, 0)`).
fn parse_perm(s: &[u8]) -> Res<Perm> {
    let (&letter, rest) = s.split_first().ok_or(ErrorName::EINVAL)?;
    let access = match letter {
        b'n' => Access::None,
        b'r' => Access::Read,
        b'w' => Access::Write,
        b'b' => Access::Both,
        _ => return Err(ErrorName::EINVAL),
    };
    let v = path::strtol0_exact(as_str(rest)?).ok_or(ErrorName::EINVAL)?;
    // C stores the long in an unsigned int.
    Ok(Perm::new(access, v as u32))
}

fn perms_payload(perms: &[Perm]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in perms {
        v.extend_from_slice(p.to_string().as_bytes());
        v.push(0);
    }
    v
}

fn tx_aware(t: MsgType) -> bool {
    use MsgType::*;
    matches!(
        t,
        Directory
            | DirectoryPart
            | Read
            | GetPerms
            | Write
            | Mkdir
            | Rm
            | SetPerms
            | TransactionStart
            | TransactionEnd
    )
}

impl Store {
    /// The guest a RELEASE or RESUME names, checked as C checks it: only a privileged caller
    /// (EACCES), never domain 0 (EINVAL), only an introduced domain (ENOENT).
    fn introduced_guest(&self, privileged: bool, p: &[u8]) -> Res<u32> {
        if !privileged {
            return Err(ErrorName::EACCES);
        }
        let domid = path::atoi(onearg(p)?) as u32;
        if domid == 0 {
            return Err(ErrorName::EINVAL);
        }
        if !self.domains.contains_key(&domid) {
            return Err(ErrorName::ENOENT);
        }
        Ok(domid)
    }

    /// An empty store (C's initial tree: `/`, `/tool`, `/tool/xenstored`).
    pub fn new(config: Config) -> Self {
        let special_perms = SPECIALS
            .iter()
            .map(|s| (s.to_string(), vec![Perm::new(Access::None, 0)]))
            .collect();
        Store {
            tree: Tree::new(),
            watches: Watches::default(),
            conns: HashMap::new(),
            domains: BTreeMap::new(),
            special_perms,
            targets: HashMap::new(),
            config,
            next_conn: 1,
            oversized_events: std::cell::Cell::new(0),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Opens a connection for domain `domid` (0 for a unix socket client) and returns
    /// its id.
    pub fn connect(&mut self, domid: DomId) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                domid: u32::from(domid.0),
                txs: HashMap::new(),
                next_tx: 1,
            },
        );
        id
    }

    /// Closes a connection: its transactions are aborted and its watches dropped. A
    /// domain whose ring connection this was stays introduced until released.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.watches.remove_conn(conn);
    }

    /// The domain a connection acts for.
    pub fn domid_of(&self, conn: ConnId) -> Option<DomId> {
        // Connections are opened for a `DomId` (connect, introduction), so this always fits.
        self.conns
            .get(&conn)
            .and_then(|c| u16::try_from(c.domid).ok().map(DomId))
    }

    /// The connection serving an introduced domain's ring.
    pub fn domain_conn(&self, domid: DomId) -> Option<ConnId> {
        self.domains.get(&u32::from(domid.0)).map(|d| d.conn)
    }

    /// True for dom0 and introduced domains.
    pub fn is_introduced(&self, domid: DomId) -> bool {
        self.introduced(u32::from(domid.0))
    }

    /// [`Store::is_introduced`] with the domain id as the wire gives it.
    fn introduced(&self, domid: u32) -> bool {
        domid == 0 || self.domains.contains_key(&domid)
    }

    /// The tree's invariants (tests).
    #[cfg(test)]
    pub(crate) fn check_tree(&self) -> Result<(), String> {
        self.tree.check()
    }

    /// Distinct nodes accessed, nodes with pending watch events, and bytes held by
    /// transaction `tx` of `conn` (tests).
    #[cfg(test)]
    pub(crate) fn tx_stats(&self, conn: ConnId, tx: u32) -> Option<(usize, usize, usize)> {
        let t = self.conns.get(&conn)?.txs.get(&tx)?;
        Some((t.nodes(), t.pending_events(), t.mem()))
    }

    /// Watch events dropped because their payload (path, token and their NULs) would
    /// exceed the protocol's 4096 bytes, as C xenstored drops them.
    pub fn oversized_events_dropped(&self) -> u64 {
        self.oversized_events.get()
    }

    /// Number of nodes in the tree.
    pub fn node_count(&self) -> usize {
        self.tree.len()
    }

    fn who(&self, domid: u32) -> Who {
        Who {
            domid,
            privileged: domid == 0 || self.config.priv_domid == Some(domid),
            target: self.targets.get(&domid).copied(),
        }
    }

    /// The watch event `path\0token\0` for `conn`, or nothing if its payload would
    /// exceed [`PAYLOAD_MAX`]: like C's `send_event`, such an event is not sent (a guest's
    /// xenbus would refuse it and lose its place in the stream); it is counted.
    fn event(&self, conn: ConnId, path: &str, token: &[u8]) -> Option<Outgoing> {
        let len = path.len() + token.len() + 2;
        if len > PAYLOAD_MAX {
            let n = self.oversized_events.get() + 1;
            self.oversized_events.set(n);
            // Logged at 1, 2, 4, 8, ... drops: a guest must not be able to flood the log.
            if n.is_power_of_two() {
                tracing::warn!(
                    conn = conn.0,
                    len,
                    dropped = n,
                    "watch event longer than the payload limit not sent"
                );
            }
            return None;
        }
        let mut p = Vec::with_capacity(len);
        p.extend_from_slice(path.as_bytes());
        p.push(0);
        p.extend_from_slice(token);
        p.push(0);
        Some(Outgoing {
            conn,
            kind: OutKind::Event,
            bytes: encode(MsgType::WatchEvent.as_u32(), 0, 0, &p),
        })
    }

    fn deliver(&self, fired: Vec<Fired>, out: &mut Vec<Outgoing>) {
        for f in fired {
            let Some(c) = self.conns.get(&f.conn) else {
                continue;
            };
            let who = self.who(c.domid);
            if let Some(vis) = &f.perms {
                if vis.hidden {
                    continue;
                }
                let read = |p: &Option<Vec<Perm>>| {
                    p.as_ref().is_some_and(|p| who.perm(p) & PERM_READ != 0)
                };
                let ok =
                    who.perm(&vis.perms) & PERM_READ != 0 || read(&vis.old) || read(&vis.parent);
                if !ok {
                    continue;
                }
            }
            out.extend(self.event(f.conn, &f.path, &f.token));
        }
    }

    fn fire(&self, changes: &[Change], out: &mut Vec<Outgoing>) {
        let mut fired = Vec::new();
        let conns = &self.conns;
        let domid_of = |c: ConnId| conns.get(&c).map_or(0, |c| c.domid);
        for ch in changes {
            self.watches.fire(ch, &domid_of, &mut fired);
        }
        self.deliver(fired, out);
    }

    fn fire_special(&self, name: &str, out: &mut Vec<Outgoing>) {
        let perms = self
            .special_perms
            .get(name)
            .cloned()
            .unwrap_or_else(|| vec![Perm::new(Access::None, 0)]);
        self.fire(
            &[Change::Node {
                path: name.to_owned(),
                perms,
                old_perms: None,
                parent_perms: None,
            }],
            out,
        );
    }

    /// Handles one request from `conn`, appending the replies and watch events it causes
    /// to `out` (in C's order: events of a modification before its reply, the
    /// registration event after a WATCH reply). Unknown connections are ignored.
    pub fn handle(
        &mut self,
        conn: ConnId,
        msg: &Message,
        hooks: &mut dyn DomainHooks,
        out: &mut Vec<Outgoing>,
    ) {
        let req = Req {
            ty: msg.ty,
            req_id: msg.req_id,
            tx_id: msg.tx_id,
            payload: &msg.payload,
        };
        self.handle_req(conn, &req, hooks, out);
    }

    /// [`Store::handle`] for a header and its payload (what the I/O layer parses).
    pub fn handle_frame(
        &mut self,
        conn: ConnId,
        hdr: &WireHeader,
        payload: &[u8],
        hooks: &mut dyn DomainHooks,
        out: &mut Vec<Outgoing>,
    ) {
        let req = Req {
            ty: hdr.ty.get(),
            req_id: hdr.req_id.get(),
            tx_id: hdr.tx_id.get(),
            payload,
        };
        self.handle_req(conn, &req, hooks, out);
    }

    fn handle_req(
        &mut self,
        conn: ConnId,
        msg: &Req<'_>,
        hooks: &mut dyn DomainHooks,
        out: &mut Vec<Outgoing>,
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let who = self.who(c.domid);
        let mut after = Vec::new();
        let res = self.dispatch(conn, who, msg, hooks, out, &mut after);
        let bytes = match res {
            Ok(payload) if payload.len() > PAYLOAD_MAX => {
                encode(MsgType::Error.as_u32(), msg.req_id, msg.tx_id, b"E2BIG\0")
            }
            Ok(payload) => encode(msg.ty, msg.req_id, msg.tx_id, &payload),
            Err(e) => {
                let mut p = e.as_str().as_bytes().to_vec();
                p.push(0);
                encode(MsgType::Error.as_u32(), msg.req_id, msg.tx_id, &p)
            }
        };
        out.push(Outgoing {
            conn,
            kind: OutKind::Reply,
            bytes,
        });
        out.append(&mut after);
    }

    fn dispatch(
        &mut self,
        conn: ConnId,
        who: Who,
        msg: &Req<'_>,
        hooks: &mut dyn DomainHooks,
        out: &mut Vec<Outgoing>,
        after: &mut Vec<Outgoing>,
    ) -> Res<Vec<u8>> {
        use MsgType::*;
        let t = match MsgType::from_u32(msg.ty) {
            Some(WatchEvent | Error | GetFeature | SetFeature | GetQuota | SetQuota) | None => {
                return Err(ErrorName::ENOSYS)
            }
            Some(t) => t,
        };
        let tx = msg.tx_id;
        if tx_aware(t) && tx != 0 {
            let known = self
                .conns
                .get(&conn)
                .is_some_and(|c| c.txs.contains_key(&tx));
            if !known {
                return Err(ErrorName::ENOENT);
            }
        }
        let p = msg.payload;
        let ok = || Ok(b"OK\0".to_vec());
        match t {
            Read => {
                let path = self.node_path(who, onearg(p)?, false)?;
                self.with_view(conn, tx, out, |v, _| {
                    if !check(v, &path, who, PERM_READ)? {
                        return Err(ErrorName::ENOENT);
                    }
                    let n = v.get(&path).ok_or(ErrorName::ENOENT)?;
                    Ok((n.value().to_vec(), Vec::new()))
                })
            }
            Directory => {
                let path = self.node_path(who, onearg(p)?, false)?;
                self.with_view(conn, tx, out, |v, _| {
                    if !check(v, &path, who, PERM_READ)? {
                        return Err(ErrorName::ENOENT);
                    }
                    let n = v.get(&path).ok_or(ErrorName::ENOENT)?;
                    Ok((n.children().as_bytes().to_vec(), Vec::new()))
                })
            }
            DirectoryPart => {
                let s = strings(p, 2);
                if s.len() != 2 {
                    return Err(ErrorName::EINVAL);
                }
                let path = self.node_path(who, s[0], false)?;
                let off = usize::try_from(path::atoi(s[1]).max(0)).unwrap_or(usize::MAX);
                self.with_view(conn, tx, out, |v, _| {
                    if !check(v, &path, who, PERM_READ)? {
                        return Err(ErrorName::ENOENT);
                    }
                    let n = v.get(&path).ok_or(ErrorName::ENOENT)?;
                    Ok((directory_part(n, off), Vec::new()))
                })
            }
            GetPerms => {
                let path = self.node_path(who, onearg(p)?, false)?;
                self.with_view(conn, tx, out, |v, _| {
                    if !check(v, &path, who, PERM_READ)? {
                        return Err(ErrorName::ENOENT);
                    }
                    let n = v.get(&path).ok_or(ErrorName::ENOENT)?;
                    Ok((perms_payload(&n.listed_perms()), Vec::new()))
                })
            }
            Write => {
                let s = strings(p, 1);
                let Some(raw) = s.first() else {
                    return Err(ErrorName::EINVAL);
                };
                let value = p[raw.len() + 1..].to_vec();
                let path = self.node_path(who, raw, false)?;
                let q = self.config.quotas.clone();
                self.with_view(conn, tx, out, |v, _| {
                    let changes = write_node(v, &path, value, who, &q)?;
                    Ok((b"OK\0".to_vec(), changes))
                })
            }
            Mkdir => {
                let path = self.node_path(who, onearg(p)?, false)?;
                let q = self.config.quotas.clone();
                self.with_view(conn, tx, out, |v, _| {
                    if check(v, &path, who, PERM_WRITE)? {
                        return Ok((b"OK\0".to_vec(), Vec::new()));
                    }
                    let ch = create_node(v, &path, Vec::new(), who, &q)?;
                    Ok((b"OK\0".to_vec(), vec![ch]))
                })
            }
            Rm => {
                let path = self.node_path(who, onearg(p)?, false)?;
                self.with_view(conn, tx, out, |v, _| {
                    if !check(v, &path, who, PERM_WRITE)? {
                        if v.get(path::parent(&path)).is_some() {
                            return Ok((b"OK\0".to_vec(), Vec::new()));
                        }
                        return Err(ErrorName::ENOENT);
                    }
                    if path == "/" {
                        return Err(ErrorName::EINVAL);
                    }
                    let base = path::basename(&path);
                    let Some(parent) = v.get(path::parent(&path)) else {
                        // A transaction's copy of the node outlived its parent.
                        return Err(ErrorName::EINVAL);
                    };
                    if !parent.children().contains(base) {
                        // C removes the node, then fails to unlink it from the parent.
                        v.remove(&path, &mut Vec::new());
                        return Err(ErrorName::EIO);
                    }
                    if !v.always_consistent() && !subtree_complete(v, &path) {
                        return Err(ErrorName::EIO);
                    }
                    let parent_perms = v.peek(path::parent(&path)).map(|n| n.perms.to_vec());
                    let mut removed = Vec::new();
                    v.remove(&path, &mut removed);
                    Ok((
                        b"OK\0".to_vec(),
                        vec![Change::Removed {
                            removed,
                            parent_perms,
                        }],
                    ))
                })
            }
            SetPerms => self.set_perms(conn, who, tx, p, out),
            Watch => {
                let s = strings(p, 2);
                if s.len() != 2 {
                    return Err(ErrorName::EINVAL);
                }
                let given = as_str(s[0])?;
                let (canon, relative) = path::canonical(who.domid, given);
                // C checks only the length of a special (`@`) path.
                let valid = if canon.starts_with('@') {
                    canon.len() <= crate::wire::REL_PATH_MAX
                } else {
                    path::is_valid(&canon, false, self.config.quotas.path_max)
                };
                if !valid {
                    return Err(ErrorName::EINVAL);
                }
                let token = s[1].to_vec();
                if self.watches.exists(&canon, &token, conn) {
                    return Err(ErrorName::EEXIST);
                }
                if !who.privileged
                    && self.watches.count(conn) > self.config.quotas.watches_per_domain
                {
                    return Err(ErrorName::E2BIG);
                }
                // Never over the limit: the request carried the same strings.
                after.extend(self.event(conn, given, &token));
                self.watches.add(
                    canon,
                    watch::Watch {
                        conn,
                        token,
                        relative,
                    },
                );
                ok()
            }
            Unwatch => {
                let s = strings(p, 2);
                if s.len() != 2 {
                    return Err(ErrorName::EINVAL);
                }
                // C looks the watch up without checking the path.
                let (canon, _) =
                    path::canonical(who.domid, as_str(s[0]).map_err(|_| ErrorName::ENOENT)?);
                if !self.watches.remove(&canon, s[1], conn) {
                    return Err(ErrorName::ENOENT);
                }
                ok()
            }
            TransactionStart => {
                if tx != 0 {
                    return Err(ErrorName::EBUSY);
                }
                let limit = self.config.quotas.transactions;
                let c = self.conns.get_mut(&conn).ok_or(ErrorName::EINVAL)?;
                if !who.privileged && c.txs.len() > limit {
                    return Err(ErrorName::ENOSPC);
                }
                let mut id = c.next_tx;
                while id == 0 || c.txs.contains_key(&id) {
                    id = id.wrapping_add(1);
                }
                c.next_tx = id.wrapping_add(1);
                c.txs.insert(id, Transaction::default());
                Ok(format!("{id}\0").into_bytes())
            }
            TransactionEnd => {
                let arg = onearg(p)?;
                let commit = match arg {
                    b"T" => true,
                    b"F" => false,
                    _ => return Err(ErrorName::EINVAL),
                };
                let c = self.conns.get_mut(&conn).ok_or(ErrorName::EINVAL)?;
                let t = c.txs.remove(&tx).ok_or(ErrorName::ENOENT)?;
                if commit && t.failed() {
                    // C: a transaction that hit a quota cannot commit.
                    return Err(ErrorName::ENOMEM);
                }
                if commit && t.created() && !who.privileged {
                    self.check_node_quota(&t)?;
                }
                if commit {
                    let committed = t.commit(&mut self.tree).map_err(|_| ErrorName::EAGAIN)?;
                    let changes: Vec<Change> = committed
                        .into_iter()
                        .map(|c| {
                            let vis = self.commit_vis(&c.path, c.first_perms);
                            Change::Commit {
                                path: c.path,
                                exact: c.exact,
                                vis,
                            }
                        })
                        .collect();
                    self.fire(&changes, out);
                }
                ok()
            }
            Introduce => {
                if !who.privileged {
                    return Err(ErrorName::EACCES);
                }
                let s = strings(p, 3);
                if s.len() != 3 {
                    return Err(ErrorName::EINVAL);
                }
                let domid = path::atoi(s[0]) as u32;
                let gfn = path::atoi(s[1]) as u64;
                let port = path::atoi(s[2]);
                if port <= 0 {
                    return Err(ErrorName::EINVAL);
                }
                if self.domains.contains_key(&domid) {
                    return ok();
                }
                // Not a domain id Xen can have (C fails the same request when it binds
                // the port or maps the page).
                let domid = u16::try_from(domid).map_err(|_| ErrorName::EINVAL)?;
                self.introduce_inner(DomId(domid), gfn, Port(port as u32), hooks, out)?;
                ok()
            }
            Release => {
                let domid = self.introduced_guest(who.privileged, p)?;
                self.release_raw(domid, hooks, out);
                ok()
            }
            Resume => {
                self.introduced_guest(who.privileged, p)?;
                ok()
            }
            GetDomainPath => {
                let domid = path::atoi(onearg(p)?) as u32;
                Ok(format!("/local/domain/{domid}\0").into_bytes())
            }
            IsDomainIntroduced => {
                if !who.privileged {
                    return Err(ErrorName::EACCES);
                }
                let domid = path::atoi(onearg(p)?) as u32;
                Ok(if self.introduced(domid) {
                    b"T\0"
                } else {
                    b"F\0"
                }
                .to_vec())
            }
            SetTarget => {
                if !who.privileged {
                    return Err(ErrorName::EACCES);
                }
                let s = strings(p, 2);
                if s.len() != 2 {
                    return Err(ErrorName::EINVAL);
                }
                let domid = path::atoi(s[0]) as u32;
                let target = path::atoi(s[1]) as u32;
                if !self.domains.contains_key(&domid) || !self.introduced(target) {
                    return Err(ErrorName::ENOENT);
                }
                self.targets.insert(domid, target);
                ok()
            }
            ResetWatches => {
                self.watches.remove_conn(conn);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.txs.clear();
                }
                ok()
            }
            Control => {
                if !who.privileged {
                    return Err(ErrorName::EACCES);
                }
                let s = strings(p, 1);
                match s.first() {
                    Some(&b"help") => Ok(CONTROL_HELP.to_vec()),
                    _ => Err(ErrorName::EINVAL),
                }
            }
            WatchEvent | Error | GetFeature | SetFeature | GetQuota | SetQuota => {
                Err(ErrorName::ENOSYS)
            }
        }
    }

    fn introduce_inner(
        &mut self,
        domid: DomId,
        gfn: u64,
        port: Port,
        hooks: &mut dyn DomainHooks,
        out: &mut Vec<Outgoing>,
    ) -> Res<ConnId> {
        let gconn = self.connect(domid);
        if let Err(e) = hooks.introduce(gconn, domid, gfn, port) {
            self.disconnect(gconn);
            return Err(e);
        }
        tracing::info!(%domid, gfn, port = port.0, "domain introduced");
        self.domains.insert(
            u32::from(domid.0),
            Domain {
                conn: gconn,
                id: domid,
            },
        );
        self.fire_special("@introduceDomain", out);
        Ok(gconn)
    }

    /// Plays the toolstack for a new domain (D19): creates `/local/domain/<domid>` owned
    /// by it, with `name`, `domid` and an empty `data/`, then introduces it as INTRODUCE
    /// does (`hooks` reach its ring; `@introduceDomain` fires). Returns its connection.
    ///
    /// # Errors
    ///
    /// `EEXIST` if it is already introduced, or the error of `hooks`.
    pub fn introduce_domain(
        &mut self,
        dom: DomId,
        name: &str,
        hooks: &mut dyn DomainHooks,
        out: &mut Vec<Outgoing>,
    ) -> Result<ConnId, ErrorName> {
        let domid = u32::from(dom.0);
        if domid == 0 || self.domains.contains_key(&domid) {
            return Err(ErrorName::EEXIST);
        }
        let dom0 = self.who(0);
        let q = self.config.quotas.clone();
        let home = path::home(domid);
        let mut changes = Vec::new();
        if self.tree.get(&home).is_none() {
            changes.push(create_node(&mut self.tree, &home, Vec::new(), dom0, &q)?);
        }
        self.tree
            .set_perms(&home, vec![Perm::new(Access::None, domid)]);
        let id = domid.to_string();
        for (p, v) in [
            ("name", name.as_bytes()),
            ("domid", id.as_bytes()),
            ("data", b""),
        ] {
            changes.extend(write_node(
                &mut self.tree,
                &format!("{home}/{p}"),
                v.to_vec(),
                dom0,
                &q,
            )?);
        }
        self.fire(&changes, out);
        self.introduce_inner(dom, 0, Port(0), hooks, out)
    }

    /// Who may see the event of a node a transaction changed (C's `watch_permitted`
    /// with the perms of the first access and the node as committed).
    fn commit_vis(&self, p: &str, first: Option<Vec<Perm>>) -> Vis {
        match self.tree.get(p) {
            Some(n) => Vis {
                perms: n.perms.to_vec(),
                old: first,
                parent: self.tree.get(path::parent(p)).map(|n| n.perms.to_vec()),
                hidden: false,
            },
            None => Vis {
                hidden: first.is_none(),
                perms: first.unwrap_or_default(),
                old: None,
                parent: None,
            },
        }
    }

    /// Canonical, valid node path from a request string.
    fn node_path(&self, who: Who, raw: &[u8], allow_special: bool) -> Res<String> {
        let (p, _) = path::canonical(who.domid, as_str(raw)?);
        if !path::is_valid(&p, allow_special, self.config.quotas.path_max) {
            return Err(ErrorName::EINVAL);
        }
        Ok(p)
    }

    /// Runs `f` on the live tree (firing its changes now) or on transaction `tx` of
    /// `conn` (keeping them for the commit).
    fn with_view<R>(
        &mut self,
        conn: ConnId,
        tx: u32,
        out: &mut Vec<Outgoing>,
        f: impl FnOnce(&mut dyn View, ()) -> Res<(R, Vec<Change>)>,
    ) -> Res<R> {
        if tx == 0 {
            let (r, changes) = f(&mut self.tree, ())?;
            if !changes.is_empty() {
                self.fire(&changes, out);
            }
            return Ok(r);
        }
        let (node_limit, mem_limit) = self.tx_limits(conn, tx);
        let Store { tree, conns, .. } = self;
        let t = conns
            .get_mut(&conn)
            .and_then(|c| c.txs.get_mut(&tx))
            .ok_or(ErrorName::ENOENT)?;
        t.begin_request();
        let mut view = TxView::limited(tree, t, node_limit, mem_limit);
        let res = f(&mut view, ());
        if t.mem() > mem_limit {
            t.refuse(Refusal::Memory);
        }
        // Like C, a refused access fails the request with the quota's error (whatever
        // the request made of the node it could not see) and the transaction.
        match t.refused() {
            Some(Refusal::Nodes) => return Err(ErrorName::ENOSPC),
            Some(Refusal::Memory) => return Err(ErrorName::ENOMEM),
            None => {}
        }
        let (r, changes) = res?;
        t.record(changes);
        Ok(r)
    }

    /// The limits of transaction `tx` of `conn`: distinct nodes it may access (C's
    /// `transaction-nodes` quota) and bytes it may hold (what the connection's other
    /// transactions leave of the `memory` quota). Unlimited for privileged domains.
    fn tx_limits(&self, conn: ConnId, tx: u32) -> (usize, usize) {
        let Some(c) = self.conns.get(&conn) else {
            return (usize::MAX, usize::MAX);
        };
        if self.who(c.domid).privileged {
            return (usize::MAX, usize::MAX);
        }
        let q = &self.config.quotas;
        let others: usize = c
            .txs
            .iter()
            .filter(|(id, _)| **id != tx)
            .map(|(_, t)| t.mem())
            .sum();
        (
            q.transaction_nodes,
            q.memory_per_domain.saturating_sub(others),
        )
    }

    /// The node quota at the commit of a transaction that created nodes (C's
    /// `transaction_fix_domains`): `ENOSPC` if an unprivileged domain whose count it
    /// changes would own `nodes_per_domain` nodes or more with the transaction applied.
    /// Like C this allows one node fewer than outside transactions (where a domain may
    /// reach the quota), and checks before the conflicts (`EAGAIN`).
    fn check_node_quota(&self, t: &Transaction) -> Res<()> {
        let limit = self.config.quotas.nodes_per_domain;
        for (domid, delta) in t.owned_delta() {
            if self.who(domid).privileged {
                continue;
            }
            let live = i64::try_from(self.tree.owned(domid)).unwrap_or(i64::MAX);
            let after = usize::try_from(live.saturating_add(delta)).unwrap_or(0);
            if after >= limit {
                return Err(ErrorName::ENOSPC);
            }
        }
        Ok(())
    }

    fn set_perms(
        &mut self,
        conn: ConnId,
        who: Who,
        tx: u32,
        p: &[u8],
        out: &mut Vec<Outgoing>,
    ) -> Res<Vec<u8>> {
        let s = strings(p, usize::MAX);
        if s.len() < 2 {
            return Err(ErrorName::EINVAL);
        }
        let perms = s[1..]
            .iter()
            .map(|x| parse_perm(x))
            .collect::<Res<Vec<Perm>>>()?;
        let q = self.config.quotas.clone();
        if !who.privileged && perms.len() > q.perms_per_node {
            return Err(ErrorName::ENOSPC);
        }
        let raw = as_str(s[0])?;
        if raw.starts_with('@') {
            // C: an unknown special node, or one the caller does not own, is ENOENT.
            let cur = self.special_perms.get(raw).ok_or(ErrorName::ENOENT)?;
            if who.perm(cur) & (PERM_WRITE | PERM_OWNER) != PERM_WRITE | PERM_OWNER {
                return Err(ErrorName::ENOENT);
            }
            self.special_perms.insert(raw.to_owned(), perms);
            return Ok(b"OK\0".to_vec());
        }
        let path = self.node_path(who, s[0], false)?;
        self.with_view(conn, tx, out, |v, _| {
            if !check(v, &path, who, PERM_WRITE | PERM_OWNER)? {
                return Err(ErrorName::ENOENT);
            }
            let n = v.get(&path).ok_or(ErrorName::ENOENT)?;
            if !who.privileged && perms[0].domid != n.owner() {
                return Err(ErrorName::EPERM);
            }
            if !who.privileged {
                let size = n.record_size() - 8 * n.listed_len() + 8 * perms.len();
                if size >= q.entry_size {
                    return Err(ErrorName::ENOSPC);
                }
            }
            let old = n.perms.to_vec();
            let parent_perms = v.peek(path::parent(&path)).map(|n| n.perms.to_vec());
            v.set_perms(&path, perms.clone());
            Ok((
                b"OK\0".to_vec(),
                vec![Change::Node {
                    path: path.clone(),
                    perms,
                    old_perms: Some(old),
                    parent_perms,
                }],
            ))
        })
    }

    /// Releases domain `domid` (RELEASE, or the domain died): its connection goes, with
    /// its watches and transactions, the nodes it owns are deleted and `@releaseDomain`
    /// fires. Permission entries naming it grant nothing from then on, to a later domain
    /// with the same id either (they stay listed, as in C), and a stub domain whose
    /// target it was loses that relation. Events are appended to `out`. False if it was
    /// not introduced.
    pub fn release_domain(
        &mut self,
        domid: DomId,
        hooks: &mut dyn DomainHooks,
        out: &mut Vec<Outgoing>,
    ) -> bool {
        self.release_raw(u32::from(domid.0), hooks, out)
    }

    /// [`Store::release_domain`] with the domain id as the wire gives it.
    fn release_raw(
        &mut self,
        domid: u32,
        hooks: &mut dyn DomainHooks,
        out: &mut Vec<Outgoing>,
    ) -> bool {
        let Some(d) = self.domains.remove(&domid) else {
            return false;
        };
        tracing::info!(domid, "domain released");
        self.disconnect(d.conn);
        hooks.release(d.conn, d.id);
        // A stub domain whose target this was loses the target's rights: a later domain
        // with this id is not its target. (C 4.17 instead keeps a released target alive
        // while a stub refers to it: RELEASE is acknowledged, the domain stays
        // introduced until a second RELEASE.)
        self.targets.remove(&domid);
        self.targets.retain(|_, target| *target != domid);
        // Permission entries naming it grant nothing any more, in the tree and in every
        // transaction's copies (C 4.17 ignores entries naming a domain younger than the
        // node: `domain_adjust_node_perms`); they stay listed.
        self.tree.forget_domain(domid);
        for c in self.conns.values_mut() {
            for t in c.txs.values_mut() {
                t.forget_domain(domid);
            }
        }
        // C walks the tree from `/` in order and removes each node the domain owns
        // (with its subtree), firing watches as it goes; like C, not when it owns none
        // (a host's whole tree is no small walk).
        let mut changes = Vec::new();
        let owns = self.tree.owned(domid) > 0;
        let mut stack = if owns {
            vec!["/".to_string()]
        } else {
            Vec::new()
        };
        while let Some(cur) = stack.pop() {
            let Some(n) = self.tree.get(&cur) else {
                continue;
            };
            if n.owner() == domid && cur != "/" {
                let parent_perms = self.tree.get(path::parent(&cur)).map(|n| n.perms.to_vec());
                let mut removed = Vec::new();
                self.tree.remove(&cur, &mut removed);
                changes.push(Change::Removed {
                    removed,
                    parent_perms,
                });
                continue;
            }
            stack.extend(n.children().iter().rev().map(|c| path::join(&cur, c)));
        }
        // The special nodes forget the domain (owner back to dom0, ACL entry dropped).
        for perms in self.special_perms.values_mut() {
            if perms[0].domid == domid {
                perms[0].domid = 0;
            }
            let owner = perms[0];
            let mut rest: Vec<Perm> = perms[1..]
                .iter()
                .copied()
                .filter(|p| p.domid != domid)
                .collect();
            rest.insert(0, owner);
            *perms = rest;
        }
        self.fire(&changes, out);
        self.fire_special("@releaseDomain", out);
        true
    }
}

/// C's `get_node` + `errno_from_parents`: `Ok(true)` if the node exists and `who` has
/// all rights in `need`; `Ok(false)` if it is missing and the nearest existing ancestor
/// grants any of them (ENOENT); `EACCES` otherwise.
fn check(v: &mut dyn View, p: &str, who: Who, need: u8) -> Res<bool> {
    let exists = match v.get(p) {
        Some(n) if who.perm(n.perms.as_slice(&mut Perms::buf())) & need == need => return Ok(true),
        Some(_) => true,
        None => false,
    };
    // Like C, ask the nearest existing ancestor in both failure cases (in a
    // transaction this reads, and so records, the ancestors).
    let mut cur = p;
    while cur != "/" {
        cur = path::parent(cur);
        if let Some(n) = v.get(cur) {
            let allowed = who.perm(n.perms.as_slice(&mut Perms::buf())) & need != 0;
            return if allowed && !exists {
                Ok(false)
            } else {
                Err(ErrorName::EACCES)
            };
        }
    }
    if exists {
        Err(ErrorName::EACCES)
    } else {
        Ok(false)
    }
}

/// False if a child listed in the subtree does not exist: possible in a transaction
/// whose copy of a node predates another connection's changes (C answers RM with `EIO`
/// then, as when the parent's copy does not list the node).
fn subtree_complete(v: &mut dyn View, p: &str) -> bool {
    let mut stack = vec![p.to_owned()];
    while let Some(cur) = stack.pop() {
        let Some(n) = v.get(&cur) else {
            return false;
        };
        let kids: Vec<String> = n.children().iter().map(|c| path::join(&cur, c)).collect();
        stack.extend(kids);
    }
    true
}

fn write_node(
    v: &mut dyn View,
    p: &str,
    value: Vec<u8>,
    who: Who,
    q: &super::quota::Quotas,
) -> Res<Vec<Change>> {
    if check(v, p, who, PERM_WRITE)? {
        let n = v.get(p).ok_or(ErrorName::ENOENT)?;
        if !who.privileged && n.record_size() - n.value().len() + value.len() >= q.entry_size {
            return Err(ErrorName::ENOSPC);
        }
        let perms = n.perms.to_vec();
        let parent_perms = v.peek(path::parent(p)).map(|n| n.perms.to_vec());
        v.set_value(p, value);
        return Ok(vec![Change::Node {
            path: p.to_owned(),
            perms,
            old_perms: None,
            parent_perms,
        }]);
    }
    Ok(vec![create_node(v, p, value, who, q)?])
}

/// Creates `p` and its missing ancestors (C's `create_node`): they inherit the nearest
/// existing ancestor's permissions, and an unprivileged creator becomes their owner.
fn create_node(
    v: &mut dyn View,
    p: &str,
    value: Vec<u8>,
    who: Who,
    q: &super::quota::Quotas,
) -> Res<Change> {
    let mut missing = vec![p.to_owned()];
    let mut cur = path::parent(p);
    // The ancestor's perms, ignored entries included (C copies them with their flag).
    let (mut perms, mut listed, parent_size) = loop {
        if let Some(n) = v.get(cur) {
            break (n.perms.to_vec(), n.listed(), n.record_size());
        }
        missing.push(cur.to_owned());
        if cur == "/" {
            return Err(ErrorName::ENOENT);
        }
        cur = path::parent(cur);
    };
    v.creating();
    if !who.privileged {
        perms[0].domid = who.domid;
        if let Some(l) = listed.as_mut() {
            l[0].domid = who.domid;
        }
        if v.quota_count(who.domid) + missing.len() > q.nodes_per_domain {
            return Err(ErrorName::ENOSPC);
        }
        let top = missing.last().map_or("", |s| path::basename(s));
        let perms_size = 8 * listed.as_ref().map_or(perms.len(), |l| l.len());
        let leaf = 24 + perms_size + value.len();
        // Like C, which writes (and so size-checks) every node it creates: each missing
        // ancestor's record lists the next missing node as its only child.
        let ancestor = missing[..missing.len() - 1]
            .iter()
            .map(|m| 24 + perms_size + path::basename(m).len() + 1)
            .max()
            .unwrap_or(0);
        if leaf >= q.entry_size
            || ancestor >= q.entry_size
            || parent_size + top.len() + 1 >= q.entry_size
        {
            return Err(ErrorName::ENOSPC);
        }
    }
    let mut value = Some(value);
    for m in missing.iter().rev() {
        let val = if m == p {
            value.take().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut node = Node::new(val, Vec::new());
        node.set_perms_listed(&perms, listed.clone());
        v.create(m, node);
    }
    let parent_perms = v.peek(path::parent(p)).map(|n| n.perms.to_vec());
    Ok(Change::Node {
        path: p.to_owned(),
        perms,
        old_perms: None,
        parent_perms,
    })
}

/// C's DIRECTORY_PART reply: generation, then the children string from byte `off`, as
/// much as fits in a payload; the last chunk ends with an extra NUL.
fn directory_part(n: &Node, off: usize) -> Vec<u8> {
    let all = n.children().as_bytes();
    let mut r = format!("{}\0", n.generation).into_bytes();
    if off >= all.len() {
        r.push(0);
        return r;
    }
    let maxlen = PAYLOAD_MAX - r.len() - 1;
    let mut len = 0;
    let rest = &all[off..];
    while len < rest.len() {
        let i = rest[len..]
            .iter()
            .position(|&b| b == 0)
            .map_or(rest.len() - len, |k| k + 1);
        if len + i > maxlen {
            break;
        }
        len += i;
    }
    r.extend_from_slice(&rest[..len]);
    if off + len == all.len() {
        r.push(0);
    }
    r
}
