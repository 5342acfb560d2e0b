//! The node tree of the in-memory xenstore: nodes with permissions, transactions and
//! watches, as C xenstored and oxenstored treat an unprivileged domain (no `std`: the sans-IO
//! tests drive it too). [`crate::memstore`] shares it between threads.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use pore_core::DomId;

use crate::ops::{Access, Perm, StoreError, StoreOp, StoreReply};

/// Who owns a node an unprivileged domain creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// C xenstored: the creator owns them.
    Creator,
    /// oxenstored: the parent's owner keeps them.
    Parent,
}

/// A node: its value and permissions (the owner first).
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) value: Vec<u8>,
    pub(crate) perms: Vec<Perm>,
}

/// A watch: the connection that set it, its domain, the path and the token.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    pub(crate) conn: u64,
    pub(crate) dom: DomId,
    pub(crate) path: String,
    pub(crate) token: String,
}

/// The tree. A connection is a number; [`Store::perform`] acts on the connection numbered as
/// the domain (the sans-IO tests' one connection per domain).
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pub(crate) nodes: BTreeMap<String, Node>,
    pub(crate) watches: Vec<Watch>,
    /// Fired watches: (connection, path, token).
    pub(crate) events: Vec<(u64, String, String)>,
    pub(crate) ownership: Ownership,
}

fn parent(path: &str) -> Option<&str> {
    path.rfind('/')
        .map(|i| if i == 0 { "/" } else { &path[..i] })
}

fn under(path: &str, top: &str) -> bool {
    path == top || (path.starts_with(top) && path.as_bytes().get(top.len()) == Some(&b'/'))
}

impl Store {
    pub(crate) fn new(ownership: Ownership) -> Self {
        let mut s = Store {
            nodes: BTreeMap::new(),
            watches: Vec::new(),
            events: Vec::new(),
            ownership,
        };
        let root = vec![Perm::new(Access::None, DomId(0))];
        for p in ["/", "/local", "/local/domain"] {
            s.nodes.insert(
                p.to_string(),
                Node {
                    value: Vec::new(),
                    perms: root.clone(),
                },
            );
        }
        s
    }

    /// The toolstack's work for a new domain (D19).
    pub(crate) fn add_domain(&mut self, id: u16) {
        let perms = vec![Perm::new(Access::None, DomId(id))];
        for p in [
            alloc::format!("/local/domain/{id}"),
            alloc::format!("/local/domain/{id}/data"),
        ] {
            self.nodes.insert(
                p,
                Node {
                    value: Vec::new(),
                    perms: perms.clone(),
                },
            );
        }
    }

    /// The toolstack's work for a dead domain.
    pub(crate) fn remove_domain(&mut self, id: u16) {
        let top = alloc::format!("/local/domain/{id}");
        self.remove_tree(&top);
        self.watches.retain(|w| w.dom != DomId(id));
        self.fire(&top);
    }

    fn access(&self, dom: DomId, path: &str) -> Access {
        let Some(n) = self.nodes.get(path) else {
            return Access::None;
        };
        if dom == DomId(0) || n.perms[0].domid == dom {
            return Access::Both;
        }
        n.perms[1..]
            .iter()
            .find(|p| p.domid == dom)
            .map(|p| p.access)
            .unwrap_or(n.perms[0].access)
    }

    fn can_read(&self, dom: DomId, path: &str) -> bool {
        matches!(self.access(dom, path), Access::Read | Access::Both)
    }

    fn can_write(&self, dom: DomId, path: &str) -> bool {
        matches!(self.access(dom, path), Access::Write | Access::Both)
    }

    fn fire(&mut self, path: &str) {
        for w in &self.watches {
            if under(path, &w.path) {
                self.events
                    .push((w.conn, path.to_string(), w.token.clone()));
            } else if under(&w.path, path) {
                self.events.push((w.conn, w.path.clone(), w.token.clone()));
            }
        }
    }

    fn remove_tree(&mut self, path: &str) {
        let doomed: Vec<String> = self
            .nodes
            .keys()
            .filter(|k| under(k, path))
            .cloned()
            .collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
    }

    fn create(&mut self, dom: DomId, path: &str) -> Result<(), StoreError> {
        if self.nodes.contains_key(path) {
            return if self.can_write(dom, path) {
                Ok(())
            } else {
                Err(StoreError::PermissionDenied)
            };
        }
        let p = parent(path).ok_or(StoreError::Other(None))?;
        if !self.nodes.contains_key(p) {
            if p.starts_with("/local/domain/") && p.matches('/').count() == 3 {
                return Err(StoreError::NotFound); // no such domain
            }
            self.create(dom, p)?;
        }
        if !self.can_write(dom, p) {
            return Err(StoreError::PermissionDenied);
        }
        let mut perms = self.nodes[p].perms.clone();
        if self.ownership == Ownership::Creator && dom != DomId(0) {
            perms[0].domid = dom;
        }
        self.nodes.insert(
            path.to_string(),
            Node {
                value: Vec::new(),
                perms,
            },
        );
        Ok(())
    }

