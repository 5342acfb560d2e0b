//! Requests: every grant-table and event-channel operation of a domain, from a thread of this
//! process or from a domain process through the broker, checked and dispatched.

use pore_core::{DomId, ErrorKind};

use super::state::{refused, CtxId, Hv, Notify, DOMAIN_CTX};
use crate::error::Result;
use crate::proto::{Op, Reply, Request, NONE};
use crate::table::MAX_DOMAINS;

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
}
