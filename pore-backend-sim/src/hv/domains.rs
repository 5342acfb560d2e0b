//! Domains and their contexts: creation (with the store page and port every domain is born
//! with), joining, the end of a joined context, and a domain's death.

use pore_core::{DomId, ErrorKind};

use super::state::{
    refused, Block, CtxId, DomRec, GrantEntry, Hv, PeerClose, State, StoreRec, DOMAIN_CTX,
    STORE_REF,
};
use crate::error::Result;
use crate::table::MAX_DOMAINS;

/// Most contexts joined to one domain at once (further processes or handles of it).
const MAX_JOINED_PER_DOMAIN: usize = 256;

impl Hv {
    /// Creates a domain: assigns a domid, gives it a store page and an unbound store port for
    /// dom0, and introduces it to the store service if there is one.
    pub(crate) fn create_domain(&self, name: &str) -> Result<DomId> {
        let (dom, link, svc) = {
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
            // The service that gets the link is the one it was made for: a link left over
            // would leave dom0's store port bound.
            let svc = self.service_get();
            let link = if svc.is_some() {
                self.store_link(&mut st, dom)
            } else {
                None
            };
            (dom, link, svc)
        };
        if let (Some(link), Some(svc)) = (link, svc) {
            svc.introduce(link);
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
            svc.release(dom);
        }
    }
}
