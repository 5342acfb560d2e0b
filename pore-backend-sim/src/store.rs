//! The seam between the simulated toolstack and a xenstored (D7, D13, D19).
//!
//! Every simulated domain is born with a xenstore ring page and an unbound event-channel port
//! offered to dom0, as a Xen guest is (the page and port "appear magically": start info / HVM
//! params). The domain reaches them with [`pore_core::StoreAccess::open_store`]. The
//! hypervisor plays the toolstack: when a [`StoreService`] is installed
//! ([`crate::Hypervisor::set_store_service`]), it binds dom0 to each domain's store port, maps
//! its page, and hands both over in [`StoreService::domain_introduced`]; when the domain dies it
//! calls [`StoreService::domain_released`]. The embedded xenstored of pore-xenstore implements
//! this trait; the simulator itself has no xenstore.

use std::sync::{Arc, Mutex, Weak};

use pore_core::DomId;

use crate::channel::SimChannel;
use crate::ctx::DomCtx;
use crate::hv::{StoreHook, StoreParts};
use crate::pages::SimStorePage;

/// What a xenstored embedded in the simulator implements (its `DomainConnector` side).
///
/// On introduction the service should do what `XS_INTRODUCE` does: create
/// `/local/domain/<id>` owned by the domain (with `name`, `domid` and an empty `data/`), start
/// serving the ring in [`StoreLink::page`] on [`StoreLink::channel`], and fire
/// `@introduceDomain`. On release it removes the domain's nodes and watches and fires
/// `@releaseDomain`. Both calls come from the thread that created or reaped the domain, with no
/// simulator lock held; they should return promptly (hand work to the service's own threads).
pub trait StoreService: Send + Sync + 'static {
    /// A new domain exists; `link` is dom0's end of its xenstore connection.
    fn domain_introduced(&self, link: StoreLink);
    /// The domain died; its store channel already reports `PeerGone` (with the default
    /// [`crate::PeerClose::Reported`]; with [`crate::PeerClose::Silent`] it just stays quiet, as
    /// on Xen, and this call is how the service learns of it).
    fn domain_released(&self, domid: DomId);
}

/// Dom0's end of one domain's xenstore connection: the domain's ring page, mapped, and a channel
/// bound (as dom0) to the domain's store port.
#[derive(Debug)]
pub struct StoreLink {
    /// The introduced domain.
    pub domid: DomId,
    /// Its name (the toolstack's `name` node).
    pub name: String,
    /// Its xenstore ring page (`struct xenstore_domain_interface`), mapped for dom0.
    pub page: SimStorePage,
    /// Dom0's end of its store event channel.
    pub channel: SimChannel,
}

impl StoreLink {
    pub(crate) fn new(domid: DomId, name: String, page: SimStorePage, channel: SimChannel) -> Self {
        StoreLink {
            domid,
            name,
            page,
            channel,
        }
    }
}

/// A [`StoreService`] as the hypervisor's hook: dom0's page and port become the handles of a
/// [`StoreLink`].
///
/// Every link's channel is made by one dom0 handle, while any lives, so that they share one
/// readiness watcher ([`SimChannel::readiness`]), as a daemon's ports share one event device.
pub(crate) struct ServiceHook {
    service: Arc<dyn StoreService>,
    /// The dom0 handle of the links (weak: it holds the hypervisor, which holds this hook).
    dom0: Mutex<Weak<DomCtx>>,
}

impl ServiceHook {
    pub(crate) fn new(service: Arc<dyn StoreService>) -> Self {
        ServiceHook {
            service,
            dom0: Mutex::new(Weak::new()),
        }
    }
}

impl StoreHook for ServiceHook {
    fn introduce(&self, parts: StoreParts) {
        let StoreParts {
            hv,
            dom,
            name,
            page,
            port,
            end,
        } = parts;
        let ctx = {
            let mut dom0 = self.dom0.lock().unwrap_or_else(|p| p.into_inner());
            match dom0.upgrade() {
                Some(ctx) => ctx,
                None => {
                    let ctx = DomCtx::local(DomId::DOM0, hv);
                    *dom0 = Arc::downgrade(&ctx);
                    ctx
                }
            }
        };
        self.service.domain_introduced(StoreLink::new(
            dom,
            name,
            SimStorePage::new(page),
            SimChannel::new(ctx, port, end, dom, false),
        ));
    }

    fn release(&self, dom: DomId) {
        self.service.domain_released(dom);
    }
}

/// dom0's readiness eventfd wakes the embedded xenstored's event loop (feature `xenstored`).
#[cfg(feature = "xenstored")]
impl pore_xenstore::server::GuestReadiness for crate::ChannelReadiness {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        crate::ChannelReadiness::fd(self)
    }
    fn acknowledge(&self) {
        crate::ChannelReadiness::acknowledge(self);
    }
}

/// pore-xenstore's embedded xenstored as the simulation's store service (feature `xenstored`):
/// each domain is introduced with its store ring page and port (the server creates
/// `/local/domain/<id>` owned by it, with `name`, `domid` and `data/`, and fires
/// `@introduceDomain`); a dead domain is released (`@releaseDomain`). Every ring is served by
/// the server's event loop, woken by dom0's readiness eventfd (one watcher thread for all).
///
/// ```
/// use std::sync::Arc;
/// use pore_backend_sim::Hypervisor;
/// use pore_xenstore::server::{Config, Server};
///
/// let hv = Hypervisor::new()?;
/// let xenstored = Server::new(Config::default(), None);
/// hv.set_store_service(Arc::new(xenstored.clone()));
/// let guest = hv.create_domain("guest")?;
/// // The guest now reaches xenstored through `Pore::open_store(&guest)`
/// // (pore_xenstore::transport::RingTransport::open_store).
/// # drop(guest);
/// # xenstored.shutdown();
/// # Ok::<(), pore_backend_sim::SimError>(())
/// ```
#[cfg(feature = "xenstored")]
impl StoreService for pore_xenstore::server::Server {
    fn domain_introduced(&self, link: StoreLink) {
        let StoreLink {
            domid,
            name,
            page,
            channel,
        } = link;
        let readiness = channel.readiness();
        match pore_xenstore::server::GuestLink::from_pore(page, channel) {
            Ok(guest) => {
                // Served by xenstored's event loop, woken by dom0's readiness watcher.
                let guest = match readiness {
                    Some(r) => guest.with_readiness(Arc::new(r)),
                    None => guest,
                };
                if let Err(e) = self.introduce_domain(domid, &name, guest) {
                    tracing::warn!(%domid, error = ?e, "xenstored refused to introduce the domain");
                }
            }
            Err(e) => {
                tracing::warn!(%domid, error = %e, "the domain's store page is not a xenstore ring")
            }
        }
    }

    fn domain_released(&self, domid: DomId) {
        self.release_domain(domid);
    }
}
