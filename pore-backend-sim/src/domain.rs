//! A simulated domain ([`SimDomain`]): made in this process or connected to the broker,
//! joined or not, and its death when the handle drops. Its backend-trait operations are with
//! the handles they make: `crate::channel` and `crate::pages`.

use std::path::Path;
use std::sync::Arc;

use pore_core::{DomId, ErrorKind};

use crate::ctx::DomCtx;
use crate::env;
use crate::error::{Result, SimError};
use crate::hv::DOMAIN_CTX;
use crate::proto::{Op, Request};

fn socket_from_env() -> Result<std::ffi::OsString> {
    std::env::var_os(env::SOCKET_ENV).ok_or_else(|| {
        SimError::refused(
            ErrorKind::NotFound,
            "PORE_SIM_SOCKET is not set: no simulated hypervisor to connect to",
        )
    })
}

/// A simulated domain: implements every pore-core backend trait ([`pore_core::Backend`]).
///
/// Made by [`crate::Hypervisor::create_domain`] (a domain in this process) or
/// [`SimDomain::connect`] (this process is the domain). **Dropping the handle kills the
/// domain**: its mappings are released and its grants ended or deferred, their unmap
/// notifications fire, then its ports close (peers see `PeerGone`, or nothing under
/// [`crate::PeerClose::Silent`], as on Xen). Handles made from it (channels, pages)
/// stay memory-safe afterwards; their operations fail with [`ErrorKind::Closed`].
///
/// A handle can also *join* a live domain ([`crate::Hypervisor::join_domain`],
/// [`SimDomain::join`], or [`SimDomain::connect`] in a process spawned with
/// [`crate::DomainCommand::join`]): it is then one more process of that domain, with grants,
/// mappings and ports of its own, as a process on real Xen has its own gntdev, gntalloc and
/// evtchn files. Dropping a joined handle (or the joined process exiting or being killed)
/// releases only what it holds, firing its unmap notifications; the domain, its other
/// contexts and its xenstore nodes stay. When the domain dies, its joined handles' operations
/// fail with [`ErrorKind::Closed`]. The store ring has one driver, the domain's creator: a
/// joined handle's [`StoreAccess::open_store`](pore_core::StoreAccess::open_store) is refused ([`ErrorKind::Unsupported`]; Linux
/// multiplexes its processes in the xenbus driver, the sim does not), so it reaches xenstored
/// through its socket.
#[derive(Debug)]
pub struct SimDomain {
    pub(crate) ctx: Arc<DomCtx>,
    /// Whether dropping this handle ends its context: kills the domain for its creator,
    /// releases its own resources for a joined handle; nothing for dom0 handles.
    ends_context: bool,
}

impl SimDomain {
    pub(crate) fn new(ctx: Arc<DomCtx>, ends_context: bool) -> Self {
        SimDomain { ctx, ends_context }
    }

    /// Connects this process to the broker whose socket `PORE_SIM_SOCKET` names (see
    /// [`crate::Hypervisor::start`]): as a new domain named by `PORE_SIM_NAME` (default
    /// `"domain"`), or, if `PORE_SIM_JOIN` holds a domid (a process spawned with
    /// [`crate::DomainCommand::join`]), as one more process of that live domain
    /// ([`SimDomain::join`]).
    pub fn connect() -> Result<SimDomain> {
        let path = socket_from_env()?;
        if let Some(join) = std::env::var_os(env::JOIN_ENV) {
            let dom = join
                .to_str()
                .and_then(|d| d.trim().parse::<u16>().ok())
                .ok_or_else(|| {
                    SimError::refused(
                        ErrorKind::InvalidInput,
                        "PORE_SIM_JOIN does not hold a domain id",
                    )
                })?;
            return Self::join_to(Path::new(&path), DomId(dom));
        }
        let name = std::env::var(env::NAME_ENV).unwrap_or_else(|_| "domain".into());
        Self::connect_to(Path::new(&path), &name)
    }

    /// Connects to the broker at `path` as a new domain called `name`.
    pub fn connect_to(path: &Path, name: &str) -> Result<SimDomain> {
        let mut hello = Request::new(Op::Hello, &[]);
        hello.tail = name.as_bytes().to_vec();
        Ok(SimDomain::new(DomCtx::remote(path, &hello)?, true))
    }

    /// Joins the live domain `dom` as one more process of it, through the broker whose socket
    /// `PORE_SIM_SOCKET` names. What this handle grants, maps and binds is its own: when it
    /// drops or this process dies, only that is released (its unmap notifications fire) and
    /// the domain lives on. Joining a domain that does not exist is `NotFound`; dom0 cannot be
    /// joined (`PermissionDenied`).
    pub fn join(dom: DomId) -> Result<SimDomain> {
        let path = socket_from_env()?;
        Self::join_to(Path::new(&path), dom)
    }

    /// As [`SimDomain::join`], through the broker at `path`.
    pub fn join_to(path: &Path, dom: DomId) -> Result<SimDomain> {
        let join = Request::new(Op::Join, &[u32::from(dom.0)]);
        Ok(SimDomain::new(DomCtx::remote(path, &join)?, true))
    }

    /// This domain's id.
    pub fn id(&self) -> DomId {
        self.ctx.id
    }

    /// Whether this handle joined a domain someone else created (see [`SimDomain::join`]).
    pub fn is_joined(&self) -> bool {
        self.ctx.context != DOMAIN_CTX
    }

    /// Drains the readiness eventfd (see
    /// [`Events::readiness_fd`](pore_core::Events::readiness_fd)) after it polled readable.
    pub fn ack_readiness(&self) {
        self.ctx.ack_readiness();
    }
}

impl Drop for SimDomain {
    fn drop(&mut self) {
        if self.ends_context {
            if std::thread::panicking() {
                tracing::debug!(
                    dom = %self.ctx.id,
                    joined = self.is_joined(),
                    "domain thread panicked: its context ends"
                );
            }
            self.ctx.die();
        }
    }
}