    /// Applies one op for `dom`; watch events are collected in `fired`.
    fn apply(
        &mut self,
        conn: u64,
        dom: DomId,
        op: &StoreOp,
        fired: &mut Vec<String>,
    ) -> Result<StoreReply, StoreError> {
        match op {
            StoreOp::Read { path } => match self.nodes.get(path) {
                None => Err(StoreError::NotFound),
                Some(_) if !self.can_read(dom, path) => Err(StoreError::PermissionDenied),
                Some(n) => Ok(StoreReply::Value(n.value.clone())),
            },
            StoreOp::Write { path, value } => {
                self.create(dom, path)?;
                self.nodes
                    .get_mut(path)
                    .ok_or(StoreError::Other(None))?
                    .value = value.as_bytes().to_vec();
                fired.push(path.clone());
                Ok(StoreReply::Done)
            }
            StoreOp::Mkdir { path } => {
                self.create(dom, path)?;
                fired.push(path.clone());
                Ok(StoreReply::Done)
            }
            StoreOp::Rm { path } => {
                if !self.nodes.contains_key(path) {
                    return Err(StoreError::NotFound);
                }
                if !self.can_write(dom, path) {
                    return Err(StoreError::PermissionDenied);
                }
                self.remove_tree(path);
                fired.push(path.clone());
                Ok(StoreReply::Done)
            }
            StoreOp::Directory { path } => match self.nodes.get(path) {
                None => Err(StoreError::NotFound),
                Some(_) if !self.can_read(dom, path) => Err(StoreError::PermissionDenied),
                Some(_) => {
                    let prefix = alloc::format!("{path}/");
                    let names = self
                        .nodes
                        .keys()
                        .filter_map(|k| k.strip_prefix(prefix.as_str()))
                        .filter(|rest| !rest.contains('/'))
                        .map(String::from)
                        .collect();
                    Ok(StoreReply::Children(names))
                }
            },
            StoreOp::GetPerms { path } => match self.nodes.get(path) {
                None => Err(StoreError::NotFound),
                Some(_) if !self.can_read(dom, path) => Err(StoreError::PermissionDenied),
                Some(n) => Ok(StoreReply::Perms(n.perms.clone())),
            },
            StoreOp::SetPerms {
                path,
                perms,
                best_effort,
            } => {
                let r = match self.nodes.get(path) {
                    None => Err(StoreError::NotFound),
                    // No owner: xenstored refuses the list (EINVAL), whoever asks; every node
                    // keeps its owner first.
                    Some(_) if perms.is_empty() => return Err(StoreError::Other(None)),
                    Some(n) if dom != DomId(0) && n.perms[0].domid != dom => {
                        Err(StoreError::PermissionDenied)
                    }
                    Some(_) if dom != DomId(0) && perms[0].domid != dom => {
                        Err(StoreError::PermissionDenied)
                    }
                    Some(_) => {
                        self.nodes
                            .get_mut(path)
                            .ok_or(StoreError::Other(None))?
                            .perms = perms.clone();
                        fired.push(path.clone());
                        Ok(StoreReply::Done)
                    }
                };
                match r {
                    Err(StoreError::PermissionDenied) if *best_effort => Ok(StoreReply::Done),
                    r => r,
                }
            }
            StoreOp::Watch { path, token } => {
                self.watches.push(Watch {
                    conn,
                    dom,
                    path: path.clone(),
                    token: token.clone(),
                });
                self.events.push((conn, path.clone(), token.clone()));
                Ok(StoreReply::Done)
            }
            StoreOp::Unwatch { path, token } => {
                let before = self.watches.len();
                self.watches
                    .retain(|w| !(w.conn == conn && &w.path == path && &w.token == token));
                if self.watches.len() == before {
                    Err(StoreError::NotFound)
                } else {
                    Ok(StoreReply::Done)
                }
            }
            StoreOp::Transaction(ops) => {
                let mut copy = self.clone();
                let mut f = Vec::new();
                for op in ops {
                    if matches!(
                        op,
                        StoreOp::Transaction(_) | StoreOp::Watch { .. } | StoreOp::Unwatch { .. }
                    ) {
                        return Err(StoreError::Other(None));
                    }
                    copy.apply(conn, dom, op, &mut f)?;
                }
                *self = copy;
                fired.extend(f);
                Ok(StoreReply::Done)
            }
        }
    }

    /// Performs `op` for `dom` on its connection numbered as the domain, and fires watches.
    pub(crate) fn perform(&mut self, dom: DomId, op: &StoreOp) -> Result<StoreReply, StoreError> {
        self.perform_on(u64::from(dom.0), dom, op)
    }

    /// Performs `op` for `dom` on connection `conn` and fires watches.
    pub(crate) fn perform_on(
        &mut self,
        conn: u64,
        dom: DomId,
        op: &StoreOp,
    ) -> Result<StoreReply, StoreError> {
        let mut fired = Vec::new();
        let r = self.apply(conn, dom, op, &mut fired);
        for p in fired {
            self.fire(&p);
        }
        r
    }

    pub(crate) fn get(&self, path: &str) -> Option<&str> {
        self.nodes
            .get(path)
            .map(|n| core::str::from_utf8(&n.value).unwrap_or("<binary>"))
    }

    pub(crate) fn perms(&self, path: &str) -> Option<&[Perm]> {
        self.nodes.get(path).map(|n| &n.perms[..])
    }
}
