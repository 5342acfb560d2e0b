//! The hypervisor's records and the one lock over them: domains, grant entries, grant handles,
//! mappings, ports, joined contexts, the peer-close mode, and the hook to the store service.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use pore_core::{DomId, ErrorKind};

use crate::error::{Result, SimError};
use crate::sys::mmap::{memfd, Mmap};
use crate::table::{EndRef, Table};

/// The reserved ref of a domain's xenstore page (`GNTTAB_RESERVED_XENSTORE`).
pub(super) const STORE_REF: u32 = 1;

/// A resource context of a domain: what one process of a real Xen guest holds through its own
/// gntdev, gntalloc and evtchn files. Grants, mappings, ports and their unmap notifications
/// belong to the context that made them; only it may end, unmap, close or re-arm them.
pub(crate) type CtxId = u32;

/// The context of a domain's creator: the handle of [`crate::Hypervisor::create_domain`] or
/// the process of [`crate::SimDomain::connect`], and every dom0 handle. It lives as long as
/// the domain. Contexts that join a domain later get other (never reused) ids.
pub(crate) const DOMAIN_CTX: CtxId = 0;

/// What the remote end of an interdomain event channel learns when one end's port closes
/// (closed explicitly, or released because its process, joined context or domain died).
///
/// Set with [`Hypervisor::set_peer_close`](crate::Hypervisor::set_peer_close); the hypervisor
/// applies it when the port closes, so it holds alike for domains of this process and for
/// domain processes reached through the broker (they read the outcome from the shared event
/// table; nothing to configure in the child). Unmap notifications fire before a dying
/// context's ports close in both modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerClose {
    /// The simulator's affordance (the default): once the peer's port is gone, the remote
    /// end's `wait`, `try_wait`, `select` and `notify` fail with
    /// [`pore_core::ErrorKind::PeerGone`] (a pending event is delivered first), and the remote
    /// domain's sleeping threads are woken to see it. Convenient, but real Xen does not do it:
    /// a driver that relies on it may not notice a dead peer on Xen.
    #[default]
    Reported,
    /// What Xen does (`evtchn_close`): the remote port becomes unbound but stays open, and
    /// nothing is sent. Its `notify` succeeds and does nothing (Xen drops a send on an unbound
    /// port), its waits and selects time out as usual and never report `PeerGone`, and its
    /// owner still closes it (counted in
    /// [`Hypervisor::outstanding`](crate::Hypervisor::outstanding) until then). A peer's death
    /// is then learned only as on Xen: from xenstore, or from its unmap-notify (byte cleared,
    /// event sent) which fires before its ports close. Re-binding the now unbound port from the
    /// closing domain, which Xen allows, is not modelled (`PermissionDenied`).
    Silent,
}

/// The store service as the hypervisor sees it: told of every domain introduced (with dom0's
/// end of its store connection) and released. `crate::store` adapts a
/// [`crate::StoreService`] to it, wrapping the parts in handle types, so this module needs
/// none of them.
pub(crate) trait StoreHook: Send + Sync {
    /// A domain exists; `parts` is dom0's end of its xenstore connection.
    fn introduce(&self, parts: StoreParts);
    /// The domain died.
    fn release(&self, dom: DomId);
}

/// Dom0's end of one domain's xenstore connection, as the hypervisor sets it up: the domain's
/// store page mapped for dom0 and the port dom0 bound to the domain's store port.
pub(crate) struct StoreParts {
    /// The hypervisor dom0's handles reach.
    pub(crate) hv: Arc<Hv>,
    /// The introduced domain.
    pub(crate) dom: DomId,
    /// Its name.
    pub(crate) name: String,
    /// Its store page, mapped.
    pub(crate) page: Mmap,
    /// Dom0's port, bound to the domain's store port.
    pub(crate) port: u32,
    /// Dom0's end of that channel in the event table.
    pub(crate) end: EndRef,
}

/// A memfd of pages.
#[derive(Debug)]
pub(crate) struct Block {
    pub(super) fd: OwnedFd,
    pub(super) pages: usize,
}

impl Block {
    pub(super) fn new(pages: usize) -> Result<Arc<Block>> {
        let fd = memfd("pore-sim-grant", pages).map_err(SimError::os("allocating grant pages"))?;
        Ok(Arc::new(Block { fd, pages }))
    }

    pub(super) fn dup(&self) -> Result<OwnedFd> {
        self.fd
            .try_clone()
            .map_err(SimError::os("duplicating a page descriptor"))
    }

