//! Accounting: what the hypervisor still holds on behalf of domains.

use pore_core::DomId;

use super::state::Hv;

/// What the simulated hypervisor still holds on behalf of domains, excluding the toolstack's own
/// store pages and ports. All zero (but `domains`) once every pore was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outstanding {
    /// Live domains other than dom0.
    pub domains: usize,
    /// Grant entries not yet revoked (one per page, deferred ones included).
    pub grants: usize,
    /// Mapped pages.
    pub mappings: usize,
    /// Open event-channel ports.
    pub ports: usize,
    /// Grant entries whose revocation waits for the peer to unmap (XSA-396).
    pub revoke_later: usize,
}

impl Outstanding {
    /// Whether no grant, mapping or port is held (domains may still be alive).
    pub fn is_clean(&self) -> bool {
        self.grants == 0 && self.mappings == 0 && self.ports == 0 && self.revoke_later == 0
    }
}

impl Hv {
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
