//! An in-memory xenstore (`std`): the straw without a xenstored.
//!
//! [`MemoryStore`] holds the nodes, permissions, transactions and watches of a xenstore the
//! way C xenstored (or, with [`Ownership::Parent`], oxenstored) treats unprivileged domains;
//! each [`MemoryStoreClient`] is one connection of one domain to it, and implements
//! [`StoreClient`]. With it a [`Manager`](crate::manager::Manager) runs on any backend (pore-core's
//! loopback, the simulator, real grants in a test) without a xenstored: for tests, examples
//! and set-ups where both ends live in one process.
//!
//! The toolstack's part is yours: [`MemoryStore::add_domain`] creates a domain's home
//! (`/local/domain/<id>` and its `data`, owned by the domain), [`MemoryStore::remove_domain`]
//! removes it as when the domain dies.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use pore_core::{loopback::Loopback, DomId};
//! use pore_straw::handshake::HandshakeConfig;
//! use pore_straw::manager::{Manager, ManagerConfig};
//! use pore_straw::memstore::MemoryStore;
//! use pore_straw::Endpoint;
//!
//! let xen = Loopback::new();
//! let store = MemoryStore::new();
//! let cfg = ManagerConfig {
//!     // pore-core's loopback maps whole grants only: the LING layout.
//!     handshake: HandshakeConfig { v2_pages: None, ..HandshakeConfig::default() },
//!     ..ManagerConfig::default()
//! };
//! let start = |id: u16| {
//!     store.add_domain(DomId(id));
//!     let me = Endpoint::seed(DomId(id));
//!     Manager::start(xen.domain(DomId(id)), store.client(DomId(id)), me, cfg.clone())
//! };
//! let (m1, m2) = (start(1)?, start(2)?);
//! let a = m1.open(&Endpoint::seed(DomId(2)))?;
//! let b = m2.accept(Duration::from_secs(10))?;
//! a.sender().send(Bytes::from_static(b"hello"))?;
//! assert_eq!(b.receiver().recv_timeout(Duration::from_secs(10))?, "hello");
//! assert_eq!(store.read("/local/domain/2/data/straw/1/state").as_deref(), Some("4"));
//! a.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::string::{String, ToString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use std::vec::Vec;

use pore_core::DomId;

use crate::manager::{StoreClient, WatchEvent};
use crate::memtree::Store;
use crate::ops::{Perm, StoreError, StoreOp, StoreReply};

pub use crate::memtree::Ownership;

/// Connection numbers start above every domain id ([`Store::perform`] uses the domain's).
const FIRST_CONN: u64 = 1 << 16;

struct Shared {
    store: Mutex<Store>,
    changed: Condvar,
    next_conn: AtomicU64,
}

