//! The grant table: granting pages, mapping a peer's grants, unmap notifications, ending
//! access (or deferring it to the revoke-later list) and unmapping.

use std::sync::Arc;

use pore_core::{DomId, ErrorKind, PAGE_SIZE};

use super::state::{refused, Block, CtxId, GrantEntry, GrantHandle, Hv, Mapping, Notify, State};
use crate::error::Result;
use crate::proto::{Op, Reply};
use crate::sys::socket;

/// Grant refs below this are reserved, as in Xen (`GNTTAB_NR_RESERVED_ENTRIES`).
const FIRST_USER_REF: u32 = 8;
/// Outstanding grant entries one domain may hold.
const MAX_GRANTS_PER_DOMAIN: usize = 64 * 1024;
/// Most pages in one grant or one map request.
const MAX_PAGES_PER_REQUEST: usize = 16 * 1024;

impl Hv {
    pub(super) fn grant(
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

    pub(super) fn set_notify(
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
    pub(super) fn end_handle(&self, st: &mut State, handle: u32, defer: bool) -> Result<()> {
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

    pub(super) fn map(
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
        if blocks.len() > socket::MAX_FDS {
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

    pub(super) fn unmap_handle(&self, st: &mut State, handle: u32) {
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
}
