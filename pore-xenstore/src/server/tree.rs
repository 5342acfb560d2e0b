//! The node tree: values, permissions, children in creation order, generations, and the
//! count of nodes each domain owns. [`View`] is how request handlers see it, directly
//! or through a transaction (see `transaction.rs`).

use std::collections::HashMap;

use crate::perms::{Access, Perm};

use super::path;

/// The permissions of a node: up to two entries (nearly every node: an owner, maybe one
/// ACL entry) without an allocation of their own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Perms {
    /// `len` (at most 2) entries in place.
    Inline(u8, [Perm; 2]),
    /// More entries.
    Heap(Box<[Perm]>),
}

impl Perms {
    const FILLER: Perm = Perm {
        domid: 0,
        access: Access::None,
    };
}

impl From<&[Perm]> for Perms {
    fn from(p: &[Perm]) -> Self {
        match *p {
            [] => Perms::Inline(0, [Self::FILLER; 2]),
            [a] => Perms::Inline(1, [a, Self::FILLER]),
            [a, b] => Perms::Inline(2, [a, b]),
            _ => Perms::Heap(p.into()),
        }
    }
}

impl From<Vec<Perm>> for Perms {
    fn from(p: Vec<Perm>) -> Self {
        Perms::from(&p[..])
    }
}

impl std::ops::Deref for Perms {
    type Target = [Perm];
    fn deref(&self) -> &[Perm] {
        match self {
            Perms::Inline(n, a) => &a[..usize::from(*n)],
            Perms::Heap(b) => b,
        }
    }
}

impl std::ops::DerefMut for Perms {
    fn deref_mut(&mut self) -> &mut [Perm] {
        match self {
            Perms::Inline(n, a) => &mut a[..usize::from(*n)],
            Perms::Heap(b) => b,
        }
    }
}

impl PartialEq<[Perm]> for Perms {
    fn eq(&self, other: &[Perm]) -> bool {
        **self == *other
    }
}

impl<const N: usize> PartialEq<[Perm; N]> for Perms {
    fn eq(&self, other: &[Perm; N]) -> bool {
        **self == other[..]
    }
}

/// The child names of a node in creation order (C's order), each followed by a NUL: what
/// DIRECTORY answers, as C keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Children(Box<str>);

impl Children {
    /// The names in order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &str> + '_ {
        self.0
            .strip_suffix('\0')
            .into_iter()
            .flat_map(|s| s.split('\0'))
    }

    /// `name\0` for each child.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Appends a child.
    pub(crate) fn push(&mut self, name: &str) {
        let mut s = String::with_capacity(self.0.len() + name.len() + 1);
        s.push_str(&self.0);
        s.push_str(name);
        s.push('\0');
        self.0 = s.into_boxed_str();
    }

    /// Removes the first child called `name`; false if there is none.
    pub(crate) fn remove(&mut self, name: &str) -> bool {
        let mut off = 0;
        let mut found = None;
        for c in self.iter() {
            if c == name {
                found = Some(off);
                break;
            }
            off += c.len() + 1;
        }
        let Some(off) = found else {
            return false;
        };
        let mut s = String::with_capacity(self.0.len() - name.len() - 1);
        s.push_str(&self.0[..off]);
        s.push_str(&self.0[off + name.len() + 1..]);
        self.0 = s.into_boxed_str();
        true
    }

    /// True if a child is called `name`.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.iter().any(|c| c == name)
    }
}

/// One node.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) value: Box<[u8]>,
    /// Never empty: the first entry is the owner.
    pub(crate) perms: Perms,
    /// Child names in creation order (C's order).
    pub(crate) children: Children,
    /// Changes whenever the node changes (value, perms, child list); 0 never occurs.
    pub(crate) generation: u64,
    /// The permissions as set, when `perms` lacks some of them: an entry naming a
    /// domain that was released since is ignored (C 4.17's `XS_PERM_IGNORE`), so that a
    /// later domain with the same id does not inherit it (XSA-322), yet GET_PERMS still
    /// lists it and the record size still counts it, as in C.
    pub(crate) listed: Option<Box<[Perm]>>,
}

impl Node {
    pub(crate) fn new(value: Vec<u8>, perms: impl Into<Perms>) -> Self {
        Self {
            value: value.into_boxed_slice(),
            perms: perms.into(),
            children: Children::default(),
            generation: 0,
            listed: None,
        }
    }

