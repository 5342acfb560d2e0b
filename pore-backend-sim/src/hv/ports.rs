//! Event channels: ports allocated unbound, bound interdomain, and closed (telling the remote
//! end as the [`PeerClose`] mode says).

use pore_core::{DomId, ErrorKind};

use super::state::{refused, CtxId, Hv, PeerClose, PortEntry, State};
use crate::error::Result;
use crate::table::{EndRef, MAX_CHANNELS};

/// Ports one domain may hold (Xen's 2-level ABI limit on 64-bit guests).
const MAX_PORTS_PER_DOMAIN: usize = 4096;

impl Hv {
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

    pub(super) fn alloc_port(
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

    pub(super) fn bind_port(
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

    pub(super) fn close_port(&self, st: &mut State, dom: DomId, port: u32) -> Result<()> {
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
}
