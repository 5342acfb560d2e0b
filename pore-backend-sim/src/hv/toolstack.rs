//! The hypervisor as the toolstack of the store service: it binds dom0 to each domain's store
//! port, maps the domain's store page for dom0, and hands both to the [`StoreHook`].

use std::os::fd::AsFd;
use std::sync::Arc;

use pore_core::DomId;

use super::state::{Hv, State, StoreHook, StoreParts, DOMAIN_CTX};
use crate::sys::mmap::Mmap;

impl Hv {
    /// Binds dom0 to `dom`'s store port and maps its store page: what xenstored needs.
    pub(super) fn store_link(&self, st: &mut State, dom: DomId) -> Option<StoreParts> {
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
        Some(StoreParts {
            hv: self.arc(),
            dom,
            name,
            page,
            port: local,
            end,
        })
    }

    pub(super) fn service_get(&self) -> Option<Arc<dyn StoreHook>> {
        self.service
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs (or removes) the store service and introduces every live domain to it.
    pub(crate) fn set_service(&self, svc: Option<Arc<dyn StoreHook>>) {
        let old = std::mem::replace(
            &mut *self.service.lock().unwrap_or_else(|p| p.into_inner()),
            svc.clone(),
        );
        // The old service (and the store links it holds) goes without any lock held.
        drop(old);
        if let Some(svc) = svc {
            let links: Vec<StoreParts> = {
                let mut st = self.lock();
                let doms: Vec<u16> = st.domains.keys().copied().filter(|&d| d != 0).collect();
                doms.into_iter()
                    .filter_map(|d| self.store_link(&mut st, DomId(d)))
                    .collect()
            };
            for link in links {
                svc.introduce(link);
            }
        }
    }
}