    /// The permissions as set (what GET_PERMS lists), ignored entries included.
    pub(crate) fn listed_perms(&self) -> &[Perm] {
        self.listed.as_deref().unwrap_or(&self.perms)
    }

    /// Ignores the entries after the owner that name `domid` (released): they stay
    /// listed but grant nothing. The owner entry is left alone, as in C.
    pub(crate) fn forget_domain(&mut self, domid: u32) {
        if !self.perms.iter().skip(1).any(|p| p.domid == domid) {
            return;
        }
        if self.listed.is_none() {
            self.listed = Some(self.perms.to_vec().into_boxed_slice());
        }
        let mut v = self.perms.to_vec();
        strip_acl(&mut v, domid);
        self.perms = v.into();
    }

    pub(crate) fn owner(&self) -> u32 {
        self.perms.first().map_or(0, |p| p.domid)
    }

    /// Size of C's node record: 24-byte header, 8 bytes per permission, the value and the
    /// NUL-terminated child names (`-S` quota).
    pub(crate) fn record_size(&self) -> usize {
        24 + 8 * self.listed_perms().len() + self.value.len() + self.children_len()
    }

    /// Length of the children string (`name\0` each).
    pub(crate) fn children_len(&self) -> usize {
        self.children.as_bytes().len()
    }
}

/// Removes the entries after the owner's that name `domid`.
pub(crate) fn strip_acl(perms: &mut Vec<Perm>, domid: u32) {
    let mut owner = true;
    perms.retain(|p| std::mem::take(&mut owner) || p.domid != domid);
}

/// The live tree.
#[derive(Debug)]
pub(crate) struct Tree {
    nodes: HashMap<Box<str>, Node>,
    generation: u64,
    owned: HashMap<u32, usize>,
}

impl Tree {
    /// C's initial tree: `/`, `/tool`, `/tool/xenstored`, all `n0` and empty.
    pub(crate) fn new() -> Self {
        let mut t = Tree {
            nodes: HashMap::new(),
            generation: 0,
            owned: HashMap::new(),
        };
        let n0 = vec![Perm::new(Access::None, 0)];
        let root = Node::new(Vec::new(), n0.clone());
        t.insert_raw("/".into(), root);
        t.create("/tool", Node::new(Vec::new(), n0.clone()));
        t.create("/tool/xenstored", Node::new(Vec::new(), n0));
        t
    }

    fn next_gen(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    fn insert_raw(&mut self, p: String, mut node: Node) {
        node.generation = self.next_gen();
        *self.owned.entry(node.owner()).or_default() += 1;
        if let Some(old) = self.nodes.insert(p.into_boxed_str(), node) {
            self.dec_owned(old.owner());
        }
    }

    fn dec_owned(&mut self, owner: u32) {
        if let Some(c) = self.owned.get_mut(&owner) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.owned.remove(&owner);
            }
        }
    }

    pub(crate) fn get(&self, p: &str) -> Option<&Node> {
        self.nodes.get(p)
    }

    pub(crate) fn generation_of(&self, p: &str) -> Option<u64> {
        self.nodes.get(p).map(|n| n.generation)
    }

    /// Number of nodes.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Checks the tree's invariants: every node but `/` is listed by its existing parent,
    /// every listed child exists, and the owner counts match. For tests.
    #[cfg(test)]
    pub(crate) fn check(&self) -> Result<(), String> {
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for (p, n) in &self.nodes {
            *counts.entry(n.owner()).or_default() += 1;
            if n.perms.is_empty() {
                return Err(format!("{p}: no perms"));
            }
            for c in n.children.iter() {
                if !self.nodes.contains_key(&*path::join(p, c)) {
                    return Err(format!("{p}: child {c} missing"));
                }
            }
            if &**p != "/" {
                let parent = self
                    .nodes
                    .get(path::parent(p))
                    .ok_or(format!("{p}: no parent"))?;
                let n = parent
                    .children
                    .iter()
                    .filter(|c| *c == path::basename(p))
                    .count();
                if n != 1 {
                    return Err(format!("{p}: listed {n} times by its parent"));
                }
            }
        }
        if counts != self.owned {
            return Err(format!("owner counts {:?} != {:?}", self.owned, counts));
        }
        Ok(())
    }

    /// Every node with its path (fuzz targets' invariant checks).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn nodes(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(p, n)| (&**p, n))
    }

    /// The count of nodes each domain owns, as kept (fuzz targets' invariant checks).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn owned_counts(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        self.owned.iter().map(|(&d, &n)| (d, n))
    }

    /// Ignores every permission entry naming `domid` (released) after a node's owner
    /// entry; the nodes' generations do not change.
    pub(crate) fn forget_domain(&mut self, domid: u32) {
        for n in self.nodes.values_mut() {
            n.forget_domain(domid);
        }
    }

    /// Replaces (or inserts, or with `None` deletes) a node as it is, children included,
    /// giving it a new generation. Used by transaction commit; the caller keeps the tree
    /// consistent.
    pub(crate) fn put_raw(&mut self, p: &str, node: Option<Node>) {
        match node {
            Some(n) => self.insert_raw(p.to_owned(), n),
            None => {
                if let Some(old) = self.nodes.remove(p) {
                    self.dec_owned(old.owner());
                }
            }
        }
    }
}

