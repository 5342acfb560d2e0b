//! The simulated hypervisor: domains, grant tables, event channels and their accounting.
//!
//! All bookkeeping sits behind one mutex; the fast paths (notify, wait, touching pages) never
//! come here. Every request is checked against Xen's rules and refused with an error, never a
//! panic, whatever a caller or a domain process sends.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use pore_core::{DomId, ErrorKind, PAGE_SIZE};

use crate::error::{Result, SimError};
use crate::proto::{Op, Reply, Request, NONE};
use crate::store::{StoreLink, StoreService};
use crate::sys::mmap::{memfd, Mmap};
use crate::table::{EndRef, Table, MAX_CHANNELS, MAX_DOMAINS};
use crate::{Outstanding, PeerClose};

/// Grant refs below this are reserved, as in Xen (`GNTTAB_NR_RESERVED_ENTRIES`).
const FIRST_USER_REF: u32 = 8;
/// The reserved ref of a domain's xenstore page (`GNTTAB_RESERVED_XENSTORE`).
pub(crate) const STORE_REF: u32 = 1;
/// Outstanding grant entries one domain may hold.
const MAX_GRANTS_PER_DOMAIN: usize = 64 * 1024;
/// Ports one domain may hold (Xen's 2-level ABI limit on 64-bit guests).
const MAX_PORTS_PER_DOMAIN: usize = 4096;
/// Most pages in one grant or one map request.
const MAX_PAGES_PER_REQUEST: usize = 16 * 1024;
/// Most contexts joined to one domain at once (further processes or handles of it).
const MAX_JOINED_PER_DOMAIN: usize = 256;

/// A resource context of a domain: what one process of a real Xen guest holds through its own
/// gntdev, gntalloc and evtchn files. Grants, mappings, ports and their unmap notifications
/// belong to the context that made them; only it may end, unmap, close or re-arm them.
pub(crate) type CtxId = u32;

/// The context of a domain's creator: the handle of [`crate::Hypervisor::create_domain`] or
/// the process of [`crate::SimDomain::connect`], and every dom0 handle. It lives as long as
/// the domain. Contexts that join a domain later get other (never reused) ids.
pub(crate) const DOMAIN_CTX: CtxId = 0;

/// A memfd of pages.
#[derive(Debug)]
pub(crate) struct Block {
    fd: OwnedFd,
    pages: usize,
}

impl Block {
    fn new(pages: usize) -> Result<Arc<Block>> {
        let fd = memfd("pore-sim-grant", pages).map_err(SimError::os("allocating grant pages"))?;
        Ok(Arc::new(Block { fd, pages }))
    }

    fn dup(&self) -> Result<OwnedFd> {
        self.fd
            .try_clone()
            .map_err(SimError::os("duplicating a page descriptor"))
    }

    /// Zeroes one byte (unmap-notify `CLEAR_BYTE`), through a short-lived mapping.
    fn clear_byte(&self, page: usize, offset: usize) {
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
struct GrantEntry {
    grantee: DomId,
    block: Arc<Block>,
    page: usize,
    maps: u32,
    revoke_later: bool,
    system: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Notify {
    clear_byte: Option<usize>,
    port: Option<u32>,
}

#[derive(Debug)]
struct GrantHandle {
    owner: DomId,
    ctx: CtxId,
    refs: Vec<u32>,
    block: Arc<Block>,
    notify: Notify,
}

#[derive(Debug)]
struct Mapping {
    mapper: DomId,
    ctx: CtxId,
    granter: DomId,
    refs: Vec<u32>,
    pages: Vec<(Arc<Block>, usize)>,
    notify: Notify,
}

#[derive(Debug)]
struct PortEntry {
    end: EndRef,
    ctx: CtxId,
    /// The domain allowed to bind (allocator end) or the domain bound to (binder end).
    remote: DomId,
    /// The other end, once bound.
    peer: Option<(DomId, u32)>,
    system: bool,
}

#[derive(Debug)]
struct StoreRec {
    block: Arc<Block>,
    port: u32,
}

#[derive(Debug)]
struct DomRec {
    name: String,
    store: Option<StoreRec>,
}

#[derive(Debug, Default)]
struct State {
    domains: BTreeMap<u16, DomRec>,
    next_domid: u16,
    grants: HashMap<(DomId, u32), GrantEntry>,
    next_ref: HashMap<DomId, u32>,
    ports: HashMap<(DomId, u32), PortEntry>,
    next_port: HashMap<DomId, u32>,
    free_slots: Vec<u32>,
    next_slot: u32,
    grant_handles: HashMap<u32, GrantHandle>,
    mappings: HashMap<u32, Mapping>,
    next_handle: u32,
    /// Contexts that joined a domain and are still there, with their domain.
    joined: HashMap<CtxId, DomId>,
    next_ctx: CtxId,
    /// What a port's close tells the remote end.
    peer_close: PeerClose,
}

/// The hypervisor shared by the `Hypervisor` handle, in-process domains and the broker.
pub(crate) struct Hv {
    state: Mutex<State>,
    pub(crate) table: Arc<Table>,
    service: Mutex<Option<Arc<dyn StoreService>>>,
    me: Weak<Hv>,
}

impl std::fmt::Debug for Hv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hv").finish_non_exhaustive()
    }
}

fn refused(kind: ErrorKind, message: &'static str) -> SimError {
    SimError::refused(kind, message)
}

/// Reads the arguments of a request, refusing malformed ones.
struct Args<'a>(std::slice::Iter<'a, u32>);

