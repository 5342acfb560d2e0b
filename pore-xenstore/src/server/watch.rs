//! Watches: registration by (canonical path, token), matching of changed nodes, and the
//! rules of C xenstored for `rm` (watches on removed descendants fire with their own
//! path) and special `@` paths.

use std::collections::BTreeMap;

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

/// A node (path, perms) of a change.
type Removed = (String, Vec<Perm>);

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
    path: String,
    token: Vec<u8>,
    relative: bool,
}

/// All watches, per connection in registration order (C's order of events).
#[derive(Debug, Default)]
pub(crate) struct Watches {
    per_conn: BTreeMap<ConnId, Vec<Entry>>,
}

/// One event to deliver: to `conn`, reporting `path` (already made relative if needed).
#[derive(Debug)]
pub(crate) struct Fired {
    pub(crate) conn: ConnId,
    pub(crate) path: String,
    pub(crate) token: Vec<u8>,
    /// The perms of the node it reports (`None`: no check, e.g. registration).
    pub(crate) perms: Option<Vis>,
}

/// True if a watch on `w` fires for a change of `node` (`exact`: only a watch on the
/// node itself, as for the descendants of a removed node).
fn matches(w: &str, node: &str, exact: bool) -> bool {
    if w == node {
        return true;
    }
    if exact || node.starts_with('@') || w.starts_with('@') {
        return false;
    }
    if w == "/" {
        return true;
    }
    node.strip_prefix(w)
        .is_some_and(|rest| rest.starts_with('/'))
}

impl Watches {
    pub(crate) fn count(&self, conn: ConnId) -> usize {
        self.per_conn.get(&conn).map_or(0, Vec::len)
    }

    pub(crate) fn exists(&self, p: &str, token: &[u8], conn: ConnId) -> bool {
        self.per_conn
            .get(&conn)
            .is_some_and(|v| v.iter().any(|w| w.path == p && w.token == token))
    }

    pub(crate) fn add(&mut self, p: String, w: Watch) {
        self.per_conn.entry(w.conn).or_default().push(Entry {
            path: p,
            token: w.token,
            relative: w.relative,
        });
    }

    /// Removes the watch; false if there was none.
    pub(crate) fn remove(&mut self, p: &str, token: &[u8], conn: ConnId) -> bool {
        let Some(v) = self.per_conn.get_mut(&conn) else {
            return false;
        };
        let Some(i) = v.iter().position(|w| w.path == p && w.token == token) else {
            return false;
        };
        v.remove(i);
        if v.is_empty() {
            self.per_conn.remove(&conn);
        }
        true
    }

    /// Every watch: connection, canonical path, token (fuzz targets' invariant checks).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn all(&self) -> impl Iterator<Item = (ConnId, &str, &[u8])> {
        self.per_conn
            .iter()
            .flat_map(|(&c, v)| v.iter().map(move |w| (c, w.path.as_str(), &w.token[..])))
    }

    /// Removes every watch of `conn`.
    pub(crate) fn remove_conn(&mut self, conn: ConnId) {
        self.per_conn.remove(&conn);
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
        if self.per_conn.is_empty() {
            return;
        }
        let single;
        let (nodes, vis, last_exact): (&[Removed], Vec<Vis>, bool) = match change {
            Change::Node {
                path,
                perms,
                old_perms,
                parent_perms,
            } => {
                single = [(path.clone(), perms.clone())];
                let v = Vis {
                    perms: perms.clone(),
                    old: old_perms.clone(),
                    parent: parent_perms.clone(),
                    hidden: false,
                };
                (&single, vec![v], false)
            }
            Change::Commit { path, exact, vis } => {
                single = [(path.clone(), vis.perms.clone())];
                (&single, vec![vis.clone()], *exact)
            }
            Change::Removed {
                removed,
                parent_perms,
            } => {
                let vis = removed
                    .iter()
                    .enumerate()
                    .map(|(i, (node, perms))| {
                        let parent = if i + 1 == removed.len() {
                            parent_perms.clone()
                        } else {
                            let pp = path::parent(node);
                            removed
                                .iter()
                                .find(|(q, _)| q == pp)
                                .map(|(_, p)| p.clone())
                        };
                        Vis {
                            perms: perms.clone(),
                            old: None,
                            parent,
                            hidden: false,
                        }
                    })
                    .collect();
                (removed, vis, false)
            }
        };
        for (&conn, list) in &self.per_conn {
            let mut home = None;
            for (i, (node, _)) in nodes.iter().enumerate() {
                let exact = i + 1 != nodes.len() || last_exact;
                // C sends one event per (path, token) and connection, however many of
                // its watches match.
                let first = out.len();
                for w in list {
                    if !matches(&w.path, node, exact) {
                        continue;
                    }
                    let p = if w.relative {
                        let home = home.get_or_insert_with(|| path::home(domid_of(conn)));
                        node.strip_prefix(home.as_str())
                            .and_then(|r| r.strip_prefix('/'))
                            .unwrap_or(node)
                            .to_owned()
                    } else {
                        node.clone()
                    };
                    if out[first..]
                        .iter()
                        .any(|f| f.path == p && f.token == w.token)
                    {
                        continue;
                    }
                    out.push(Fired {
                        conn,
                        path: p,
                        token: w.token.clone(),
                        perms: Some(vis[i].clone()),
                    });
                }
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
