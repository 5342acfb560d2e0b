//! The node tree: values, permissions, children in creation order, generations, and the
//! count of nodes each domain owns. [`View`] is how request handlers see it, directly
//! or through a transaction (see `transaction.rs`).

use std::collections::{HashMap, HashSet};

use crate::perms::{Access, Perm};

use super::path;

/// How many entries [`Perms::Two`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Len {
    Zero,
    One,
    Two,
}

/// The permissions of a node, in 16 bytes: up to two entries (nearly every node: an
/// owner, maybe one ACL entry) packed in place; more, or entries kept only for GET_PERMS
/// (see [`Node::listed_perms`]), on the heap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Perms {
    /// `len` entries in place.
    Two {
        domid: [u32; 2],
        access: [Access; 2],
        len: Len,
    },
    /// Any number of entries, and the list as set if it differs.
    Heap(Box<HeapPerms>),
}

/// [`Perms`] that do not fit in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HeapPerms {
    perms: Vec<Perm>,
    /// The permissions as set, when `perms` lacks some of them (released domains).
    listed: Option<Vec<Perm>>,
}

impl Perms {
    /// `perms`, with `listed` the list as set if it differs.
    pub(crate) fn with_listed(perms: &[Perm], listed: Option<Vec<Perm>>) -> Self {
        match (perms, listed) {
            ([], None) => Perms::Two {
                domid: [0; 2],
                access: [Access::None; 2],
                len: Len::Zero,
            },
            ([a], None) => Perms::Two {
                domid: [a.domid, 0],
                access: [a.access, Access::None],
                len: Len::One,
            },
            ([a, b], None) => Perms::Two {
                domid: [a.domid, b.domid],
                access: [a.access, b.access],
                len: Len::Two,
            },
            (p, listed) => Perms::Heap(Box::new(HeapPerms {
                perms: p.to_vec(),
                listed,
            })),
        }
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        match self {
            Perms::Two { len, .. } => *len as usize,
            Perms::Heap(h) => h.perms.len(),
        }
    }

    /// True if there are none.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entry `i`.
    pub(crate) fn get(&self, i: usize) -> Option<Perm> {
        match self {
            Perms::Two { domid, access, .. } => {
                (i < self.len()).then(|| Perm::new(access[i], domid[i]))
            }
            Perms::Heap(h) => h.perms.get(i).copied(),
        }
    }

    /// The first entry (the owner's).
    pub(crate) fn first(&self) -> Option<Perm> {
        self.get(0)
    }

    /// The entries in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Perm> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// Room for [`Perms::as_slice`] to unpack two entries.
    pub(crate) fn buf() -> [Perm; 2] {
        [Perm::new(Access::None, 0); 2]
    }

    /// The entries as a slice, unpacked into `buf` if need be.
    pub(crate) fn as_slice<'a>(&'a self, buf: &'a mut [Perm; 2]) -> &'a [Perm] {
        match self {
            Perms::Two { .. } => {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = self.get(i).unwrap_or(Perm::new(Access::None, 0));
                }
                &buf[..self.len()]
            }
            Perms::Heap(h) => &h.perms,
        }
    }

    /// The entries.
    pub(crate) fn to_vec(&self) -> Vec<Perm> {
        self.iter().collect()
    }

    /// The list as set, if it differs from the entries.
    fn listed(&self) -> Option<&[Perm]> {
        match self {
            Perms::Two { .. } => None,
            Perms::Heap(h) => h.listed.as_deref(),
        }
    }
}

impl From<&[Perm]> for Perms {
    fn from(p: &[Perm]) -> Self {
        Perms::with_listed(p, None)
    }
}

impl From<Vec<Perm>> for Perms {
    fn from(p: Vec<Perm>) -> Self {
        Perms::from(&p[..])
    }
}

impl<const N: usize> PartialEq<[Perm; N]> for Perms {
    fn eq(&self, other: &[Perm; N]) -> bool {
        self.to_vec() == other[..]
    }
}

