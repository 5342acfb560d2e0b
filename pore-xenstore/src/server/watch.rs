//! Watches: registration by (canonical path, token), matching of changed nodes, and the
//! rules of C xenstored for `rm` (watches on removed descendants fire with their own
//! path) and special `@` paths.

use std::collections::HashMap;
use std::rc::Rc;

use crate::perms::Perm;

use super::path;
use super::ConnId;

/// A change to report to watchers once it is visible (at once, or at commit).
#[derive(Clone, Debug)]
pub(crate) enum Change {
    /// A node was written, created or had its permissions changed. `perms` decide whether
    /// an unprivileged watcher may see it (old and new perms for SET_PERMS).
    Node {
        path: String,
        perms: Vec<Perm>,
        old_perms: Option<Vec<Perm>>,
        /// The parent's perms: C lets a watcher see a change it may read the node or
        /// its parent of.
        parent_perms: Option<Vec<Perm>>,
    },
    /// A subtree was removed: its nodes in post-order, the root last, and the perms of
    /// the root's parent.
    Removed {
        removed: Vec<(String, Vec<Perm>)>,
        parent_perms: Option<Vec<Perm>>,
    },
    /// A node changed by a committed transaction (`exact`: only watches on it).
    Commit { path: String, exact: bool, vis: Vis },
}

/// The permissions that decide whether an unprivileged watcher sees an event: C's
/// `watch_permitted` (old perms, the node's, or its parent's must allow reading).
#[derive(Clone, Debug)]
pub(crate) struct Vis {
    pub(crate) perms: Vec<Perm>,
    pub(crate) old: Option<Vec<Perm>>,
    pub(crate) parent: Option<Vec<Perm>>,
    /// Seen by nobody, privileged watchers included (C: a committed node that is gone
    /// and had no perms when first accessed).
    pub(crate) hidden: bool,
}

/// One registered watch.
#[derive(Clone, Debug)]
pub(crate) struct Watch {
    pub(crate) conn: ConnId,
    pub(crate) token: Vec<u8>,
    /// Registered with a relative path: events carry paths relative to the home.
    pub(crate) relative: bool,
}

#[derive(Clone, Debug)]
struct Entry {
    conn: ConnId,
    /// Registration order (global): a connection's events come in this order.
    seq: u64,
    token: Box<[u8]>,
    relative: bool,
}

/// All watches, indexed by canonical path: a change looks up its node and the node's
/// ancestors (a few hash lookups), whatever the number of watches. Within a connection
/// events keep C's order (registration order).
#[derive(Debug, Default)]
pub(crate) struct Watches {
    by_path: HashMap<Box<str>, Vec<Entry>>,
    /// Watches per connection.
    per_conn: HashMap<ConnId, usize>,
    next_seq: u64,
}

/// One event to deliver: to `conn`, reporting `path` (already made relative if needed).
#[derive(Debug)]
pub(crate) struct Fired {
    pub(crate) conn: ConnId,
    pub(crate) path: String,
    pub(crate) token: Vec<u8>,
    /// The perms of the node it reports (`None`: no check, e.g. registration).
    pub(crate) perms: Option<Rc<Vis>>,
}

/// A watch that matches a changed node: the node's index in the change, and the watch.
struct Candidate<'a> {
    node: usize,
    entry: &'a Entry,
}

impl Watches {
    pub(crate) fn count(&self, conn: ConnId) -> usize {
        self.per_conn.get(&conn).copied().unwrap_or(0)
    }

    pub(crate) fn exists(&self, p: &str, token: &[u8], conn: ConnId) -> bool {
        self.by_path
            .get(p)
            .is_some_and(|v| v.iter().any(|w| w.conn == conn && *w.token == *token))
    }

    pub(crate) fn add(&mut self, p: String, w: Watch) {
        self.next_seq += 1;
        *self.per_conn.entry(w.conn).or_default() += 1;
        // Most paths have one watch: no room for more until a second comes (a Vec's
        // first push would make room for four).
        self.by_path
            .entry(p.into_boxed_str())
            .or_insert_with(|| Vec::with_capacity(1))
            .push(Entry {
                conn: w.conn,
                seq: self.next_seq,
                token: w.token.into_boxed_slice(),
                relative: w.relative,
            });
    }

    /// Removes the watch; false if there was none.
    pub(crate) fn remove(&mut self, p: &str, token: &[u8], conn: ConnId) -> bool {
        let Some(v) = self.by_path.get_mut(p) else {
            return false;
        };
        let Some(i) = v.iter().position(|w| w.conn == conn && *w.token == *token) else {
            return false;
        };
        v.remove(i);
        if v.is_empty() {
            self.by_path.remove(p);
        }
        if let Some(n) = self.per_conn.get_mut(&conn) {
            *n -= 1;
            if *n == 0 {
                self.per_conn.remove(&conn);
            }
        }
        true
    }