/// What request handlers may do to the tree. Implemented by [`Tree`] (direct) and by
/// a transaction's overlay.
pub(crate) trait View {
    /// The node at `p` (a transaction records the access).
    fn get(&mut self, p: &str) -> Option<&Node>;
    /// The node at `p` without recording an access (for watch-event visibility only).
    fn peek(&self, p: &str) -> Option<&Node>;
    /// Sets the value of an existing node.
    fn set_value(&mut self, p: &str, value: Vec<u8>);
    /// Sets the permissions of an existing node.
    fn set_perms(&mut self, p: &str, perms: Vec<Perm>);
    /// Creates a node whose parent exists and links it into the parent's child list.
    fn create(&mut self, p: &str, node: Node);
    /// Removes the node and its subtree, unlinking it from its parent. Appends the
    /// removed nodes (path, perms) in post-order (children in creation order, the
    /// root last), the order in which C fires their watches.
    fn remove(&mut self, p: &str, removed: &mut Vec<(String, Vec<Perm>)>);
    /// Nodes owned by `domid` as this view sees them.
    fn owned(&self, domid: u32) -> usize;
    /// Nodes owned by `domid` as the node quota counts them when a node is created: the
    /// live tree's count, in a transaction too (C's `domain_entry`); a transaction that
    /// created nodes is checked again at commit.
    fn quota_count(&self, domid: u32) -> usize;
    /// Notes that a node is being created (C's `ta_node_created`): the commit of a
    /// transaction that did checks the node quota.
    fn creating(&mut self) {}
    /// True if every child listed exists and every node is listed by its parent (the
    /// live tree); a transaction's copies may be stale.
    fn always_consistent(&self) -> bool {
        false
    }
}

impl View for Tree {
    fn get(&mut self, p: &str) -> Option<&Node> {
        self.nodes.get(p)
    }

    fn peek(&self, p: &str) -> Option<&Node> {
        self.nodes.get(p)
    }

    fn set_value(&mut self, p: &str, value: Vec<u8>) {
        let g = self.next_gen();
        if let Some(n) = self.nodes.get_mut(p) {
            n.value = value.into_boxed_slice();
            n.generation = g;
        }
    }

    fn set_perms(&mut self, p: &str, perms: Vec<Perm>) {
        let g = self.next_gen();
        let Some(n) = self.nodes.get_mut(p) else {
            return;
        };
        let old = n.owner();
        n.perms = perms.into();
        n.listed = None;
        n.generation = g;
        let new = n.owner();
        if old != new {
            self.dec_owned(old);
            *self.owned.entry(new).or_default() += 1;
        }
    }

    fn create(&mut self, p: &str, node: Node) {
        let g = self.next_gen();
        if let Some(parent) = self.nodes.get_mut(path::parent(p)) {
            parent.children.push(path::basename(p));
            parent.generation = g;
        }
        self.insert_raw(p.to_owned(), node);
    }

