//! Per-domain quotas with C xenstored's defaults (`docs/xenstored-behaviours.md` §10) and the
//! server's configuration.

/// Quotas applied to unprivileged domains, with C xenstored's defaults. Going over one
/// gets C's error name (never `EQUOTA`, D13).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own, its home included (`-E`, 1000; over: `ENOSPC`). As in C,
    /// a creation in a transaction is checked against what the domain owns outside it,
    /// and the commit of a transaction that created nodes is refused (`ENOSPC`) if the
    /// domain would then own this many nodes or more (one fewer than outside
    /// transactions), so parallel transactions cannot add up past the quota.
    pub nodes_per_domain: usize,
    /// Size of a node record: 24 bytes + 8 per permission + value + child names must
    /// stay below this (`-S`, 2048; over: `ENOSPC`).
    pub entry_size: usize,
    /// Watches per domain; like C, one more than this is allowed (`-W`, 128; over:
    /// `E2BIG`).
    pub watches_per_domain: usize,
    /// Open transactions per connection; like C, one more than this is allowed (`-t`,
    /// 10; over: `ENOSPC`).
    pub transactions: usize,
    /// Longest path below `/local/domain/<id>/` (or whole path elsewhere) (`-M`, 2048;
    /// over: `EINVAL`). Applies to every connection.
    pub path_max: usize,
    /// Permission entries per node (`-A`, 5; over: `ENOSPC`).
    pub perms_per_node: usize,
    /// Distinct nodes one transaction may access: read, written, created, deleted or
    /// found missing (`-Q transaction-nodes=`, 1024). Over: the request gets `ENOSPC`
    /// and the transaction can no longer commit (its commit gets `ENOMEM`), as in C.
    pub transaction_nodes: usize,
    /// Bytes the open transactions of one domain's connection may hold (paths and node
    /// copies, approximately) (`-Q memory=`, 2.5 MiB as C's hard quota). Over: `ENOMEM`
    /// and the transaction can no longer commit. C counts a domain's nodes, watches and
    /// requests here too, and stops reading its ring instead of replying; this bound
    /// only covers what transactions hold, which nothing else limits.
    pub memory_per_domain: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            nodes_per_domain: 1000,
            entry_size: 2048,
            watches_per_domain: 128,
            transactions: 10,
            path_max: 2048,
            perms_per_node: 5,
            transaction_nodes: 1024,
            memory_per_domain: 2 * 1024 * 1024 + 512 * 1024,
        }
    }
}

/// Server configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Quotas for unprivileged domains.
    pub quotas: Quotas,
    /// A domain other than 0 that is privileged too (C's `--priv-domid`).
    pub priv_domid: Option<u32>,
    /// Watch events queued for a connection that does not read; more are dropped
    /// (logged). Replies are never dropped: a connection whose replies cannot be
    /// delivered is not read from until they are.
    pub max_queued_events: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            quotas: Quotas::default(),
            priv_domid: None,
            max_queued_events: 1024,
        }
    }
}