    /// Every watch: connection, canonical path, token (fuzz targets' invariant checks).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn all(&self) -> impl Iterator<Item = (ConnId, &str, &[u8])> {
        let mut v: Vec<(u64, ConnId, &str, &[u8])> = self
            .by_path
            .iter()
            .flat_map(|(p, v)| v.iter().map(move |w| (w.seq, w.conn, &**p, &*w.token)))
            .collect();
        v.sort_by_key(|w| (w.1, w.0));
        v.into_iter().map(|(_, c, p, t)| (c, p, t))
    }

    /// Removes every watch of `conn`.
    pub(crate) fn remove_conn(&mut self, conn: ConnId) {
        if self.per_conn.remove(&conn).is_none() {
            return;
        }
        self.by_path.retain(|_, v| {
            v.retain(|w| w.conn != conn);
            !v.is_empty()
        });
    }

    /// Appends the watches matching `node` (`exact`: only those on the node itself;
    /// otherwise those on its ancestors too, unless it is a special `@` node).
    fn lookup<'a>(&'a self, i: usize, node: &str, exact: bool, out: &mut Vec<Candidate<'a>>) {
        let mut add = |p: &str| {
            if let Some(v) = self.by_path.get(p) {
                out.extend(v.iter().map(|entry| Candidate { node: i, entry }));
            }
        };
        add(node);
        if exact || node.starts_with('@') || !node.starts_with('/') {
            return;
        }
        let mut cur = node;
        while cur != "/" {
            cur = path::parent(cur);
            add(cur);
        }
    }

    /// The events a change causes, per connection in C's order: for each changed node
    /// (a removed subtree in post-order, its root last), each matching watch in
    /// registration order, an event with the same path and token only once. `domid_of` gives a connection's domain (relative paths).
    pub(crate) fn fire(
        &self,
        change: &Change,
        domid_of: &dyn Fn(ConnId) -> u32,
        out: &mut Vec<Fired>,
    ) {
        if self.by_path.is_empty() {
            return;
        }
        let (nodes, last_exact): (Vec<&str>, bool) = match change {
            Change::Node { path, .. } => (vec![path.as_str()], false),
            Change::Commit { path, exact, .. } => (vec![path.as_str()], *exact),
            Change::Removed { removed, .. } => {
                (removed.iter().map(|(p, _)| p.as_str()).collect(), false)
            }
        };
        let mut cands = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let exact = i + 1 != nodes.len() || last_exact;
            self.lookup(i, node, exact, &mut cands);
        }
        if cands.is_empty() {
            return;
        }
        // C's order: per connection, per node, per watch in registration order.
        cands.sort_by_key(|c| (c.entry.conn, c.node, c.entry.seq));
        let mut vis: HashMap<usize, Rc<Vis>> = HashMap::new();
        let mut parents: Option<HashMap<&str, usize>> = None;
        let mut home: Option<(ConnId, String)> = None;
        let mut group = (ConnId(0), usize::MAX);
        let mut first = out.len();
        for c in cands {
            let (conn, i, w) = (c.entry.conn, c.node, c.entry);
            if (conn, i) != group {
                group = (conn, i);
                first = out.len();
            }
            let node = nodes[i];
            let p = if w.relative {
                if home.as_ref().is_none_or(|(h, _)| *h != conn) {
                    home = Some((conn, path::home(domid_of(conn))));
                }
                let h = home.as_ref().map_or("", |(_, h)| h.as_str());
                node.strip_prefix(h)
                    .and_then(|r| r.strip_prefix('/'))
                    .unwrap_or(node)
                    .to_owned()
            } else {
                node.to_owned()
            };
            // C sends one event per (path, token) and connection, however many of its
            // watches match.
            if out[first..]
                .iter()
                .any(|f| f.path == p && *f.token == *w.token)
            {
                continue;
            }
            let v = vis
                .entry(i)
                .or_insert_with(|| Rc::new(node_vis(change, i, &mut parents)))
                .clone();
            out.push(Fired {
                conn,
                path: p,
                token: w.token.to_vec(),
                perms: Some(v),
            });
        }
    }
}

