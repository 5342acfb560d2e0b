//! Transactions with C xenstored's conflict rule: every node the transaction read,
//! wrote, created or deleted (parents whose child list it changed, and nodes it found
//! missing, included) is remembered with the generation it had; at commit, any of them
//! changed by someone else means `EAGAIN` (`docs/xenstored-behaviours.md` §8).
//!
//! Like C, the transaction keeps a copy of each node at its first access: later reads in
//! the transaction see that copy (or its own changes), not what others did since.

use std::collections::HashMap;

use crate::perms::Perm;

use super::path;
use super::tree::{strip_acl, Node, Tree, View};
use super::watch::Change;

/// An open transaction.
#[derive(Debug, Default)]
pub(crate) struct Transaction {
    /// First-seen generation of each node accessed (`None`: missing).
    accessed: HashMap<String, Option<u64>>,
    /// Nodes in the order of their first access, with their perms then (if they
    /// existed): C fires a committed transaction's watches in this order.
    order: Vec<(String, Option<Vec<Perm>>)>,
    /// Nodes as first seen (`None`: missing), for nodes not modified since.
    snapshot: HashMap<String, Option<Node>>,
    /// Nodes as this transaction left them (`None`: deleted).
    overlay: HashMap<String, Option<Node>>,
    /// Change in the count of nodes owned per domain.
    owned_delta: HashMap<u32, i64>,
    /// Nodes whose watches fire at commit (C's `queue_watches`), one entry per node:
    /// true if only watches on the node itself fire (every change of it was the
    /// removal of a descendant).
    fire: HashMap<String, bool>,
    /// Approximate bytes this transaction holds (paths, node copies).
    mem: usize,
    /// A request was refused for a quota (C's `trans->fail`): commit fails (`ENOMEM`).
    failed: bool,
    /// A node creation was attempted (C's `node_created`): the commit checks the node
    /// quota.
    created: bool,
    /// Why the current request was refused, if it was.
    refused: Option<Refusal>,
}

/// Why a transaction refused to access one more node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The transaction accessed as many nodes as allowed (C's `transaction-nodes`).
    Nodes,
    /// The connection's transactions hold as much memory as allowed (C's `memory`).
    Memory,
}

/// Bytes counted per accessed node besides its path and copy (map entries).
const NODE_OVERHEAD: usize = 128;

/// Why a commit failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Conflict;

impl Transaction {
    /// Approximate bytes this transaction holds.
    pub(crate) fn mem(&self) -> usize {
        self.mem
    }

    /// True once a request was refused for a quota: the commit will fail.
    pub(crate) fn failed(&self) -> bool {
        self.failed
    }

    /// True if a node creation was attempted in this transaction.
    pub(crate) fn created(&self) -> bool {
        self.created
    }