/// An in-memory xenstore shared by the domains of one process: clone it freely (every clone
/// is the same store). See the [module docs](self).
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl core::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("nodes", &self.lock().nodes.len())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store (`/`, `/local`, `/local/domain`, owned by dom0) whose new nodes are owned
    /// by the domain that creates them, as C xenstored does.
    pub fn new() -> Self {
        Self::with_ownership(Ownership::Creator)
    }

    /// An empty store with the given rule for the owner of new nodes.
    pub fn with_ownership(ownership: Ownership) -> Self {
        MemoryStore {
            shared: Arc::new(Shared {
                store: Mutex::new(Store::new(ownership)),
                changed: Condvar::new(),
                next_conn: AtomicU64::new(FIRST_CONN),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.shared.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The toolstack's work for a new domain: `/local/domain/<id>` and its `data`, owned by
    /// the domain (kept as they are if they exist).
    pub fn add_domain(&self, domid: DomId) {
        let mut st = self.lock();
        if !st
            .nodes
            .contains_key(&std::format!("/local/domain/{}", domid.0))
        {
            st.add_domain(domid.0);
        }
    }

    /// The toolstack's work for a dead domain: its home and its watches go; watchers of its
    /// nodes see them go.
    pub fn remove_domain(&self, domid: DomId) {
        self.lock().remove_domain(domid.0);
        self.shared.changed.notify_all();
    }

    /// A new connection of `domid` (whose home [`MemoryStore::add_domain`] made). Its
    /// watches deliver their events to it alone, and go when its last clone is dropped.
    pub fn client(&self, domid: DomId) -> MemoryStoreClient {
        MemoryStoreClient {
            conn: Arc::new(Conn {
                store: self.clone(),
                dom: domid,
                id: self.shared.next_conn.fetch_add(1, Ordering::Relaxed),
            }),
        }
    }

    /// Performs `op` as `domid` outside any connection (its watches' events go nowhere), e.g.
    /// what a hostile domain writes.
    pub fn perform_as(&self, domid: DomId, op: &StoreOp) -> Result<StoreReply, StoreError> {
        let r = self.lock().perform(domid, op);
        self.shared.changed.notify_all();
        r
    }

    /// A node's value as text (`<binary>` if it is not UTF-8), read with dom0's rights.
    pub fn read(&self, path: &str) -> Option<String> {
        self.lock().get(path).map(ToString::to_string)
    }

    /// A node's permissions (the owner first), read with dom0's rights.
    pub fn perms(&self, path: &str) -> Option<Vec<Perm>> {
        self.lock().perms(path).map(<[Perm]>::to_vec)
    }
}

/// One connection of one domain to a [`MemoryStore`]: a [`StoreClient`] for a manager.
/// Clones share the connection.
#[derive(Debug, Clone)]
pub struct MemoryStoreClient {
    conn: Arc<Conn>,
}

#[derive(Debug)]
struct Conn {
    store: MemoryStore,
    dom: DomId,
    id: u64,
}

/// A closed connection's watches and undelivered events go, as xenstored drops them.
impl Drop for Conn {
    fn drop(&mut self) {
        let mut st = self.store.lock();
        st.watches.retain(|w| w.conn != self.id);
        st.events.retain(|e| e.0 != self.id);
    }
}

impl MemoryStoreClient {
    /// The domain this connection acts as.
    pub fn domid(&self) -> DomId {
        self.conn.dom
    }

    /// The store.
    pub fn store(&self) -> &MemoryStore {
        &self.conn.store
    }
}

impl StoreClient for MemoryStoreClient {
    fn perform(&self, op: &StoreOp) -> Result<StoreReply, StoreError> {
        let c = &self.conn;
        let r = c.store.lock().perform_on(c.id, c.dom, op);
        c.store.shared.changed.notify_all();
        r
    }

    fn next_event(&self, timeout: Duration) -> Option<WatchEvent> {
        let end = Instant::now() + timeout;
        let store = &self.conn.store;
        let mut st = store.lock();
        loop {
            if let Some(i) = st.events.iter().position(|e| e.0 == self.conn.id) {
                let (_, path, token) = st.events.remove(i);
                return Some(WatchEvent { path, token });
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            st = store
                .shared
                .changed
                .wait_timeout(st, end - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(c: &MemoryStoreClient, path: &str) {
        let op = StoreOp::Write {
            path: path.to_string(),
            value: "1".to_string(),
        };
        c.perform(&op).unwrap();
    }

    /// Found by the `straw_manager` fuzz target: an empty permission list (no owner) panicked
    /// the store (`perms[0]`) instead of being refused.
    #[test]
    fn an_empty_permission_list_is_refused() {
        let store = MemoryStore::new();
        store.add_domain(DomId(2));
        let c = store.client(DomId(2));
        write(&c, "/local/domain/2/data/x");
        for dom in [DomId(2), DomId(0)] {
            let op = StoreOp::SetPerms {
                path: "/local/domain/2/data/x".to_string(),
                perms: Vec::new(),
                best_effort: dom == DomId(0),
            };
            assert!(matches!(
                store.perform_as(dom, &op),
                Err(StoreError::Other(None))
            ));
        }
        let perms = store.perms("/local/domain/2/data/x").unwrap();
        assert_eq!(perms[0].domid, DomId(2));
        assert_eq!(store.read("/local/domain/2/data/x").as_deref(), Some("1"));
    }

    #[test]
    fn watches_belong_to_their_connection_and_go_with_it() {
        let store = MemoryStore::new();
        store.add_domain(DomId(1));
        let (a, c) = (store.client(DomId(1)), store.client(DomId(1)));
        let b = a.clone();
        let watch = StoreOp::Watch {
            path: "/local/domain/1/data".to_string(),
            token: "t".to_string(),
        };
        a.perform(&watch).unwrap();
        // A watch fires once when set, for its connection alone (clones share it).
        assert_eq!(c.next_event(Duration::ZERO), None);
        assert_eq!(b.next_event(Duration::ZERO).unwrap().token, "t");
        drop(a);
        write(&c, "/local/domain/1/data/x");
        let ev = b.next_event(Duration::ZERO).unwrap();
        assert_eq!(ev.path, "/local/domain/1/data/x");
        write(&c, "/local/domain/1/data/y");
        drop(b);
        assert!(store.lock().watches.is_empty());
        assert!(
            store.lock().events.is_empty(),
            "undelivered events went too"
        );
        write(&c, "/local/domain/1/data/z");
        assert!(store.lock().events.is_empty());
        assert_eq!(store.read("/local/domain/1/data/z").as_deref(), Some("1"));
    }
}
