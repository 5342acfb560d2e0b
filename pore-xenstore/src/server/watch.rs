//! Watches: registration by (canonical path, token), matching of changed nodes, and the
//! rules of C xenstored for `rm` (watches on removed descendants fire with their own
//! path) and special `@` paths.

use std::collections::HashMap;

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
    },
    /// A subtree was removed: `removed[0]` is its root, the rest its descendants.
    Removed { removed: Vec<(String, Vec<Perm>)> },
}

/// One registered watch.
#[derive(Clone, Debug)]
pub(crate) struct Watch {
    pub(crate) conn: ConnId,
    pub(crate) token: Vec<u8>,
    /// Registered with a relative path: events carry paths relative to the home.
    pub(crate) relative: bool,
}

/// All watches, by canonical path.
#[derive(Debug, Default)]
pub(crate) struct Watches {
    by_path: HashMap<String, Vec<Watch>>,
    per_conn: HashMap<ConnId, usize>,
}

/// One event to deliver: to `conn`, reporting `path` (already made relative if needed).
#[derive(Debug)]
pub(crate) struct Fired {
    pub(crate) conn: ConnId,
    pub(crate) path: String,
    pub(crate) token: Vec<u8>,
    /// The perms of the node it reports (`None`: no check, e.g. registration).
    pub(crate) perms: Option<(Vec<Perm>, Option<Vec<Perm>>)>,
}

impl Watches {
    pub(crate) fn count(&self, conn: ConnId) -> usize {
        self.per_conn.get(&conn).copied().unwrap_or(0)
    }

    pub(crate) fn exists(&self, p: &str, token: &[u8], conn: ConnId) -> bool {
        self.by_path
            .get(p)
            .is_some_and(|v| v.iter().any(|w| w.conn == conn && w.token == token))
    }

    pub(crate) fn add(&mut self, p: String, w: Watch) {
        *self.per_conn.entry(w.conn).or_default() += 1;
        self.by_path.entry(p).or_default().push(w);
    }

    /// Removes the watch; false if there was none.
    pub(crate) fn remove(&mut self, p: &str, token: &[u8], conn: ConnId) -> bool {
        let Some(v) = self.by_path.get_mut(p) else {
            return false;
        };
        let Some(i) = v.iter().position(|w| w.conn == conn && w.token == token) else {
            return false;
        };
        v.remove(i);
        if v.is_empty() {
            self.by_path.remove(p);
        }
        if let Some(c) = self.per_conn.get_mut(&conn) {
            *c = c.saturating_sub(1);
        }
        true
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

    fn emit(
        &self,
        wp: &str,
        event_path: &str,
        perms: &Option<(Vec<Perm>, Option<Vec<Perm>>)>,
        homes: &dyn Fn(ConnId) -> u32,
        out: &mut Vec<Fired>,
    ) {
        let Some(ws) = self.by_path.get(wp) else {
            return;
        };
        for w in ws {
            let p = if w.relative {
                let home = path::home(homes(w.conn));
                event_path
                    .strip_prefix(home.as_str())
                    .and_then(|r| r.strip_prefix('/'))
                    .unwrap_or(event_path)
                    .to_owned()
            } else {
                event_path.to_owned()
            };
            out.push(Fired {
                conn: w.conn,
                path: p,
                token: w.token.clone(),
                perms: perms.clone(),
            });
        }
    }

    /// The events a change causes. `domid_of` gives a connection's domain (for
    /// relative paths).
    pub(crate) fn fire(
        &self,
        change: &Change,
        domid_of: &dyn Fn(ConnId) -> u32,
        out: &mut Vec<Fired>,
    ) {
        if self.by_path.is_empty() {
            return;
        }
        match change {
            Change::Node {
                path: p,
                perms,
                old_perms,
            } => {
                let pp = Some((perms.clone(), old_perms.clone()));
                self.fire_ancestors(p, &pp, domid_of, out);
            }
            Change::Removed { removed } => {
                let Some((root, root_perms)) = removed.first() else {
                    return;
                };
                for (d, perms) in &removed[1..] {
                    self.emit(d, d, &Some((perms.clone(), None)), domid_of, out);
                }
                self.fire_ancestors(root, &Some((root_perms.clone(), None)), domid_of, out);
            }
        }
    }

    fn fire_ancestors(
        &self,
        p: &str,
        perms: &Option<(Vec<Perm>, Option<Vec<Perm>>)>,
        domid_of: &dyn Fn(ConnId) -> u32,
        out: &mut Vec<Fired>,
    ) {
        if p.starts_with('@') {
            self.emit(p, p, perms, domid_of, out);
            return;
        }
        let mut cur = p;
        loop {
            self.emit(cur, p, perms, domid_of, out);
            if cur == "/" {
                break;
            }
            cur = path::parent(cur);
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
                ("/w/x".into(), n0.clone()),
                ("/w/x/y".into(), n0.clone()),
                ("/w/x/y/z".into(), n0.clone()),
            ],
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