    /// The change this transaction makes to the count of nodes each domain owns (every
    /// domain whose count it touched, even back to zero: C's `changed_domains`).
    pub(crate) fn owned_delta(&self) -> impl Iterator<Item = (u32, i64)> + '_ {
        self.owned_delta.iter().map(|(&d, &n)| (d, n))
    }

    /// Starts a request: forgets the refusal of the previous one.
    pub(crate) fn begin_request(&mut self) {
        self.refused = None;
    }

    /// Why the current request was refused (a quota), if it was.
    pub(crate) fn refused(&self) -> Option<Refusal> {
        self.refused
    }

    /// Marks the current request refused and the transaction failed.
    pub(crate) fn refuse(&mut self, why: Refusal) {
        self.refused.get_or_insert(why);
        self.failed = true;
    }

    /// Remembers the watch events of one request's changes for the commit, one entry
    /// per node (exact only if every change of it was).
    pub(crate) fn record(&mut self, changes: Vec<Change>) {
        for ch in changes {
            match ch {
                Change::Node { path, .. } => self.mark(path, false),
                Change::Removed { removed, .. } => {
                    let n = removed.len();
                    for (i, (p, _)) in removed.into_iter().enumerate() {
                        self.mark(p, i + 1 != n);
                    }
                }
                Change::Commit { .. } => {}
            }
        }
    }

    fn mark(&mut self, p: String, exact: bool) {
        match self.fire.get_mut(&p) {
            Some(e) => *e &= exact,
            None => {
                self.mem = self.mem.saturating_add(p.len() + NODE_OVERHEAD);
                self.fire.insert(p, exact);
            }
        }
    }

    /// Number of distinct nodes this transaction accessed.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn nodes(&self) -> usize {
        self.accessed.len()
    }

    /// Number of nodes whose watches fire at commit.
    #[cfg(test)]
    pub(crate) fn pending_events(&self) -> usize {
        self.fire.len()
    }

    /// Bytes this transaction really holds, counted from its maps (paths, node records,
    /// perms copies): the fuzz targets check that [`Transaction::mem`] does not
    /// undercount it.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn held_bytes(&self) -> usize {
        let node = |n: &Option<Node>| n.as_ref().map_or(0, Node::record_size);
        let accessed: usize = self.accessed.keys().map(String::len).sum();
        let order: usize = self
            .order
            .iter()
            .map(|(p, perms)| p.len() + 8 * perms.as_ref().map_or(0, Vec::len))
            .sum();
        let snapshot: usize = self.snapshot.iter().map(|(p, n)| p.len() + node(n)).sum();
        let overlay: usize = self.overlay.iter().map(|(p, n)| p.len() + node(n)).sum();
        let fire: usize = self.fire.keys().map(String::len).sum();
        accessed + order + snapshot + overlay + fire
    }

    /// Ignores the permission entries naming `domid` (released) in every node copy this
    /// transaction holds, as in the tree: its commit must not bring them back.
    pub(crate) fn forget_domain(&mut self, domid: u32) {
        let copies = self.snapshot.values_mut().chain(self.overlay.values_mut());
        for n in copies.flatten() {
            n.forget_domain(domid);
        }
        for perms in self.order.iter_mut().filter_map(|(_, p)| p.as_mut()) {
            strip_acl(perms, domid);
        }
    }

    /// Applies the transaction to `tree` if nothing it touched changed meanwhile.
    pub(crate) fn commit(self, tree: &mut Tree) -> Result<Vec<Committed>, Conflict> {
        for (p, g) in &self.accessed {
            if tree.generation_of(p) != *g {
                return Err(Conflict);
            }
        }
        // Parents before children so that put_raw sees a consistent order; deletions
        // carry their whole content, so the order does not change the result.
        let mut entries: Vec<(String, Option<Node>)> = self.overlay.into_iter().collect();
        entries.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(&b.0)));
        for (p, n) in entries {
            tree.put_raw(&p, n);
        }
        Ok(self
            .order
            .iter()
            .filter_map(|(p, perms)| {
                self.fire.get(p.as_str()).map(|&exact| Committed {
                    path: p.clone(),
                    exact,
                    first_perms: perms.clone(),
                })
            })
            .collect())
    }
}

/// A node changed by a committed transaction, to fire watches for.
#[derive(Debug)]
pub(crate) struct Committed {
    pub(crate) path: String,
    /// Only watches on the node itself (a removed descendant).
    pub(crate) exact: bool,
    /// Its perms when the transaction first accessed it (if it existed).
    pub(crate) first_perms: Option<Vec<Perm>>,
}

/// A transaction's view of the tree: its own changes over the live tree. Accessing a
/// node beyond its limits refuses the access (the node reads as missing) and records why
/// in the transaction.
pub(crate) struct TxView<'a> {
    tree: &'a Tree,
    tx: &'a mut Transaction,
    /// Distinct nodes the transaction may access.
    node_limit: usize,
    /// Bytes the transaction may hold.
    mem_limit: usize,
}

impl<'a> TxView<'a> {
    /// A view without limits.
    #[cfg(test)]
    pub(crate) fn new(tree: &'a Tree, tx: &'a mut Transaction) -> Self {
        Self::limited(tree, tx, usize::MAX, usize::MAX)
    }

    /// A view allowing `node_limit` distinct nodes and `mem_limit` bytes in all.
    pub(crate) fn limited(
        tree: &'a Tree,
        tx: &'a mut Transaction,
        node_limit: usize,
        mem_limit: usize,
    ) -> Self {
        TxView {
            tree,
            tx,
            node_limit,
            mem_limit,
        }
    }

    /// Records the first access of `p`: its generation and a copy. False if a limit
    /// refuses it (C's `access_node` quota check).
    fn touch(&mut self, p: &str) -> bool {
        if self.tx.accessed.contains_key(p) {
            return true;
        }
        if self.tx.accessed.len() >= self.node_limit {
            self.tx.refuse(Refusal::Nodes);
            return false;
        }
        let n = self.tree.get(p).cloned();
        let cost = NODE_OVERHEAD + 3 * p.len() + n.as_ref().map_or(0, Node::record_size);
        if self.tx.mem.saturating_add(cost) > self.mem_limit {
            self.tx.refuse(Refusal::Memory);
            return false;
        }
        self.tx.mem += cost;
        self.tx
            .accessed
            .insert(p.to_owned(), n.as_ref().map(|n| n.generation));
        self.tx
            .order
            .push((p.to_owned(), n.as_ref().map(|n| n.perms.to_vec())));
        self.tx.snapshot.insert(p.to_owned(), n);
        true
    }

