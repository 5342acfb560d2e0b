//! Pages shared between domains: pages a domain granted ([`SimGrant`]), a peer's pages it
//! mapped ([`SimMapping`]), its xenstore page ([`SimStorePage`]), and a domain's operations
//! that make them ([`Grants`], [`Maps`], [`StoreAccess`] for [`SimDomain`]). Their
//! [`pore_core::SharedMemory`] impls, the `unsafe` part, are in `crate::shared`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use pore_core::{
    CoreError, DomId, ErrorKind, GrantRef, GrantedPages, Grants, MappedPages, Maps, StoreAccess,
    UnmapNotify,
};

use crate::channel::SimChannel;
use crate::ctx::DomCtx;
use crate::domain::SimDomain;
use crate::error::{Result, SimError};
use crate::proto::{Op, NONE};
use crate::sys::mmap::Mmap;

fn notify_args(handle: u32, notify: UnmapNotify) -> [u32; 3] {
    [
        handle,
        notify
            .clear_byte
            .map_or(NONE, |b| u32::try_from(b).unwrap_or(NONE - 1)),
        notify.send_event.map_or(NONE, |p| p.0),
    ]
}

/// Pages this domain granted to a peer.
pub struct SimGrant {
    ctx: Arc<DomCtx>,
    handle: u32,
    refs: Vec<GrantRef>,
    map: Mmap,
    ended: bool,
}

impl std::fmt::Debug for SimGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimGrant")
            .field("domain", &self.ctx.id)
            .field("refs", &self.refs)
            .finish()
    }
}

impl SimGrant {
    /// The granted pages, mapped here; never replaced while the handle lives.
    pub(crate) fn mapping(&self) -> &Mmap {
        &self.map
    }
}

impl GrantedPages for SimGrant {
    type Error = SimError;

    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }

    fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<()> {
        self.ctx
            .call(Op::GrantNotify, &notify_args(self.handle, notify))
            .map(drop)
    }

    fn end_access(mut self) -> Result<()> {
        self.ctx.call(Op::EndAccess, &[self.handle, 0])?;
        self.ended = true;
        Ok(())
    }
}

impl Drop for SimGrant {
    fn drop(&mut self) {
        if !self.ended {
            // Pages the peer still maps go to the hypervisor's revoke-later list (D7).
            let _ = self.ctx.call(Op::EndAccess, &[self.handle, 1]);
        }
    }
}

/// A peer's pages mapped into this domain.
pub struct SimMapping {
    ctx: Arc<DomCtx>,
    handle: u32,
    granter: DomId,
    map: Mmap,
    unmapped: bool,
}

impl std::fmt::Debug for SimMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimMapping")
            .field("domain", &self.ctx.id)
            .field("granter", &self.granter)
            .field("len", &self.map.len())
            .finish()
    }
}

impl SimMapping {
    /// The peer's pages, mapped here; never replaced while the handle lives.
    pub(crate) fn mapping(&self) -> &Mmap {
        &self.map
    }
}

impl MappedPages for SimMapping {
    type Error = SimError;

    fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<()> {
        self.ctx
            .call(Op::MapNotify, &notify_args(self.handle, notify))
            .map(drop)
    }

    fn unmap(mut self) -> Result<()> {
        self.unmapped = true;
        self.ctx.call(Op::Unmap, &[self.handle]).map(drop)
    }
}

impl Drop for SimMapping {
    fn drop(&mut self) {
        if !self.unmapped {
            let _ = self.ctx.call(Op::Unmap, &[self.handle]);
        }
    }
}

impl Grants for SimDomain {
    type Error = SimError;
    type Granted = SimGrant;

    fn grant(&self, remote: DomId, pages: usize) -> Result<SimGrant> {
        let count = u32::try_from(pages)
            .map_err(|_| CoreError::new(ErrorKind::InvalidInput, "page count too large"))?;
        let r = self.ctx.call(Op::Grant, &[remote.0 as u32, count])?;
        let malformed = || SimError::refused(ErrorKind::Protocol, "malformed grant reply");
        let (&handle, refs) = r.words.split_first().ok_or_else(malformed)?;
        let fd = r.fds.into_iter().next().ok_or_else(malformed)?;
        let map = match Mmap::map_fd(fd.as_fd(), 0, pages) {
            Ok(m) => m,
            Err(e) => {
                let _ = self.ctx.call(Op::EndAccess, &[handle, 1]);
                return Err(SimError::os("mapping granted pages")(e));
            }
        };
        Ok(SimGrant {
            ctx: self.ctx.clone(),
            handle,
            refs: refs.iter().map(|&r| GrantRef(r)).collect(),
            map,
            ended: false,
        })
    }
}

impl Maps for SimDomain {
    type Error = SimError;
    type Mapped = SimMapping;

    fn map(&self, remote: DomId, refs: &[GrantRef]) -> Result<SimMapping> {
        let mut args = Vec::with_capacity(refs.len() + 1);
        args.push(remote.0 as u32);
        args.extend(refs.iter().map(|r| r.0));
        let r = self.ctx.call(Op::Map, &args)?;
        let handle = *r.words.first().unwrap_or(&0);
        let release = |e: SimError| {
            let _ = self.ctx.call(Op::Unmap, &[handle]);
            e
        };
        let runs = parse_runs(&r.words, &r.fds).map_err(release)?;
        let map = Mmap::map_pages(&runs)
            .map_err(SimError::os("mapping granted pages"))
            .map_err(release)?;
        Ok(SimMapping {
            ctx: self.ctx.clone(),
            handle,
            granter: remote,
            map,
            unmapped: false,
        })
    }
}

fn parse_runs<'a>(
    words: &[u32],
    fds: &'a [OwnedFd],
) -> Result<Vec<(BorrowedFd<'a>, usize, usize)>> {
    let malformed = || SimError::refused(ErrorKind::Protocol, "malformed map reply");
    let n = *words.get(1).ok_or_else(malformed)? as usize;
    let body = words.get(2..).ok_or_else(malformed)?;
    if body.len() != n.checked_mul(3).ok_or_else(malformed)? {
        return Err(malformed());
    }
    body.chunks_exact(3)
        .map(|run| {
            let fd = fds.get(run[0] as usize).ok_or_else(malformed)?;
            Ok((fd.as_fd(), run[1] as usize, run[2] as usize))
        })
        .collect()
}

/// A domain's xenstore ring page (D7), as the domain or the store service sees it.
pub struct SimStorePage {
    map: Mmap,
}

impl std::fmt::Debug for SimStorePage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimStorePage").finish_non_exhaustive()
    }
}

impl SimStorePage {
    pub(crate) fn new(map: Mmap) -> Self {
        SimStorePage { map }
    }

    /// The store page, mapped here; never replaced while the handle lives.
    pub(crate) fn mapping(&self) -> &Mmap {
        &self.map
    }
}

impl StoreAccess for SimDomain {
    type StorePage = SimStorePage;

    fn open_store(&self) -> Result<(SimStorePage, SimChannel)> {
        let r = self.ctx.call(Op::OpenStore, &[])?;
        let fd = r
            .fds
            .first()
            .ok_or_else(|| SimError::refused(ErrorKind::Protocol, "malformed store reply"))?;
        let map = Mmap::map_fd(fd.as_fd(), 0, 1).map_err(SimError::os("mapping the store page"))?;
        let peer = DomId(*r.words.get(4).unwrap_or(&0) as u16);
        let channel = SimChannel::from_reply(self.ctx.clone(), &r.words, peer, true)?;
        Ok((SimStorePage::new(map), channel))
    }
}
