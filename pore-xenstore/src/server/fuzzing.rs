//! A read-only view of a [`Store`]'s internals (feature `fuzzing`): the fuzz targets
//! recount the tree, the accounting, the watches and the transactions from it after
//! every step. Not for production use.

use std::collections::BTreeMap;

use crate::perms::Perm;

use super::{ConnId, Store};

/// One node as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its value.
    pub value: Vec<u8>,
    /// The permissions that apply (entries naming released domains left out).
    pub perms: Vec<Perm>,
    /// The permissions as set (what GET_PERMS lists).
    pub listed: Vec<Perm>,
    /// Child names in order.
    pub children: Vec<String>,
    /// Its generation.
    pub generation: u64,
}

/// One open transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxInfo {
    /// Its id.
    pub id: u32,
    /// Bytes it is charged for (the memory quota).
    pub mem: usize,
    /// Bytes its maps really hold (paths, node records, perms copies).
    pub held: usize,
    /// Distinct nodes it accessed.
    pub nodes: usize,
    /// A request was refused for a quota: it can no longer commit.
    pub failed: bool,
}

/// One connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// The domain it acts for.
    pub domid: u32,
    /// Its open transactions, by id.
    pub txs: Vec<TxInfo>,
}

/// Everything the store holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Nodes by path.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Nodes per owner, as the store counts them.
    pub owned: BTreeMap<u32, usize>,
    /// Connections.
    pub conns: BTreeMap<ConnId, ConnInfo>,
    /// Watches: connection, canonical path, token.
    pub watches: Vec<(ConnId, String, Vec<u8>)>,
    /// Introduced domains and their connection.
    pub domains: BTreeMap<u32, ConnId>,
    /// Stub domain -> its target.
    pub targets: BTreeMap<u32, u32>,
    /// Permissions of the special nodes.
    pub special_perms: BTreeMap<String, Vec<Perm>>,
}

impl Store {
    /// A copy of the whole state, for invariant checks.
    pub fn fuzz_snapshot(&self) -> Snapshot {
        let nodes = self
            .tree
            .nodes()
            .map(|(p, n)| {
                let info = NodeInfo {
                    value: n.value().to_vec(),
                    perms: n.perms.to_vec(),
                    listed: n.listed_perms().to_vec(),
                    children: n.children().iter().map(str::to_owned).collect(),
                    generation: n.generation,
                };
                (p.to_owned(), info)
            })
            .collect();
        let conns = self
            .conns
            .iter()
            .map(|(&id, c)| {
                let mut txs: Vec<TxInfo> = c
                    .txs
                    .iter()
                    .map(|(&id, t)| TxInfo {
                        id,
                        mem: t.mem(),
                        held: t.held_bytes(),
                        nodes: t.nodes(),
                        failed: t.failed(),
                    })
                    .collect();
                txs.sort_by_key(|t| t.id);
                (
                    id,
                    ConnInfo {
                        domid: c.domid,
                        txs,
                    },
                )
            })
            .collect();
        Snapshot {
            nodes,
            owned: self.tree.owned_counts().collect(),
            conns,
            watches: self
                .watches
                .all()
                .map(|(c, p, t)| (c, p.to_owned(), t.to_vec()))
                .collect(),
            domains: self.domains.iter().map(|(&d, v)| (d, v.conn)).collect(),
            targets: self.targets.iter().map(|(&a, &b)| (a, b)).collect(),
            special_perms: self
                .special_perms
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}