    fn remove(&mut self, p: &str, removed: &mut Vec<(String, Vec<Perm>)>) {
        let g = self.next_gen();
        if p != "/" {
            let base = path::basename(p);
            if let Some(parent) = self.nodes.get_mut(path::parent(p)) {
                parent.children.remove(base);
                parent.generation = g;
            }
        }
        let mut stack = vec![(p.to_owned(), false)];
        while let Some((cur, expanded)) = stack.pop() {
            if expanded {
                if let Some(node) = self.nodes.remove(cur.as_str()) {
                    self.dec_owned(node.owner());
                    removed.push((cur, node.perms.to_vec()));
                }
                continue;
            }
            let Some(node) = self.nodes.get(cur.as_str()) else {
                continue;
            };
            stack.push((cur.clone(), true));
            stack.extend(
                node.children
                    .iter()
                    .rev()
                    .map(|c| (path::join(&cur, c), false)),
            );
        }
    }

    fn owned(&self, domid: u32) -> usize {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    fn quota_count(&self, domid: u32) -> usize {
        self.owned(domid)
    }

    fn always_consistent(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n0() -> Vec<Perm> {
        vec![Perm::new(Access::None, 0)]
    }

    fn names(n: &Node) -> Vec<&str> {
        n.children.iter().collect()
    }

    #[test]
    fn children_as_c_keeps_them() {
        let mut c = Children::default();
        assert_eq!(c.iter().count(), 0);
        assert!(!c.remove("a"));
        for n in ["a", "bb", "a-b", "c"] {
            c.push(n);
        }
        assert_eq!(c.as_bytes(), b"a\0bb\0a-b\0c\0");
        assert!(c.contains("a-b") && !c.contains("b"));
        assert!(c.remove("bb"));
        assert!(!c.remove("b"));
        assert_eq!(c.iter().rev().collect::<Vec<_>>(), ["c", "a-b", "a"]);
        assert!(c.remove("c") && c.remove("a") && c.remove("a-b"));
        assert_eq!(c.as_bytes(), b"");
    }

    #[test]
    fn perms_inline_and_on_the_heap() {
        let p = |d| Perm::new(Access::Read, d);
        for n in 0..5 {
            let v: Vec<Perm> = (0..n).map(p).collect();
            let perms = Perms::from(v.clone());
            assert_eq!(&*perms, &v[..]);
            assert_eq!(matches!(perms, Perms::Inline(..)), n <= 2);
        }
    }

    #[test]
    fn create_remove_and_counts() {
        let mut t = Tree::new();
        assert_eq!(names(t.get("/").unwrap()), ["tool"]);
        t.create("/a", Node::new(vec![], vec![Perm::new(Access::None, 5)]));
        t.create(
            "/a/b",
            Node::new(b"x".to_vec(), vec![Perm::new(Access::None, 5)]),
        );
        t.create("/a/c", Node::new(vec![], n0()));
        assert_eq!(t.owned(5), 2);
        assert_eq!(names(t.get("/a").unwrap()), ["b", "c"]);
        let g = t.generation_of("/a").unwrap();
        t.set_value("/a/b", b"y".to_vec());
        assert_eq!(
            t.generation_of("/a"),
            Some(g),
            "child value change keeps parent gen"
        );
        let mut removed = vec![];
        t.remove("/a", &mut removed);
        let paths: Vec<_> = removed.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/a/b", "/a/c", "/a"]);
        assert_eq!(t.owned(5), 0);
        assert!(t.get("/a/b").is_none());
        assert_eq!(names(t.get("/").unwrap()), ["tool"]);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn forgetting_a_domain_keeps_the_owner_and_the_listing() {
        let p = |a, d| Perm::new(a, d);
        let set = vec![
            p(Access::None, 7),
            p(Access::Read, 7),
            p(Access::Write, 3),
            p(Access::Both, 7),
        ];
        let mut n = Node::new(vec![], set.clone());
        n.forget_domain(7);
        assert_eq!(n.perms, [p(Access::None, 7), p(Access::Write, 3)]);
        assert_eq!(n.listed_perms(), set);
        assert_eq!(n.record_size(), 24 + 8 * 4);
        n.forget_domain(3);
        assert_eq!(n.perms, [p(Access::None, 7)]);
        assert_eq!(n.listed_perms(), set);
    }

    #[test]
    fn record_size_like_c() {
        let mut n = Node::new(vec![0; 100], n0());
        assert_eq!(n.record_size(), 24 + 8 + 100);
        n.children.push("abc");
        assert_eq!(n.record_size(), 24 + 8 + 100 + 4);
    }
}