impl Args<'_> {
    fn next(&mut self) -> Result<u32> {
        self.0
            .next()
            .copied()
            .ok_or_else(|| refused(ErrorKind::InvalidInput, "missing request argument"))
    }
    fn dom(&mut self) -> Result<DomId> {
        let d = self.next()?;
        if d as usize >= MAX_DOMAINS {
            return Err(refused(
                ErrorKind::InvalidInput,
                "domain id outside the simulator's range",
            ));
        }
        Ok(DomId(d as u16))
    }
    fn opt(&mut self) -> Result<Option<u32>> {
        Ok(Some(self.next()?).filter(|&v| v != NONE))
    }
    fn rest(self) -> Vec<u32> {
        self.0.copied().collect()
    }
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

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the maps consistent between statements that can fail, so a
        // poisoned lock (a panic elsewhere while holding it) is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn arc(&self) -> Arc<Hv> {
        self.me
            .upgrade()
            .expect("the hypervisor is alive while its methods run")
    }

    // ----------------------------------------------------------------------------------------
    // Domains

    /// Creates a domain: assigns a domid, gives it a store page and an unbound store port for
    /// dom0, and introduces it to the store service if there is one.
    pub(crate) fn create_domain(&self, name: &str) -> Result<DomId> {
        let (dom, link) = {
            let mut st = self.lock();
            let dom = Self::free_domid(&mut st)?;
            st.domains.insert(
                dom.0,
                DomRec {
                    name: name.to_owned(),
                    store: None,
                },
            );
            let block = match Block::new(1) {
                Ok(b) => b,
                Err(e) => {
                    st.domains.remove(&dom.0);
                    return Err(e);
                }
            };
            st.grants.insert(
                (dom, STORE_REF),
                GrantEntry {
                    grantee: DomId::DOM0,
                    block: block.clone(),
                    page: 0,
                    maps: 0,
                    revoke_later: false,
                    system: true,
                },
            );
            let (port, _) = match self.alloc_port(&mut st, dom, DOMAIN_CTX, DomId::DOM0, true) {
                Ok(p) => p,
                Err(e) => {
                    st.grants.remove(&(dom, STORE_REF));
                    st.domains.remove(&dom.0);
                    return Err(e);
                }
            };
            if let Some(rec) = st.domains.get_mut(&dom.0) {
                rec.store = Some(StoreRec {
                    block: block.clone(),
                    port,
                });
            }
            tracing::debug!(%dom, name, "simulated domain created");
            let link = if self.service_get().is_some() {
                self.store_link(&mut st, dom)
            } else {
                None
            };
            (dom, link)
        };
        if let (Some(link), Some(svc)) = (link, self.service_get()) {
            svc.domain_introduced(link);
        }
        Ok(dom)
    }

    fn free_domid(st: &mut State) -> Result<DomId> {
        for _ in 0..MAX_DOMAINS {
            let d = st.next_domid;
            st.next_domid = if (d as usize) + 1 >= MAX_DOMAINS {
                1
            } else {
                d + 1
            };
            if d != 0 && !st.domains.contains_key(&d) {
                return Ok(DomId(d));
            }
        }
        Err(refused(
            ErrorKind::ResourceExhausted,
            "no free domain id in the simulator",
        ))
    }

    /// Binds dom0 to `dom`'s store port and maps its store page: what xenstored needs.
    fn store_link(&self, st: &mut State, dom: DomId) -> Option<StoreLink> {
        let rec = st.domains.get(&dom.0)?;
        let name = rec.name.clone();
        let store = rec.store.as_ref()?;
        let (block, port) = (store.block.clone(), store.port);
        let page = match Mmap::map_fd(block.fd.as_fd(), 0, 1) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, %dom, "mapping a store page for dom0 failed");
                return None;
            }
        };
        let (local, end) = match self.bind_port(st, DomId::DOM0, DOMAIN_CTX, dom, port, true) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, %dom, "binding a store port for dom0 failed");
                return None;
            }
        };
        let ctx = crate::domain::DomCtx::local(DomId::DOM0, self.arc());
        Some(StoreLink::new(
            dom,
            name,
            crate::domain::SimStorePage::new(page),
            crate::domain::SimChannel::new(ctx, local, end, dom, false),
        ))
    }

    fn service_get(&self) -> Option<Arc<dyn StoreService>> {
        self.service
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs (or removes) the store service and introduces every live domain to it.
    pub(crate) fn set_service(&self, svc: Option<Arc<dyn StoreService>>) {
        let old = std::mem::replace(
            &mut *self.service.lock().unwrap_or_else(|p| p.into_inner()),
            svc.clone(),
        );
        // The old service (and the store links it holds) goes without any lock held.
        drop(old);
        if let Some(svc) = svc {
            let links: Vec<StoreLink> = {
                let mut st = self.lock();
                let doms: Vec<u16> = st.domains.keys().copied().filter(|&d| d != 0).collect();
                doms.into_iter()
                    .filter_map(|d| self.store_link(&mut st, DomId(d)))
                    .collect()
            };
            for link in links {
                svc.domain_introduced(link);
            }
        }
    }

    /// Whether `dom` is alive.
    pub(crate) fn is_alive(&self, dom: DomId) -> bool {
        self.lock().domains.contains_key(&dom.0)
    }

    /// Live domains (dom0 included).
    pub(crate) fn domains(&self) -> Vec<(DomId, String)> {
        self.lock()
            .domains
            .iter()
            .map(|(&d, r)| (DomId(d), r.name.clone()))
            .collect()
    }

    /// A new context of the live domain `dom` (a further process or handle of it, with
    /// resources of its own). Dom0 cannot be joined: it is the toolstack's own.
    pub(crate) fn join_domain(&self, dom: DomId) -> Result<CtxId> {
        if dom == DomId::DOM0 {
            return Err(refused(
                ErrorKind::PermissionDenied,
                "dom0 cannot be joined (it is the toolstack's own)",
            ));
        }
        let mut st = self.lock();
        if !st.domains.contains_key(&dom.0) {
            return Err(refused(
                ErrorKind::NotFound,
                "joining a domain that does not exist",
            ));
        }
        if st.joined.values().filter(|&&d| d == dom).count() >= MAX_JOINED_PER_DOMAIN {
            return Err(refused(
                ErrorKind::ResourceExhausted,
                "too many contexts joined to the domain",
            ));
        }
        let ctx = loop {
            st.next_ctx = st.next_ctx.wrapping_add(1);
            let c = st.next_ctx;
            if c != DOMAIN_CTX && !st.joined.contains_key(&c) {
                break c;
            }
        };
        st.joined.insert(ctx, dom);
        tracing::debug!(%dom, ctx, "a context joined a simulated domain");
        Ok(ctx)
    }

    /// Sets what a port's close tells the remote end from now on.
    pub(crate) fn set_peer_close(&self, mode: PeerClose) {
        self.lock().peer_close = mode;
        tracing::debug!(?mode, "simulated peer-close mode");
    }

    /// What a port's close tells the remote end.
    pub(crate) fn peer_close(&self) -> PeerClose {
        self.lock().peer_close
    }

    /// How many contexts joined `dom` and are still there.
    pub(crate) fn joined_contexts(&self, dom: DomId) -> usize {
        self.lock().joined.values().filter(|&&d| d == dom).count()
    }

    /// Context `ctx` of `dom` ended (its process exited, its handle dropped): the domain's
    /// creator context takes the domain with it ([`Hv::domain_died`]); a joined one releases
    /// only what it holds ([`Hv::context_died`]).
    pub(crate) fn context_ended(&self, dom: DomId, ctx: CtxId) {
        if ctx == DOMAIN_CTX {
            self.domain_died(dom);
        } else {
            self.context_died(dom, ctx);
        }
    }

    /// A joined context ended while its domain lives on: its mappings and grants are released
    /// (its unmap notifications fire first), its ports closed (peers see PeerGone, or nothing
    /// with [`PeerClose::Silent`]). The domain, its other contexts and its store connection
    /// stay as they were.
    pub(crate) fn context_died(&self, dom: DomId, ctx: CtxId) {
        let mut st = self.lock();
        // Gone already if the domain died first (and its domid may have been reused since).
        if ctx == DOMAIN_CTX || st.joined.get(&ctx) != Some(&dom) {
            return;
        }
        st.joined.remove(&ctx);
        tracing::debug!(%dom, ctx, "a joined context of a simulated domain ended");
        self.release(&mut st, dom, Some(ctx));
    }

    /// Releases what `dom` holds (only what context `only` holds, if given): mappings and
    /// grants first, firing their unmap notifications while the ports are still open (as when
    /// a process exits and its gntdev/gntalloc files are released before its evtchn file),
    /// then the ports.
    fn release(&self, st: &mut State, dom: DomId, only: Option<CtxId>) {
        let mine = |d: DomId, c: CtxId| d == dom && only.is_none_or(|o| o == c);
        let maps: Vec<u32> = st
            .mappings
            .iter()
            .filter(|(_, m)| mine(m.mapper, m.ctx))
            .map(|(&h, _)| h)
            .collect();
        for h in maps {
            self.unmap_handle(st, h);
        }
        let grants: Vec<u32> = st
            .grant_handles
            .iter()
            .filter(|(_, g)| mine(g.owner, g.ctx))
            .map(|(&h, _)| h)
            .collect();
        for h in grants {
            let _ = self.end_handle(st, h, true);
        }
        let ports: Vec<u32> = st
            .ports
            .iter()
            .filter(|(&(d, _), e)| mine(d, e.ctx))
            .map(|(&(_, p), _)| p)
            .collect();
        for p in ports {
            let _ = self.close_port(st, dom, p);
        }
    }

    /// The domain died: all its contexts' mappings and grants are released (unmap-notify
    /// fires first), their ports closed (peers see PeerGone, or nothing with
    /// [`PeerClose::Silent`]), its store connection released.
    pub(crate) fn domain_died(&self, dom: DomId) {
        if dom == DomId::DOM0 {
            return;
        }
        {
            let mut st = self.lock();
            if !st.domains.contains_key(&dom.0) {
                return;
            }
            tracing::debug!(%dom, "simulated domain died");
            self.release(&mut st, dom, None);
            st.joined.retain(|_, d| *d != dom);
            // The store page: revoked now unless someone still maps it.
            if let Some(g) = st.grants.get_mut(&(dom, STORE_REF)) {
                if g.maps == 0 {
                    st.grants.remove(&(dom, STORE_REF));
                } else {
                    g.revoke_later = true;
                }
            }
            st.domains.remove(&dom.0);
            self.table.wake(dom);
        }
        if let Some(svc) = self.service_get() {
            svc.domain_released(dom);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Requests

    /// Handles one request from context `ctx` of `dom`.
    pub(crate) fn handle(&self, dom: DomId, ctx: CtxId, req: &Request) -> Result<Reply> {
        let mut args = Args(req.args.iter());
        let mut st = self.lock();
        if !st.domains.contains_key(&dom.0) {
            return Err(refused(ErrorKind::Closed, "the calling domain is dead"));
        }
        if ctx != DOMAIN_CTX && st.joined.get(&ctx) != Some(&dom) {
            return Err(refused(
                ErrorKind::Closed,
                "the calling context has left its domain",
            ));
        }
        match req.op {
            Op::Hello | Op::Join => Err(refused(
                ErrorKind::InvalidInput,
                "hello and join are only valid as a connection's first message",
            )),
            Op::Grant => {
                let remote = args.dom()?;
                let pages = args.next()? as usize;
                self.grant(&mut st, dom, ctx, remote, pages)
            }
            Op::GrantNotify | Op::MapNotify => {
                let handle = args.next()?;
                let clear = args.opt()?.map(|c| c as usize);
                let port = args.opt()?;
                self.set_notify(
                    &mut st,
                    dom,
                    ctx,
                    req.op,
                    handle,
                    Notify {
                        clear_byte: clear,
                        port,
                    },
                )
            }
            Op::EndAccess => {
                let handle = args.next()?;
                let defer = args.next()? != 0;
                match st.grant_handles.get(&handle) {
                    Some(g) if g.owner == dom && g.ctx == ctx => {}
                    _ => {
                        return Err(refused(
                            ErrorKind::NotFound,
                            "ending access to grants this domain does not hold",
                        ))
                    }
                }
                self.end_handle(&mut st, handle, defer)?;
                Ok(Reply::default())
            }
            Op::Map => {
                let remote = args.dom()?;
                let refs = args.rest();
                self.map(&mut st, dom, ctx, remote, &refs)
            }
            Op::Unmap => {
                let handle = args.next()?;
                match st.mappings.get(&handle) {
                    Some(m) if m.mapper == dom && m.ctx == ctx => {}
                    _ => {
                        return Err(refused(
                            ErrorKind::NotFound,
                            "unmapping pages this domain has not mapped",
                        ))
                    }
                }
                self.unmap_handle(&mut st, handle);
                Ok(Reply::default())
            }
            Op::AllocUnbound => {
                let remote = args.dom()?;
                let (port, end) = self.alloc_port(&mut st, dom, ctx, remote, false)?;
                Ok(Reply::words(vec![port, end.slot, end.side, end.gen]))
            }
            Op::Bind => {
                let remote = args.dom()?;
                let remote_port = args.next()?;
                let (port, end) = self.bind_port(&mut st, dom, ctx, remote, remote_port, false)?;
                Ok(Reply::words(vec![port, end.slot, end.side, end.gen]))
            }
            Op::Close => {
                let port = args.next()?;
                match st.ports.get(&(dom, port)) {
                    // Dom0 (the toolstack's xenstored) unbinds its end of a store connection;
                    // the domain's own store port stays for its lifetime.
                    Some(e) if e.system && dom != DomId::DOM0 => Err(refused(
                        ErrorKind::PermissionDenied,
                        "the store port belongs to the toolstack",
                    )),
                    Some(e) if e.ctx != ctx && !e.system => Err(refused(
                        ErrorKind::PermissionDenied,
                        "closing a port another context of the domain holds",
                    )),
                    Some(_) => self
                        .close_port(&mut st, dom, port)
                        .map(|_| Reply::default()),
                    None => Err(refused(
                        ErrorKind::Closed,
                        "closing a port that is not open",
                    )),
                }
            }
            Op::OpenStore => {
                // One ring, one driver: a second process driving it would interleave requests
                // and steal replies (Linux multiplexes processes in its xenbus driver; the
                // sim does not).
                if ctx != DOMAIN_CTX {
                    return Err(refused(
                        ErrorKind::Unsupported,
                        "a joined context has no store ring: the domain's creator drives it; reach xenstored through its socket",
                    ));
                }
                let store = st.domains.get(&dom.0).and_then(|r| r.store.as_ref());
                let Some(store) = store else {
                    return Err(refused(
                        ErrorKind::Unsupported,
                        "this domain has no xenstore page (dom0 reaches xenstored directly)",
                    ));
                };
                let fd = store.block.dup()?;
                let e = st
                    .ports
                    .get(&(dom, store.port))
                    .ok_or_else(|| refused(ErrorKind::Closed, "the store port is gone"))?;
                let end = e.end;
                let peer = e.remote;
                let port = store.port;
                Ok(Reply {
                    words: vec![port, end.slot, end.side, end.gen, peer.0 as u32],
                    fds: vec![fd],
                })
            }
        }
    }

    fn grant(
        &self,
        st: &mut State,
        dom: DomId,
        ctx: CtxId,
        remote: DomId,
        pages: usize,
    ) -> Result<Reply> {
        if pages == 0 {
            return Err(refused(ErrorKind::InvalidInput, "granting zero pages"));
        }
        if pages > MAX_PAGES_PER_REQUEST {
            return Err(refused(
                ErrorKind::InvalidInput,
                "too many pages in one grant",
            ));
        }
        let held = st.grants.keys().filter(|(d, _)| *d == dom).count();
        if held + pages > MAX_GRANTS_PER_DOMAIN {
            return Err(refused(
                ErrorKind::ResourceExhausted,
                "grant table of the domain is full",
            ));
        }
        let block = Block::new(pages)?;
        let fd = block.dup()?;
        let mut refs = Vec::with_capacity(pages);
        for page in 0..pages {
            let r = Self::free_ref(st, dom);
            st.grants.insert(
                (dom, r),
                GrantEntry {
                    grantee: remote,
                    block: block.clone(),
                    page,
                    maps: 0,
                    revoke_later: false,
                    system: false,
                },
            );
            refs.push(r);
        }
        let handle = Self::new_handle(st);
        let mut words = vec![handle];
        words.extend_from_slice(&refs);
        st.grant_handles.insert(
            handle,
            GrantHandle {
                owner: dom,
                ctx,
                refs,
                block,
                notify: Notify::default(),
            },
        );
        Ok(Reply {
            words,
            fds: vec![fd],
        })
    }

    fn free_ref(st: &mut State, dom: DomId) -> u32 {
        loop {
            let next = st.next_ref.entry(dom).or_insert(FIRST_USER_REF);
            let r = *next;
            *next = next.checked_add(1).unwrap_or(FIRST_USER_REF);
            if r >= FIRST_USER_REF && !st.grants.contains_key(&(dom, r)) {
                return r;
            }
        }
    }

    fn new_handle(st: &mut State) -> u32 {
        loop {
            st.next_handle = st.next_handle.wrapping_add(1);
            let h = st.next_handle;
            if h != 0 && !st.grant_handles.contains_key(&h) && !st.mappings.contains_key(&h) {
                return h;
            }
        }
    }

    fn set_notify(
        &self,
        st: &mut State,
        dom: DomId,
        ctx: CtxId,
        op: Op,
        handle: u32,
        notify: Notify,
    ) -> Result<Reply> {
        let (len, slot) = if op == Op::GrantNotify {
            match st.grant_handles.get_mut(&handle) {
                Some(g) if g.owner == dom && g.ctx == ctx => {
                    (g.refs.len() * PAGE_SIZE, &mut g.notify)
                }
                _ => return Err(refused(ErrorKind::NotFound, "no such grant handle")),
            }
        } else {
            match st.mappings.get_mut(&handle) {
                Some(m) if m.mapper == dom && m.ctx == ctx => {
                    (m.pages.len() * PAGE_SIZE, &mut m.notify)
                }
                _ => return Err(refused(ErrorKind::NotFound, "no such mapping")),
            }
        };
        if notify.clear_byte.is_some_and(|b| b >= len) {
            return Err(refused(
                ErrorKind::InvalidInput,
                "unmap-notify byte outside the pages",
            ));
        }
        *slot = notify;
        Ok(Reply::default())
    }

    /// Fires an unmap notification of `dom`: clear the byte, signal the port.
    fn fire(&self, st: &State, dom: DomId, notify: Notify, pages: &[(Arc<Block>, usize)]) {
        if let Some(off) = notify.clear_byte {
            if let Some((block, page)) = pages.get(off / PAGE_SIZE) {
                block.clear_byte(*page, off % PAGE_SIZE);
            }
        }
        if let Some(port) = notify.port {
            if let Some(e) = st.ports.get(&(dom, port)) {
                // Only into a live remote end: a port whose peer already closed is unbound
                // (Xen drops the send), and the peer's domid may have been reused since.
                if let Some((peer, peer_port)) = e.peer {
                    let bound = st
                        .ports
                        .get(&(peer, peer_port))
                        .is_some_and(|pe| pe.end.slot == e.end.slot);
                    if bound {
                        self.table.kick(e.end.slot, 1 - e.end.side, peer);
                    }
                }
            }
        }
    }

    /// Ends access to a grant handle's pages; with `defer`, pages the peer still maps go to
    /// the revoke-later list instead of failing.
    fn end_handle(&self, st: &mut State, handle: u32, defer: bool) -> Result<()> {
        let Some(g) = st.grant_handles.get(&handle) else {
            return Err(refused(ErrorKind::NotFound, "no such grant handle"));
        };
        let busy = g
            .refs
            .iter()
            .any(|r| st.grants.get(&(g.owner, *r)).is_some_and(|e| e.maps > 0));
        if busy && !defer {
            return Err(refused(
                ErrorKind::Busy,
                "ending access to pages the peer still maps",
            ));
        }
        let Some(g) = st.grant_handles.remove(&handle) else {
            return Ok(());
        };
        let pages: Vec<(Arc<Block>, usize)> =
            (0..g.block.pages).map(|p| (g.block.clone(), p)).collect();
        self.fire(st, g.owner, g.notify, &pages);
        for r in &g.refs {
            let key = (g.owner, *r);
            match st.grants.get_mut(&key) {
                Some(e) if e.maps > 0 => e.revoke_later = true,
                Some(_) => {
                    st.grants.remove(&key);
                }
                None => {}
            }
        }
        if busy {
            tracing::debug!(owner = %g.owner, "grant still mapped: deferred to revoke-later");
        }
        Ok(())
    }

    fn map(
        &self,
        st: &mut State,
        dom: DomId,
        ctx: CtxId,
        remote: DomId,
        refs: &[u32],
    ) -> Result<Reply> {
        if refs.is_empty() {
            return Err(refused(ErrorKind::InvalidInput, "mapping zero pages"));
        }
        if refs.len() > MAX_PAGES_PER_REQUEST {
            return Err(refused(
                ErrorKind::InvalidInput,
                "too many pages in one map",
            ));
        }
        let mut pages = Vec::with_capacity(refs.len());
        for r in refs {
            let e = st
                .grants
                .get(&(remote, *r))
                .filter(|e| !e.revoke_later)
                .ok_or_else(|| {
                    refused(ErrorKind::NotFound, "mapping a grant that does not exist")
                })?;
            if e.grantee != dom {
                return Err(refused(
                    ErrorKind::PermissionDenied,
                    "mapping a grant made to another domain",
                ));
            }
            pages.push((e.block.clone(), e.page));
        }
        // Runs of consecutive pages of one block become one mmap on the mapper's side.
        let mut blocks: Vec<Arc<Block>> = Vec::new();
        let mut runs: Vec<u32> = Vec::new();
        let mut last: Option<(usize, usize)> = None; // (block index, page)
        for (block, page) in &pages {
            let bi = match blocks.iter().position(|b| Arc::ptr_eq(b, block)) {
                Some(i) => i,
                None => {
                    blocks.push(block.clone());
                    blocks.len() - 1
                }
            };
            match last {
                Some((lb, lp)) if lb == bi && lp + 1 == *page => {
                    let n = runs.len();
                    runs[n - 1] += 1;
                }
                _ => runs.extend_from_slice(&[bi as u32, *page as u32, 1]),
            }
            last = Some((bi, *page));
        }
        if blocks.len() > crate::sys::socket::MAX_FDS {
            return Err(refused(
                ErrorKind::Unsupported,
                "one map may span at most 64 separate grants",
            ));
        }
        let fds = blocks.iter().map(|b| b.dup()).collect::<Result<Vec<_>>>()?;
        for r in refs {
            if let Some(e) = st.grants.get_mut(&(remote, *r)) {
                e.maps += 1;
            }
        }
        let handle = Self::new_handle(st);
        st.mappings.insert(
            handle,
            Mapping {
                mapper: dom,
                ctx,
                granter: remote,
                refs: refs.to_vec(),
                pages,
                notify: Notify::default(),
            },
        );
        let mut words = vec![handle, (runs.len() / 3) as u32];
        words.extend_from_slice(&runs);
        Ok(Reply { words, fds })
    }

    fn unmap_handle(&self, st: &mut State, handle: u32) {
        let Some(m) = st.mappings.remove(&handle) else {
            return;
        };
        self.fire(st, m.mapper, m.notify, &m.pages);
        for r in &m.refs {
            let key = (m.granter, *r);
            let mut gone = false;
            if let Some(e) = st.grants.get_mut(&key) {
                e.maps = e.maps.saturating_sub(1);
                gone = e.revoke_later && e.maps == 0;
            }
            if gone {
                st.grants.remove(&key);
            }
        }
    }

    fn alloc_slot(&self, st: &mut State) -> Result<u32> {
        if let Some(s) = st.free_slots.pop() {
            return Ok(s);
        }
        if (st.next_slot as usize) < MAX_CHANNELS {
            st.next_slot += 1;
            return Ok(st.next_slot - 1);
        }
        Err(refused(
            ErrorKind::ResourceExhausted,
            "the simulator's event channels are exhausted",
        ))
    }

    fn new_port(st: &mut State, dom: DomId) -> Result<u32> {
        if st.ports.keys().filter(|(d, _)| *d == dom).count() >= MAX_PORTS_PER_DOMAIN {
            return Err(refused(
                ErrorKind::ResourceExhausted,
                "the domain has no free event-channel port",
            ));
        }
        loop {
            let next = st.next_port.entry(dom).or_insert(1);
            let p = *next;
            *next = if (*next as usize) + 1 >= MAX_PORTS_PER_DOMAIN * 4 {
                1
            } else {
                *next + 1
            };
            if !st.ports.contains_key(&(dom, p)) {
                return Ok(p);
            }
        }
    }

    fn alloc_port(
        &self,
        st: &mut State,
        dom: DomId,
        ctx: CtxId,
        remote: DomId,
        system: bool,
    ) -> Result<(u32, EndRef)> {
        let port = Self::new_port(st, dom)?;
        let slot = self.alloc_slot(st)?;
        let gen = self.table.init_slot(slot);
        let end = EndRef { slot, side: 0, gen };
        st.ports.insert(
            (dom, port),
            PortEntry {
                end,
                ctx,
                remote,
                peer: None,
                system,
            },
        );
        Ok((port, end))
    }

    fn bind_port(
        &self,
        st: &mut State,
        dom: DomId,
        ctx: CtxId,
        remote: DomId,
        remote_port: u32,
        system: bool,
    ) -> Result<(u32, EndRef)> {
        let Some(e) = st.ports.get(&(remote, remote_port)) else {
            return Err(refused(
                ErrorKind::NotFound,
                "binding a port that does not exist",
            ));
        };
        if e.remote != dom || e.peer.is_some() || e.end.side != 0 {
            return Err(refused(
                ErrorKind::PermissionDenied,
                "binding a port not offered to this domain",
            ));
        }
        if e.system && !system {
            return Err(refused(
                ErrorKind::PermissionDenied,
                "the store port is bound by the toolstack",
            ));
        }
        let slot = e.end.slot;
        let gen = e.end.gen;
        let port = Self::new_port(st, dom)?;
        let end = EndRef { slot, side: 1, gen };
        st.ports.insert(
            (dom, port),
            PortEntry {
                end,
                ctx,
                remote,
                peer: Some((remote, remote_port)),
                system,
            },
        );
        if let Some(e) = st.ports.get_mut(&(remote, remote_port)) {
            e.peer = Some((dom, port));
        }
        self.table.set_bound(slot);
        Ok((port, end))
    }

    fn close_port(&self, st: &mut State, dom: DomId, port: u32) -> Result<()> {
        let Some(e) = st.ports.remove(&(dom, port)) else {
            return Err(refused(
                ErrorKind::Closed,
                "closing a port that is not open",
            ));
        };
        let silent = st.peer_close == PeerClose::Silent;
        self.table.set_closed(e.end.slot, e.end.side, silent);
        let peer_alive = e.peer.is_some_and(|(pd, pp)| {
            st.ports
                .get(&(pd, pp))
                .is_some_and(|pe| pe.end.slot == e.end.slot)
        });
        // Reported: the remote's sleepers wake to see PeerGone. Silent (Xen): its port just
        // turns unbound and nothing is sent.
        if let Some((pd, _)) = e.peer.filter(|_| !silent) {
            self.table.wake(pd);
        }
        self.table.wake(dom);
        if !peer_alive {
            st.free_slots.push(e.end.slot);
        }
        Ok(())
    }

    // ----------------------------------------------------------------------------------------
    // Accounting

    pub(crate) fn outstanding(&self, only: Option<DomId>) -> Outstanding {
        let st = self.lock();
        let mine = |d: DomId| only.is_none_or(|o| o == d);
        let user_grants = st.grants.iter().filter(|((d, _), e)| !e.system && mine(*d));
        let mut out = Outstanding::default();
        for (_, e) in user_grants {
            out.grants += 1;
            if e.revoke_later {
                out.revoke_later += 1;
            }
        }
        out.mappings = st
            .mappings
            .values()
            .filter(|m| mine(m.mapper))
            .map(|m| m.refs.len())
            .sum();
        out.ports = st
            .ports
            .iter()
            .filter(|((d, _), e)| !e.system && mine(*d))
            .count();
        out.domains = st
            .domains
            .keys()
            .filter(|&&d| d != 0 && mine(DomId(d)))
            .count();
        out
    }
}