/// The child names of a node in creation order (C's order), each followed by a NUL: what
/// DIRECTORY answers, as C keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Children<'a>(&'a str);

impl<'a> Children<'a> {
    /// The names in order.
    pub(crate) fn iter(self) -> impl DoubleEndedIterator<Item = &'a str> {
        self.0
            .strip_suffix('\0')
            .into_iter()
            .flat_map(|s| s.split('\0'))
    }

    /// `name\0` for each child.
    pub(crate) fn as_bytes(self) -> &'a [u8] {
        self.0.as_bytes()
    }

    /// True if a child is called `name`.
    pub(crate) fn contains(self, name: &str) -> bool {
        self.iter().any(|c| c == name)
    }

    /// Where `name\0` starts, if a child is called `name`.
    fn find(self, name: &str) -> Option<usize> {
        let mut off = 0;
        for c in self.iter() {
            if c == name {
                return Some(off);
            }
            off += c.len() + 1;
        }
        None
    }
}

/// One node. Its path (in the tree; empty in a transaction's copy), value and child names
/// share one allocation, as C keeps a node in one record: a host's 100 000 nodes cost
/// about a map slot and one small block each.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    /// Path, value, then the child names (`name\0` each).
    data: Box<[u8]>,
    path_len: u32,
    value_len: u32,
    /// Never empty: the first entry is the owner. An entry naming a domain that was
    /// released since is left out (C 4.17's `XS_PERM_IGNORE`), so that a later domain
    /// with the same id does not inherit it (XSA-322), yet GET_PERMS still lists it and
    /// the record size still counts it, as in C: [`Node::listed_perms`].
    pub(crate) perms: Perms,
    /// Changes whenever the node changes (value, perms, child list); 0 never occurs.
    pub(crate) generation: u64,
}

/// A length as the node stores it (paths, values and child lists are far below 4 GiB:
/// requests are at most 4096 bytes, and a child list grows by a name per node).
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `b` as text: paths and child names are valid node names (ASCII), so this never falls
/// back to the empty string.
fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or_default()
}

impl Node {
    pub(crate) fn new(value: Vec<u8>, perms: impl Into<Perms>) -> Self {
        Self {
            data: value.into_boxed_slice(),
            path_len: 0,
            value_len: 0,
            perms: perms.into(),
            generation: 0,
        }
        .with_lens(0)
    }

    /// Sets `value_len` for a `data` holding only a path of `path_len` and a value.
    fn with_lens(mut self, path_len: usize) -> Self {
        self.path_len = len32(path_len);
        self.value_len = len32(self.data.len() - path_len);
        self
    }

    fn value_end(&self) -> usize {
        self.path_len as usize + self.value_len as usize
    }

    fn rebuild(&mut self, path: &str, value: &[u8], children: &[u8]) {
        let mut d = Vec::with_capacity(path.len() + value.len() + children.len());
        d.extend_from_slice(path.as_bytes());
        d.extend_from_slice(value);
        d.extend_from_slice(children);
        self.data = d.into_boxed_slice();
        self.path_len = len32(path.len());
        self.value_len = len32(value.len());
    }

    /// Its path in the tree (empty in a transaction's copy).
    pub(crate) fn path(&self) -> &str {
        text(&self.data[..self.path_len as usize])
    }

    /// The node with `path` as its path.
    fn at(mut self, path: &str) -> Self {
        if self.path() != path {
            let (value, children) = (self.value().to_vec(), self.children().as_bytes().to_vec());
            self.rebuild(path, &value, &children);
        }
        self
    }

    /// Its value.
    pub(crate) fn value(&self) -> &[u8] {
        &self.data[self.path_len as usize..self.value_end()]
    }

