//! Which Xen a command runs on: `--backend auto|sim|linux`.
//!
//! `auto` (the default) picks real Xen from Linux user space when `/dev/xen/evtchn` exists, else
//! the simulated Xen when `PORE_SIM_SOCKET` names one (see `pore sim`), else fails with an
//! error that says what was looked for.

use clap::ValueEnum;
use pore_backend_linux::LinuxXen;
use pore_backend_sim::SimDomain;
use pore_core::DomId;
use pore_xenstore::transport::{RingTransport, XenbusTransport, XENBUS_DEVICE};
use pore_xenstore::{Client, Config as ClientConfig};

/// The environment variable through which a domain process finds the simulated Xen.
const SIM_SOCKET_VAR: &str = "PORE_SIM_SOCKET";

/// The backends a command can run on.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// Real Xen if /dev/xen/evtchn exists, else the simulated Xen if PORE_SIM_SOCKET is set.
    Auto,
    /// The simulated Xen (`pore sim`), found through PORE_SIM_SOCKET.
    Sim,
    /// Real Xen through /dev/xen (evtchn, gntalloc, gntdev, xenbus).
    Linux,
}

impl BackendChoice {
    /// Resolves `auto` to the backend this machine has, or says why there is none.
    pub fn resolve(self) -> Result<BackendChoice, String> {
        match self {
            BackendChoice::Auto if LinuxXen::is_available() => Ok(BackendChoice::Linux),
            BackendChoice::Auto if std::env::var_os(SIM_SOCKET_VAR).is_some() => {
                Ok(BackendChoice::Sim)
            }
            BackendChoice::Auto => Err(format!(
                "no Xen found: /dev/xen/evtchn is missing (is this a Xen domain? is the \
                 xen-evtchn module loaded?) and {SIM_SOCKET_VAR} is not set (start `pore sim` \
                 for a simulated Xen)"
            )),
            other => Ok(other),
        }
    }
}

/// A simulated domain and a xenstore client over its own store ring (as a guest reaches it).
pub fn open_sim() -> Result<(SimDomain, DomId, Client), String> {
    let dom = SimDomain::connect().map_err(|e| format!("reaching the simulated Xen: {e}"))?;
    let ring = RingTransport::open_store(&dom)
        .map_err(|e| format!("opening the xenstore ring page: {e}"))?;
    let client = Client::with_transport(Box::new(ring), ClientConfig::default())
        .map_err(|e| format!("reaching xenstored over the ring: {e}"))?;
    let domid = dom.id();
    Ok((dom, domid, client))
}

/// Real Xen from this Linux domain, and a xenstore client over `/dev/xen/xenbus`.
pub fn open_linux() -> Result<(LinuxXen, DomId, Client), String> {
    let xen = LinuxXen::open().map_err(|e| e.to_string())?;
    let bus = XenbusTransport::open(XENBUS_DEVICE).map_err(|e| {
        format!("{XENBUS_DEVICE}: {e} (is this a Xen domain? is xenfs or xenbus available?)")
    })?;
    let client = Client::with_transport(Box::new(bus), ClientConfig::default())
        .map_err(|e| format!("reaching xenstored through {XENBUS_DEVICE}: {e}"))?;
    let domid = own_domid(&client)?;
    Ok((xen, domid, client))
}

/// Our domain id: the `domid` node of our home directory (a relative path is resolved against
/// `/local/domain/<us>`), which the toolstack writes for every domain, dom0 included.
fn own_domid(client: &Client) -> Result<DomId, String> {
    let raw = client
        .read("domid")
        .map_err(|e| format!("reading our domain id (the store's relative node domid): {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    text.trim()
        .parse::<u16>()
        .map(DomId)
        .map_err(|_| format!("the store's domid node holds {text:?}, not a domain id"))
}