    /// The node, copied into the overlay for modification.
    fn node_mut(&mut self, p: &str) -> Option<&mut Node> {
        if !self.touch(p) {
            return None;
        }
        if !self.tx.overlay.contains_key(p) {
            let n = self.tx.snapshot.remove(p).flatten();
            self.tx.overlay.insert(p.to_owned(), n);
        }
        self.tx.overlay.get_mut(p).and_then(Option::as_mut)
    }

    /// True once the current request was refused an access: like C (which accesses
    /// every node of a change before writing any), it then changes nothing more.
    fn blocked(&self) -> bool {
        self.tx.refused.is_some()
    }

    /// Adjusts the byte count for a node copy that grew by `new - old` bytes.
    fn resize(&mut self, old: usize, new: usize) {
        self.tx.mem = self.tx.mem.saturating_sub(old).saturating_add(new);
    }

    fn delta(&mut self, owner: u32, d: i64) {
        *self.tx.owned_delta.entry(owner).or_default() += d;
    }
}

impl View for TxView<'_> {
    fn peek(&self, p: &str) -> Option<&Node> {
        match self.tx.overlay.get(p) {
            Some(n) => n.as_ref(),
            None => match self.tx.snapshot.get(p) {
                Some(n) => n.as_ref(),
                None => self.tree.get(p),
            },
        }
    }

    fn get(&mut self, p: &str) -> Option<&Node> {
        if !self.touch(p) {
            return None;
        }
        match self.tx.overlay.get(p) {
            Some(n) => n.as_ref(),
            None => self.tx.snapshot.get(p).and_then(Option::as_ref),
        }
    }

    fn set_value(&mut self, p: &str, value: Vec<u8>) {
        if self.blocked() {
            return;
        }
        let mut sizes = None;
        if let Some(n) = self.node_mut(p) {
            sizes = Some((n.value().len(), value.len()));
            n.set_value(&value);
        }
        if let Some((old, new)) = sizes {
            self.resize(old, new);
        }
    }

    fn set_perms(&mut self, p: &str, perms: Vec<Perm>) {
        if self.blocked() {
            return;
        }
        let mut owners = None;
        let mut sizes = None;
        if let Some(n) = self.node_mut(p) {
            let old = n.owner();
            sizes = Some((8 * n.listed_len(), 8 * perms.len()));
            n.set_perms(&perms);
            owners = Some((old, n.owner()));
        }
        if let Some((old, new)) = sizes {
            self.resize(old, new);
        }
        if let Some((old, new)) = owners {
            if old != new {
                self.delta(old, -1);
                self.delta(new, 1);
            }
        }
    }

    fn create(&mut self, p: &str, node: Node) {
        // The new node first (C writes it before its parent): refused, nothing changes.
        if self.blocked() || !self.touch(p) {
            return;
        }
        let base = path::basename(p);
        let grow = base.len() + 1;
        if let Some(parent) = self.node_mut(path::parent(p)) {
            parent.push_child(base);
            self.resize(0, grow);
        }
        if self.blocked() {
            return;
        }
        self.tx.snapshot.remove(p);
        self.resize(0, node.record_size());
        self.delta(node.owner(), 1);
        self.tx.overlay.insert(p.to_owned(), Some(node));
    }

    fn remove(&mut self, p: &str, removed: &mut Vec<(String, Vec<Perm>)>) {
        if self.blocked() {
            return;
        }
        if p != "/" {
            let base = path::basename(p).to_owned();
            if let Some(parent) = self.node_mut(path::parent(p)) {
                parent.remove_child(&base);
            }
        }
        let mut stack = vec![(p.to_owned(), false)];
        while let Some((cur, expanded)) = stack.pop() {
            let Some(node) = self.get(&cur) else {
                continue;
            };
            if expanded {
                let (owner, perms) = (node.owner(), node.perms.to_vec());
                self.tx.snapshot.remove(&cur);
                self.tx.overlay.insert(cur.clone(), None);
                self.delta(owner, -1);
                removed.push((cur, perms));
                continue;
            }
            let kids: Vec<String> = node
                .children()
                .iter()
                .rev()
                .map(|c| path::join(&cur, c))
                .collect();
            stack.push((cur, true));
            stack.extend(kids.into_iter().map(|k| (k, false)));
        }
    }

    fn owned(&self, domid: u32) -> usize {
        let base = self.tree.owned(domid) as i64;
        let d = self.tx.owned_delta.get(&domid).copied().unwrap_or(0);
        usize::try_from(base + d).unwrap_or(0)
    }

    fn quota_count(&self, domid: u32) -> usize {
        self.tree.owned(domid)
    }

    fn creating(&mut self) {
        self.tx.created = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perms::Access;

    fn n0() -> Vec<Perm> {
        vec![Perm::new(Access::None, 0)]
    }

    fn setup() -> Tree {
        let mut t = Tree::new();
        t.create("/t", Node::new(vec![], n0()));
        t.create("/t/x", Node::new(b"1".to_vec(), n0()));
        t.create("/t/y", Node::new(b"1".to_vec(), n0()));
        t
    }

    /// Runs `f` in a transaction, then `g` on the live tree, then commits.
    fn conflict(f: impl FnOnce(&mut TxView<'_>), g: impl FnOnce(&mut Tree)) -> bool {
        let mut t = setup();
        let mut tx = Transaction::default();
        f(&mut TxView::new(&t, &mut tx));
        g(&mut t);
        tx.commit(&mut t).is_err()
    }

    #[test]
    fn conflict_table_of_c() {
        let nothing = |_: &mut Tree| {};
        // wrote X (blind) / X changed
        assert!(conflict(
            |v| v.set_value("/t/x", b"2".to_vec()),
            |t| t.set_value("/t/x", b"3".to_vec())
        ));
        // wrote X / Y changed
        assert!(!conflict(
            |v| v.set_value("/t/x", b"2".to_vec()),
            |t| t.set_value("/t/y", b"3".to_vec())
        ));
        // read X only / X changed
        assert!(conflict(
            |v| {
                v.get("/t/x");
            },
            |t| t.set_value("/t/x", b"3".to_vec())
        ));
        // DIRECTORY /t, wrote Y / created /t/z
        assert!(conflict(
            |v| {
                v.get("/t");
                v.set_value("/t/y", b"2".to_vec());
            },
            |t| t.create("/t/z", Node::new(vec![], n0()))
        ));
        // created /t/new / created sibling
        assert!(conflict(
            |v| v.create("/t/new", Node::new(vec![], n0())),
            |t| t.create("/t/other", Node::new(vec![], n0()))
        ));
        // wrote X / X rewritten with the same value
        assert!(conflict(
            |v| v.set_value("/t/x", b"2".to_vec()),
            |t| t.set_value("/t/x", b"1".to_vec())
        ));
        // rm X / X changed
        assert!(conflict(
            |v| v.remove("/t/x", &mut vec![]),
            |t| t.set_value("/t/x", b"3".to_vec())
        ));
        // nothing / X changed
        assert!(!conflict(|_| {}, |t| t.set_value("/t/x", b"3".to_vec())));
        // read missing /t/q / created /t/q
        assert!(conflict(
            |v| {
                v.get("/t/q");
            },
            |t| t.create("/t/q", Node::new(vec![], n0()))
        ));
        // GET_PERMS X / SET_PERMS X
        assert!(conflict(
            |v| {
                v.get("/t/x");
            },
            |t| t.set_perms("/t/x", vec![Perm::new(Access::Read, 0)])
        ));
        assert!(!conflict(|v| v.set_value("/t/x", b"2".to_vec()), nothing));
    }

    #[test]
    fn commit_applies_and_isolates() {
        let mut t = setup();
        let mut tx = Transaction::default();
        {
            let mut v = TxView::new(&t, &mut tx);
            v.create(
                "/t/new",
                Node::new(b"n".to_vec(), vec![Perm::new(Access::None, 7)]),
            );
            v.remove("/t/x", &mut vec![]);
            assert_eq!(v.get("/t/new").unwrap().value(), b"n");
            assert!(v.get("/t/x").is_none());
            assert_eq!(v.owned(7), 1);
        }
        assert!(t.get("/t/new").is_none() && t.get("/t/x").is_some());
        tx.commit(&mut t).unwrap();
        assert_eq!(t.get("/t/new").unwrap().value(), b"n");
        assert!(t.get("/t/x").is_none());
        assert_eq!(
            t.get("/t").unwrap().children().iter().collect::<Vec<_>>(),
            ["y", "new"]
        );
        assert_eq!(t.owned(7), 1);
    }
}