    /// Replaces its value.
    pub(crate) fn set_value(&mut self, value: &[u8]) {
        let data = std::mem::take(&mut self.data);
        let p = self.path_len as usize;
        let path = text(&data[..p]);
        self.rebuild(path, value, &data[self.value_end()..]);
    }

    /// Its children in creation order (C's order).
    pub(crate) fn children(&self) -> Children<'_> {
        Children(text(&self.data[self.value_end()..]))
    }

    /// Appends a child.
    pub(crate) fn push_child(&mut self, name: &str) {
        let mut d = Vec::with_capacity(self.data.len() + name.len() + 1);
        d.extend_from_slice(&self.data);
        d.extend_from_slice(name.as_bytes());
        d.push(0);
        self.data = d.into_boxed_slice();
    }

    /// Removes the first child called `name`; false if there is none.
    pub(crate) fn remove_child(&mut self, name: &str) -> bool {
        let Some(off) = self.children().find(name) else {
            return false;
        };
        let at = self.value_end() + off;
        let mut d = Vec::with_capacity(self.data.len() - name.len() - 1);
        d.extend_from_slice(&self.data[..at]);
        d.extend_from_slice(&self.data[at + name.len() + 1..]);
        self.data = d.into_boxed_slice();
        true
    }

    /// The permissions as set (what GET_PERMS lists), ignored entries included.
    pub(crate) fn listed_perms(&self) -> Vec<Perm> {
        self.perms
            .listed()
            .map_or_else(|| self.perms.to_vec(), <[Perm]>::to_vec)
    }

    /// Number of [`Node::listed_perms`].
    pub(crate) fn listed_len(&self) -> usize {
        self.perms.listed().map_or(self.perms.len(), <[Perm]>::len)
    }

    /// The permissions as set, if they differ from those that apply.
    pub(crate) fn listed(&self) -> Option<Vec<Perm>> {
        self.perms.listed().map(<[Perm]>::to_vec)
    }

    /// Sets the permissions (all of them apply).
    pub(crate) fn set_perms(&mut self, perms: &[Perm]) {
        self.perms = perms.into();
    }

    /// Sets the permissions that apply and, if they differ, those listed.
    pub(crate) fn set_perms_listed(&mut self, perms: &[Perm], listed: Option<Vec<Perm>>) {
        self.perms = Perms::with_listed(perms, listed);
    }

    /// Ignores the entries after the owner that name `domid` (released): they stay
    /// listed but grant nothing. The owner entry is left alone, as in C.
    pub(crate) fn forget_domain(&mut self, domid: u32) {
        if !self.names_in_acl(domid) {
            return;
        }
        let listed = self.listed_perms();
        let mut v = self.perms.to_vec();
        strip_acl(&mut v, domid);
        self.perms = Perms::with_listed(&v, Some(listed));
    }

    /// True if an entry after the owner's names `domid`.
    fn names_in_acl(&self, domid: u32) -> bool {
        self.perms.iter().skip(1).any(|p| p.domid == domid)
    }

    pub(crate) fn owner(&self) -> u32 {
        self.perms.first().map_or(0, |p| p.domid)
    }

    /// Size of C's node record: 24-byte header, 8 bytes per permission, the value and the
    /// NUL-terminated child names (`-S` quota).
    pub(crate) fn record_size(&self) -> usize {
        24 + 8 * self.listed_len() + self.value_len as usize + self.children_len()
    }

    /// Length of the children string (`name\0` each).
    pub(crate) fn children_len(&self) -> usize {
        self.data.len() - self.value_end()
    }
}

/// A node in the tree's set, found by its path.
#[derive(Debug)]
struct Keyed(Node);

impl std::borrow::Borrow<str> for Keyed {
    fn borrow(&self) -> &str {
        self.0.path()
    }
}

impl std::hash::Hash for Keyed {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.path().hash(h);
    }
}

impl PartialEq for Keyed {
    fn eq(&self, other: &Self) -> bool {
        self.0.path() == other.0.path()
    }
}