/// Who may see the event of node `i` of `change`.
fn node_vis<'a>(
    change: &'a Change,
    i: usize,
    parents: &mut Option<HashMap<&'a str, usize>>,
) -> Vis {
    match change {
        Change::Node {
            perms,
            old_perms,
            parent_perms,
            ..
        } => Vis {
            perms: perms.clone(),
            old: old_perms.clone(),
            parent: parent_perms.clone(),
            hidden: false,
        },
        Change::Commit { vis, .. } => vis.clone(),
        Change::Removed {
            removed,
            parent_perms,
        } => {
            let (node, perms) = &removed[i];
            let parent = if i + 1 == removed.len() {
                parent_perms.clone()
            } else {
                let idx = parents.get_or_insert_with(|| {
                    removed
                        .iter()
                        .enumerate()
                        .map(|(k, (p, _))| (p.as_str(), k))
                        .collect()
                });
                idx.get(path::parent(node)).map(|&k| removed[k].1.clone())
            };
            Vis {
                perms: perms.clone(),
                old: None,
                parent,
                hidden: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perms::Access;

    fn w(conn: u64, token: &str, relative: bool) -> Watch {
        Watch {
            conn: ConnId(conn),
            token: token.as_bytes().to_vec(),
            relative,
        }
    }

    fn paths(ws: &Watches, c: &Change) -> Vec<(u64, String)> {
        let mut out = vec![];
        ws.fire(c, &|_| 0, &mut out);
        let mut v: Vec<_> = out.into_iter().map(|f| (f.conn.0, f.path)).collect();
        v.sort();
        v
    }

    #[test]
    fn events_in_c_order_per_connection_node_and_registration() {
        let mut ws = Watches::default();
        ws.add("/a".into(), w(2, "2a", false));
        ws.add("/a/b".into(), w(1, "1ab", false));
        ws.add("/".into(), w(1, "1root", false));
        ws.add("/a".into(), w(1, "1a", false));
        ws.add("/a/b".into(), w(2, "2ab", false));
        // Two watches of one connection, same token, both matching /a: one event.
        ws.add("/a".into(), w(1, "1root", false));
        let n0 = vec![Perm::new(Access::None, 0)];
        let rm = Change::Removed {
            removed: vec![("/a/b".into(), n0.clone()), ("/a".into(), n0.clone())],
            parent_perms: None,
        };
        let mut out = vec![];
        ws.fire(&rm, &|_| 0, &mut out);
        let got: Vec<_> = out
            .iter()
            .map(|f| (f.conn.0, f.path.as_str(), String::from_utf8_lossy(&f.token)))
            .collect();
        assert_eq!(
            got,
            [
                (1, "/a/b", "1ab".into()),
                (1, "/a", "1root".into()),
                (1, "/a", "1a".into()),
                (2, "/a/b", "2ab".into()),
                (2, "/a", "2a".into()),
            ]
        );
        assert_eq!(ws.count(ConnId(1)), 4);
        ws.remove_conn(ConnId(1));
        assert_eq!(ws.count(ConnId(1)), 0);
        assert!(ws.exists("/a/b", b"2ab", ConnId(2)) && !ws.exists("/a/b", b"1ab", ConnId(1)));
    }

    #[test]
    fn matching_like_c() {
        let mut ws = Watches::default();
        ws.add("/w".into(), w(1, "a", false));
        ws.add("/w/x/y/z".into(), w(2, "b", false));
        ws.add("/local/domain/0/rel".into(), w(3, "r", true));
        let n0 = vec![Perm::new(Access::None, 0)];
        let node = |p: &str| Change::Node {
            path: p.into(),
            perms: n0.clone(),
            old_perms: None,
            parent_perms: None,
        };
        assert_eq!(paths(&ws, &node("/w/x/y")), [(1, "/w/x/y".to_string())]);
        assert_eq!(paths(&ws, &node("/")), []);
        assert_eq!(paths(&ws, &node("/wx")), []);
        assert_eq!(
            paths(&ws, &node("/local/domain/0/rel/x")),
            [(3, "rel/x".to_string())]
        );
        let rm = Change::Removed {
            removed: vec![
                ("/w/x/y/z".into(), n0.clone()),
                ("/w/x/y".into(), n0.clone()),
                ("/w/x".into(), n0.clone()),
            ],
            parent_perms: None,
        };
        assert_eq!(
            paths(&ws, &rm),
            [(1, "/w/x".to_string()), (2, "/w/x/y/z".to_string())]
        );
        assert!(ws.exists("/w", b"a", ConnId(1)));
        assert!(!ws.remove("/w", b"zz", ConnId(1)));
        assert!(ws.remove("/w", b"a", ConnId(1)));
        assert_eq!(ws.count(ConnId(1)), 0);
        ws.remove_conn(ConnId(2));
        assert_eq!(paths(&ws, &rm), []);
    }
}