    /// Zeroes one byte (unmap-notify `CLEAR_BYTE`), through a short-lived mapping.
    pub(super) fn clear_byte(&self, page: usize, offset: usize) {
        match Mmap::map_fd(self.fd.as_fd(), page, 1) {
            Ok(map) => {
                if let Some(b) = map.u8_at(offset) {
                    b.store(0, Ordering::SeqCst);
                }
            }
            Err(e) => tracing::warn!(error = %e, "unmap-notify could not map the page"),
        }
    }
}

#[derive(Debug)]
pub(super) struct GrantEntry {
    pub(super) grantee: DomId,
    pub(super) block: Arc<Block>,
    pub(super) page: usize,
    pub(super) maps: u32,
    pub(super) revoke_later: bool,
    pub(super) system: bool,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Notify {
    pub(super) clear_byte: Option<usize>,
    pub(super) port: Option<u32>,
}

#[derive(Debug)]
pub(super) struct GrantHandle {
    pub(super) owner: DomId,
    pub(super) ctx: CtxId,
    pub(super) refs: Vec<u32>,
    pub(super) block: Arc<Block>,
    pub(super) notify: Notify,
}

#[derive(Debug)]
pub(super) struct Mapping {
    pub(super) mapper: DomId,
    pub(super) ctx: CtxId,
    pub(super) granter: DomId,
    pub(super) refs: Vec<u32>,
    pub(super) pages: Vec<(Arc<Block>, usize)>,
    pub(super) notify: Notify,
}

#[derive(Debug)]
pub(super) struct PortEntry {
    pub(super) end: EndRef,
    pub(super) ctx: CtxId,
    /// The domain allowed to bind (allocator end) or the domain bound to (binder end).
    pub(super) remote: DomId,
    /// The other end, once bound.
    pub(super) peer: Option<(DomId, u32)>,
    pub(super) system: bool,
}

#[derive(Debug)]
pub(super) struct StoreRec {
    pub(super) block: Arc<Block>,
    pub(super) port: u32,
}

#[derive(Debug)]
pub(super) struct DomRec {
    pub(super) name: String,
    pub(super) store: Option<StoreRec>,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) domains: BTreeMap<u16, DomRec>,
    pub(super) next_domid: u16,
    pub(super) grants: HashMap<(DomId, u32), GrantEntry>,
    pub(super) next_ref: HashMap<DomId, u32>,
    pub(super) ports: HashMap<(DomId, u32), PortEntry>,
    pub(super) next_port: HashMap<DomId, u32>,
    pub(super) free_slots: Vec<u32>,
    pub(super) next_slot: u32,
    pub(super) grant_handles: HashMap<u32, GrantHandle>,
    pub(super) mappings: HashMap<u32, Mapping>,
    pub(super) next_handle: u32,
    /// Contexts that joined a domain and are still there, with their domain.
    pub(super) joined: HashMap<CtxId, DomId>,
    pub(super) next_ctx: CtxId,
    /// What a port's close tells the remote end.
    pub(super) peer_close: PeerClose,
}

/// The hypervisor shared by the `Hypervisor` handle, in-process domains and the broker.
pub(crate) struct Hv {
    state: Mutex<State>,
    pub(crate) table: Arc<Table>,
    pub(super) service: Mutex<Option<Arc<dyn StoreHook>>>,
    me: Weak<Hv>,
}

impl std::fmt::Debug for Hv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hv").finish_non_exhaustive()
    }
}

pub(super) fn refused(kind: ErrorKind, message: &'static str) -> SimError {
    SimError::refused(kind, message)
}

impl Hv {
    /// A hypervisor; `process_local` when no domain process will ever connect (no broker).
    pub(crate) fn new(process_local: bool) -> Result<Arc<Hv>> {
        let table = Table::create(process_local)
            .map_err(SimError::os("creating the event table"))?
            .into_shared();
        let hv = Arc::new_cyclic(|me| Hv {
            state: Mutex::new(State {
                next_domid: 1,
                ..State::default()
            }),
            table,
            service: Mutex::new(None),
            me: me.clone(),
        });
        hv.lock().domains.insert(
            0,
            DomRec {
                name: "Domain-0".into(),
                store: None,
            },
        );
        Ok(hv)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the records leaves the maps consistent between statements that can
        // fail, so a poisoned lock (a panic elsewhere while holding it) is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn arc(&self) -> Arc<Hv> {
        self.me
            .upgrade()
            .expect("the hypervisor is alive while its methods run")
    }
}