impl Eq for Keyed {}

/// Removes the entries after the owner's that name `domid`.
pub(crate) fn strip_acl(perms: &mut Vec<Perm>, domid: u32) {
    let mut owner = true;
    perms.retain(|p| std::mem::take(&mut owner) || p.domid != domid);
}

/// The live tree.
#[derive(Debug)]
pub(crate) struct Tree {
    /// Every node, found by its path.
    nodes: HashSet<Keyed>,
    generation: u64,
    owned: HashMap<u32, usize>,
}

impl Tree {
    /// C's initial tree: `/`, `/tool`, `/tool/xenstored`, all `n0` and empty.
    pub(crate) fn new() -> Self {
        let mut t = Tree {
            nodes: HashSet::new(),
            generation: 0,
            owned: HashMap::new(),
        };
        let n0 = vec![Perm::new(Access::None, 0)];
        let root = Node::new(Vec::new(), n0.clone());
        t.insert_raw("/", root);
        t.create("/tool", Node::new(Vec::new(), n0.clone()));
        t.create("/tool/xenstored", Node::new(Vec::new(), n0));
        t
    }

    fn next_gen(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    fn insert_raw(&mut self, p: &str, mut node: Node) {
        node.generation = self.next_gen();
        *self.owned.entry(node.owner()).or_default() += 1;
        if let Some(old) = self.nodes.replace(Keyed(node.at(p))) {
            self.dec_owned(old.0.owner());
        }
    }

    /// Runs `f` on the node at `p`, if there is one (it must not change the path).
    fn modify<R>(&mut self, p: &str, f: impl FnOnce(&mut Node) -> R) -> Option<R> {
        let Keyed(mut n) = self.nodes.take(p)?;
        let r = f(&mut n);
        self.nodes.insert(Keyed(n));
        Some(r)
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
        self.nodes.get(p).map(|k| &k.0)
    }

    pub(crate) fn generation_of(&self, p: &str) -> Option<u64> {
        self.get(p).map(|n| n.generation)
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
        for Keyed(n) in &self.nodes {
            let p = n.path();
            *counts.entry(n.owner()).or_default() += 1;
            if n.perms.is_empty() {
                return Err(format!("{p}: no perms"));
            }
            for c in n.children().iter() {
                if !self.nodes.contains(&*path::join(p, c)) {
                    return Err(format!("{p}: child {c} missing"));
                }
            }
            if p != "/" {
                let parent = self.get(path::parent(p)).ok_or(format!("{p}: no parent"))?;
                let n = parent
                    .children()
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
        self.nodes.iter().map(|Keyed(n)| (n.path(), n))
    }

    /// The count of nodes each domain owns, as kept (fuzz targets' invariant checks).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn owned_counts(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        self.owned.iter().map(|(&d, &n)| (d, n))
    }

    /// Ignores every permission entry naming `domid` (released) after a node's owner
    /// entry; the nodes' generations do not change.
    pub(crate) fn forget_domain(&mut self, domid: u32) {
        let named: Vec<String> = self
            .nodes
            .iter()
            .filter(|k| k.0.names_in_acl(domid))
            .map(|k| k.0.path().to_owned())
            .collect();
        for p in named {
            self.modify(&p, |n| n.forget_domain(domid));
        }
    }

    /// Replaces (or inserts, or with `None` deletes) a node as it is, children included,
    /// giving it a new generation. Used by transaction commit; the caller keeps the tree
    /// consistent.
    pub(crate) fn put_raw(&mut self, p: &str, node: Option<Node>) {
        match node {
            Some(n) => self.insert_raw(p, n),
            None => {
                if let Some(old) = self.nodes.take(p) {
                    self.dec_owned(old.0.owner());
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
        Tree::get(self, p)
    }

    fn peek(&self, p: &str) -> Option<&Node> {
        Tree::get(self, p)
    }

    fn set_value(&mut self, p: &str, value: Vec<u8>) {
        let g = self.next_gen();
        self.modify(p, |n| {
            n.set_value(&value);
            n.generation = g;
        });
    }

    fn set_perms(&mut self, p: &str, perms: Vec<Perm>) {
        let g = self.next_gen();
        let owners = self.modify(p, |n| {
            let old = n.owner();
            n.set_perms(&perms);
            n.generation = g;
            (old, n.owner())
        });
        if let Some((old, new)) = owners {
            if old != new {
                self.dec_owned(old);
                *self.owned.entry(new).or_default() += 1;
            }
        }
    }

    fn create(&mut self, p: &str, node: Node) {
        let g = self.next_gen();
        self.modify(path::parent(p), |parent| {
            parent.push_child(path::basename(p));
            parent.generation = g;
        });
        self.insert_raw(p, node);
    }

    fn remove(&mut self, p: &str, removed: &mut Vec<(String, Vec<Perm>)>) {
        let g = self.next_gen();
        if p != "/" {
            let base = path::basename(p);
            self.modify(path::parent(p), |parent| {
                parent.remove_child(base);
                parent.generation = g;
            });
        }
        let mut stack = vec![(p.to_owned(), false)];
        while let Some((cur, expanded)) = stack.pop() {
            if expanded {
                if let Some(Keyed(node)) = self.nodes.take(cur.as_str()) {
                    self.dec_owned(node.owner());
                    removed.push((cur, node.perms.to_vec()));
                }
                continue;
            }
            let Some(node) = Tree::get(self, &cur) else {
                continue;
            };
            stack.push((cur.clone(), true));
            stack.extend(
                node.children()
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
        n.children().iter().collect()
    }

    #[test]
    fn children_and_value_as_c_keeps_them() {
        let mut n = Node::new(b"v\xff".to_vec(), n0());
        assert_eq!(n.children().iter().count(), 0);
        assert!(!n.remove_child("a"));
        for c in ["a", "bb", "a-b", "c"] {
            n.push_child(c);
        }
        assert_eq!(n.children().as_bytes(), b"a\0bb\0a-b\0c\0");
        assert!(n.children().contains("a-b") && !n.children().contains("b"));
        assert!(n.remove_child("bb"));
        assert!(!n.remove_child("b"));
        n.set_value(b"longer value");
        assert_eq!(
            n.children().iter().rev().collect::<Vec<_>>(),
            ["c", "a-b", "a"]
        );
        let n = n.at("/some/path");
        assert_eq!(n.path(), "/some/path");
        assert_eq!(n.value(), b"longer value");
        assert_eq!(n.children_len(), 2 + 4 + 2);
        let mut n = n.at("");
        assert!(n.remove_child("c") && n.remove_child("a") && n.remove_child("a-b"));
        assert_eq!(n.children().as_bytes(), b"");
        assert_eq!(n.value(), b"longer value");
    }

    #[test]
    fn a_node_is_small() {
        // A host holds 100 000 nodes: every byte here is 100 kB there (more with the map's
        // spare slots).
        assert_eq!(std::mem::size_of::<Perms>(), 16);
        assert_eq!(std::mem::size_of::<Node>(), 48);
    }

    #[test]
    fn perms_inline_and_on_the_heap() {
        let p = |d| Perm::new(Access::Read, d);
        for n in 0..5 {
            let v: Vec<Perm> = (0..n).map(p).collect();
            let perms = Perms::from(v.clone());
            assert_eq!(perms.to_vec(), v);
            assert_eq!(perms.as_slice(&mut [p(9); 2]), &v[..]);
            assert_eq!(matches!(perms, Perms::Two { .. }), n <= 2);
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
        assert_eq!(n.listed(), Some(set.clone()));
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
        n.push_child("abc");
        assert_eq!(n.record_size(), 24 + 8 + 100 + 4);
    }
}
