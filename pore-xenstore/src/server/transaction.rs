//! Transactions with C xenstored's conflict rule: every node the transaction read,
//! wrote, created or deleted (parents whose child list it changed, and nodes it found
//! missing, included) is remembered with the generation it had; at commit, any of them
//! changed by someone else means `EAGAIN` (behaviours.md §8).
//!
//! Like C, the transaction keeps a copy of each node at its first access: later reads in
//! the transaction see that copy (or its own changes), not what others did since.

use std::collections::HashMap;

use crate::perms::Perm;

use super::path;
use super::tree::{Node, Tree, View};
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
    /// Watch events to fire at commit, in order.
    pub(crate) changes: Vec<Change>,
}

/// Why a commit failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Conflict;

impl Transaction {
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
        // One event per changed node (C's queue_watches): exact only if every change of
        // it was (a removed descendant), in first-access order.
        let mut fire: HashMap<&str, bool> = HashMap::new();
        fn mark<'a>(fire: &mut HashMap<&'a str, bool>, p: &'a str, exact: bool) {
            let e = fire.entry(p).or_insert(exact);
            *e &= exact;
        }
        for ch in &self.changes {
            match ch {
                Change::Node { path, .. } => mark(&mut fire, path.as_str(), false),
                Change::Removed { removed, .. } => {
                    for (i, (p, _)) in removed.iter().enumerate() {
                        mark(&mut fire, p.as_str(), i + 1 != removed.len());
                    }
                }
                Change::Commit { .. } => {}
            }
        }
        Ok(self
            .order
            .iter()
            .filter_map(|(p, perms)| {
                fire.get(p.as_str()).map(|&exact| Committed {
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

/// A transaction's view of the tree: its own changes over the live tree.
pub(crate) struct TxView<'a> {
    pub(crate) tree: &'a Tree,
    pub(crate) tx: &'a mut Transaction,
}

impl TxView<'_> {
    /// Records the first access of `p`: its generation and a copy.
    fn touch(&mut self, p: &str) {
        if !self.tx.accessed.contains_key(p) {
            let n = self.tree.get(p).cloned();
            self.tx
                .accessed
                .insert(p.to_owned(), n.as_ref().map(|n| n.generation));
            self.tx
                .order
                .push((p.to_owned(), n.as_ref().map(|n| n.perms.clone())));
            self.tx.snapshot.insert(p.to_owned(), n);
        }
    }

    /// The node, copied into the overlay for modification.
    fn node_mut(&mut self, p: &str) -> Option<&mut Node> {
        self.touch(p);
        if !self.tx.overlay.contains_key(p) {
            let n = self.tx.snapshot.remove(p).flatten();
            self.tx.overlay.insert(p.to_owned(), n);
        }
        self.tx.overlay.get_mut(p).and_then(Option::as_mut)
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
        self.touch(p);
        match self.tx.overlay.get(p) {
            Some(n) => n.as_ref(),
            None => self.tx.snapshot.get(p).and_then(Option::as_ref),
        }
    }

    fn set_value(&mut self, p: &str, value: Vec<u8>) {
        if let Some(n) = self.node_mut(p) {
            n.value = value;
        }
    }

    fn set_perms(&mut self, p: &str, perms: Vec<Perm>) {
        let mut owners = None;
        if let Some(n) = self.node_mut(p) {
            let old = n.owner();
            n.perms = perms;
            owners = Some((old, n.owner()));
        }
        if let Some((old, new)) = owners {
            if old != new {
                self.delta(old, -1);
                self.delta(new, 1);
            }
        }
    }

    fn create(&mut self, p: &str, node: Node) {
        let base = path::basename(p).to_owned();
        if let Some(parent) = self.node_mut(path::parent(p)) {
            parent.children.push(base);
        }
        self.touch(p);
        self.tx.snapshot.remove(p);
        self.delta(node.owner(), 1);
        self.tx.overlay.insert(p.to_owned(), Some(node));
    }

    fn remove(&mut self, p: &str, removed: &mut Vec<(String, Vec<Perm>)>) {
        if p != "/" {
            let base = path::basename(p).to_owned();
            if let Some(parent) = self.node_mut(path::parent(p)) {
                if let Some(i) = parent.children.iter().position(|c| *c == base) {
                    parent.children.remove(i);
                }
            }
        }
        let mut stack = vec![(p.to_owned(), false)];
        while let Some((cur, expanded)) = stack.pop() {
            let Some(node) = self.get(&cur) else {
                continue;
            };
            if expanded {
                let (owner, perms) = (node.owner(), node.perms.clone());
                self.tx.snapshot.remove(&cur);
                self.tx.overlay.insert(cur.clone(), None);
                self.delta(owner, -1);
                removed.push((cur, perms));
                continue;
            }
            let kids: Vec<String> = node
                .children
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
        f(&mut TxView {
            tree: &t,
            tx: &mut tx,
        });
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
            let mut v = TxView {
                tree: &t,
                tx: &mut tx,
            };
            v.create(
                "/t/new",
                Node::new(b"n".to_vec(), vec![Perm::new(Access::None, 7)]),
            );
            v.remove("/t/x", &mut vec![]);
            assert_eq!(v.get("/t/new").unwrap().value, b"n");
            assert!(v.get("/t/x").is_none());
            assert_eq!(v.owned(7), 1);
        }
        assert!(t.get("/t/new").is_none() && t.get("/t/x").is_some());
        tx.commit(&mut t).unwrap();
        assert_eq!(t.get("/t/new").unwrap().value, b"n");
        assert!(t.get("/t/x").is_none());
        assert_eq!(t.get("/t").unwrap().children, ["y", "new"]);
        assert_eq!(t.owned(7), 1);
    }
}
