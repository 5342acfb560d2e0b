#![doc = include_str!("../README.md")]
//!
//! ## Event channels and readiness
//! One [`LinuxXen`] holds one open `/dev/xen/evtchn` that multiplexes all its ports. Waits
//! ([`EventChannel::wait`], [`Events::select`]) may run on several threads at once: one
//! thread polls the device and hands out what it reads (see [`evtchn`]).
//! Each wait consumes its port's event and unmasks the port before returning (D6).
//!
//! The device fd is the readiness handle ([`Events::readiness_fd`], [`AsFd`]) for epoll, mio
//! or tokio: readable when a port *may* have fired. After it becomes readable, call
//! [`Events::select`] with a zero timeout over **all** the channels you watch on that backend
//! (a read of the device can bring several ports at once, and those not consumed then are
//! remembered by the backend, not by the fd). Do not mix an event loop on the fd with
//! blocking waits on other threads of the same [`LinuxXen`]: open a second one (it is one
//! more file descriptor) for the blocking side.
//!
//! Xen tells a port's remote end nothing when the port closes: notifications to it are
//! dropped and waits time out. A peer's death is learned from xenstore, or through an unmap
//! notification ([`pore_core::UnmapNotify`], D8), which the kernel fires when the peer's
//! process exits however it dies.
//!
//! ## Grants the peer still maps
//! See [`grant`]: the kernel defers the release of pages a peer still maps (XSA-396); ending
//! access never frees them under the peer.
//!
//! Citations in this crate's comments and docs: `Dn` is decision *n* of the repository's
//! `docs/decisions.md`; `docs/...` paths are relative to the repository's root.

#![cfg(target_os = "linux")]
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
pub mod evtchn;
pub mod grant;
pub mod store;
#[allow(unsafe_code)]
mod sys;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pore_core::{
    DomId, ErrorKind, EventChannel, Events, GrantRef, Grants, Maps, Port, StoreAccess,
};

pub use error::{Device, LinuxError, Result, DENIED_HINT};
pub use evtchn::LinuxChannel;
pub use grant::{LinuxGrant, LinuxMapping};
pub use store::{
    open_xenbus, open_xenbus_at, read_store_port, LinuxStorePage, XENBUS_DEVICE, XENSTORE_GRANT_REF,
};

use evtchn::EvtchnDevice;
use grant::{GntDevice, Stats};

/// Where the device files are (the defaults are the standard paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePaths {
    /// `/dev/xen/evtchn`.
    pub evtchn: PathBuf,
    /// `/dev/xen/gntalloc`.
    pub gntalloc: PathBuf,
    /// `/dev/xen/gntdev`.
    pub gntdev: PathBuf,
    /// `/proc/xen/xsd_kva`.
    pub xsd_kva: PathBuf,
    /// `/proc/xen/xsd_port`.
    pub xsd_port: PathBuf,
}

impl Default for DevicePaths {
    fn default() -> Self {
        DevicePaths {
            evtchn: "/dev/xen/evtchn".into(),
            gntalloc: "/dev/xen/gntalloc".into(),
            gntdev: "/dev/xen/gntdev".into(),
            xsd_kva: "/proc/xen/xsd_kva".into(),
            xsd_port: "/proc/xen/xsd_port".into(),
        }
    }
}

impl DevicePaths {
    /// The devices of a domain (`/dev/xen`, `/proc/xen`) with `dev` in place of `/dev/xen`
    /// and `proc` in place of `/proc/xen`.
    pub fn under(dev: &Path, proc: &Path) -> Self {
        DevicePaths {
            evtchn: dev.join("evtchn"),
            gntalloc: dev.join("gntalloc"),
            gntdev: dev.join("gntdev"),
            xsd_kva: proc.join("xsd_kva"),
            xsd_port: proc.join("xsd_port"),
        }
    }
}

/// What a [`LinuxXen`] (with its clones) still holds; all zero once every pore was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outstanding {
    /// Granted pages not yet handed back to the kernel.
    pub grants: usize,
    /// Mapped pages of peers.
    pub mappings: usize,
    /// Bound event-channel ports.
    pub ports: usize,
    /// Always zero: pages a peer still maps are deferred by the kernel, invisibly to user
    /// space (see [`grant`]).
    pub revoke_later: usize,
}

impl Outstanding {
    /// Whether nothing is held.
    pub fn is_clean(&self) -> bool {
        *self == Outstanding::default()
    }
}

#[derive(Debug)]
struct Inner {
    paths: DevicePaths,
    evtchn: Arc<EvtchnDevice>,
    gntalloc: Mutex<Option<Arc<GntDevice>>>,
    gntdev: Mutex<Option<Arc<GntDevice>>>,
    stats: Arc<Stats>,
}

/// Xen from Linux user space: implements every pore-core capability trait ([`Events`],
/// [`Grants`], [`Maps`], [`StoreAccess`]), hence [`pore_core::Backend`].
///
/// Cheap to clone (clones share the devices). Each [`LinuxXen::open`] opens its own
/// `/dev/xen/evtchn`, as a separate process would; two of them in one process can be the two
/// ends of a dom0 loopback.
#[derive(Debug, Clone)]
pub struct LinuxXen {
    inner: Arc<Inner>,
}

impl LinuxXen {
    /// Opens `/dev/xen/evtchn` (the grant devices open at first use).
    pub fn open() -> Result<LinuxXen> {
        Self::open_with(DevicePaths::default())
    }

    /// Opens the event device at `paths.evtchn`; the others open at first use.
    pub fn open_with(paths: DevicePaths) -> Result<LinuxXen> {
        let evtchn = EvtchnDevice::open(&paths.evtchn)?;
        Ok(LinuxXen {
            inner: Arc::new(Inner {
                paths,
                evtchn,
                gntalloc: Mutex::new(None),
                gntdev: Mutex::new(None),
                stats: Arc::default(),
            }),
        })
    }

    /// Whether this looks like a Xen domain with the event device (`/dev/xen/evtchn` exists):
    /// what `--backend auto` asks.
    pub fn is_available() -> bool {
        Path::new(&DevicePaths::default().evtchn).exists()
    }

    /// The paths in use.
    pub fn paths(&self) -> &DevicePaths {
        &self.inner.paths
    }

    /// What is still held through this backend and its clones.
    pub fn outstanding(&self) -> Outstanding {
        use std::sync::atomic::Ordering::Relaxed;
        Outstanding {
            grants: self.inner.stats.granted_pages.load(Relaxed),
            mappings: self.inner.stats.mapped_pages.load(Relaxed),
            ports: self.inner.evtchn.ports(),
            revoke_later: 0,
        }
    }

    fn device(
        slot: &Mutex<Option<Arc<GntDevice>>>,
        device: Device,
        path: &Path,
    ) -> Result<Arc<GntDevice>> {
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dev) = slot.as_ref() {
            return Ok(dev.clone());
        }
        let dev = GntDevice::open(device, path)?;
        *slot = Some(dev.clone());
        Ok(dev)
    }

    fn gntalloc(&self) -> Result<Arc<GntDevice>> {
        Self::device(
            &self.inner.gntalloc,
            Device::Gntalloc,
            &self.inner.paths.gntalloc,
        )
    }

    fn gntdev(&self) -> Result<Arc<GntDevice>> {
        Self::device(&self.inner.gntdev, Device::Gntdev, &self.inner.paths.gntdev)
    }

    fn channel(&self, port: u32) -> LinuxChannel {
        LinuxChannel::new(self.inner.evtchn.clone(), port)
    }

    /// Binds to `port` of the store's own domain (`dom`); see [`StoreAccess::open_store`].
    fn bind_store_port(&self, dom: DomId, port: Port) -> Result<LinuxChannel> {
        self.bind_interdomain(dom, port)
    }
}

impl AsFd for LinuxXen {
    /// The event device: readable when one of this backend's ports may have fired.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.evtchn.fd()
    }
}

impl AsRawFd for LinuxXen {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl Events for LinuxXen {
    type Error = LinuxError;
    type Channel = LinuxChannel;

    fn alloc_unbound(&self, remote: DomId) -> Result<LinuxChannel> {
        if !remote.is_valid_domain() && remote != DomId::SELF {
            return Err(LinuxError::refused(
                ErrorKind::InvalidInput,
                "offering a port to an id that is no domain",
            ));
        }
        let port = self.inner.evtchn.bind_unbound(remote.0)?;
        Ok(self.channel(port))
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<LinuxChannel> {
        if !remote.is_valid_domain() && remote != DomId::SELF {
            return Err(LinuxError::refused(
                ErrorKind::InvalidInput,
                "binding a port of an id that is no domain",
            ));
        }
        let port = self
            .inner
            .evtchn
            .bind_interdomain(remote.0, remote_port.0)?;
        Ok(self.channel(port))
    }

    fn select(
        &self,
        channels: &[&LinuxChannel],
        timeout: Duration,
        fired: &mut Vec<usize>,
    ) -> Result<()> {
        fired.clear();
        if let Some(c) = channels
            .iter()
            .find(|c| !Arc::ptr_eq(c.device(), &self.inner.evtchn))
        {
            return Err(LinuxError::refused(
                ErrorKind::InvalidInput,
                format!(
                    "select over port {} of another LinuxXen (each has its own event device)",
                    c.port().0
                ),
            ));
        }
        let ports: Vec<u32> = channels.iter().map(|c| c.port().0).collect();
        self.inner.evtchn.wait_any(&ports, timeout, fired)
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }
}

impl Grants for LinuxXen {
    type Error = LinuxError;
    type Granted = LinuxGrant;

    fn grant(&self, remote: DomId, pages: usize) -> Result<LinuxGrant> {
        if pages == 0 {
            return Err(LinuxError::refused(
                ErrorKind::InvalidInput,
                "granting zero pages",
            ));
        }
        LinuxGrant::new(self.gntalloc()?, self.inner.stats.clone(), remote, pages)
    }
}

impl Maps for LinuxXen {
    type Error = LinuxError;
    type Mapped = LinuxMapping;

    fn map(&self, remote: DomId, refs: &[GrantRef]) -> Result<LinuxMapping> {
        if refs.is_empty() {
            return Err(LinuxError::refused(
                ErrorKind::InvalidInput,
                "mapping zero pages",
            ));
        }
        LinuxMapping::new(self.gntdev()?, self.inner.stats.clone(), remote, refs)
    }
}

impl StoreAccess for LinuxXen {
    type StorePage = LinuxStorePage;

    /// In the domain that runs xenstored (dom0): maps `/proc/xen/xsd_kva` and binds the port
    /// in `/proc/xen/xsd_port` — the server side of dom0's own store ring, for a xenstored
    /// (see [`store`]). Elsewhere the files are missing and the error says so.
    fn open_store(&self) -> Result<(LinuxStorePage, LinuxChannel)> {
        let port = read_store_port(&self.inner.paths.xsd_port)?;
        let page = LinuxStorePage::open(&self.inner.paths.xsd_kva)?;
        let channel = self.bind_store_port(DomId::DOM0, port)?;
        Ok((page, channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pore_core::{Error, Pore};

    fn nowhere() -> DevicePaths {
        DevicePaths::under(
            Path::new("/nonexistent/xen"),
            Path::new("/nonexistent/proc"),
        )
    }

    #[test]
    fn missing_event_device_is_a_clear_error() {
        let e = LinuxXen::open_with(nowhere()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert_eq!(
            e.to_string(),
            "/nonexistent/xen/evtchn: not found — is this a Xen domain? is the xen-evtchn \
             module loaded (modprobe xen-evtchn)?"
        );
    }

    /// A backend whose event device is a plain file: opens (the open is lazy about what the
    /// file is), and every Xen operation then fails with an error, never a panic.
    fn fake() -> LinuxXen {
        let mut paths = nowhere();
        paths.evtchn = "/dev/null".into();
        LinuxXen::open_with(paths).unwrap()
    }

    #[test]
    fn missing_grant_devices_are_clear_errors_at_first_use() {
        let xen = fake();
        let e = xen.grant(DomId(1), 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(
            e.to_string()
                .starts_with("/nonexistent/xen/gntalloc: not found — is this a Xen domain?"),
            "{e}"
        );
        assert!(e.to_string().contains("xen-gntalloc"), "{e}");
        let e = xen.map(DomId(1), &[GrantRef(8)]).unwrap_err();
        assert!(e.to_string().contains("xen-gntdev"), "{e}");
        let e = xen.open_store().unwrap_err();
        assert!(e.to_string().contains("xsd_port"), "{e}");
        let e = Pore::open_active(&xen, DomId(1), 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
    }

    #[test]
    fn a_file_that_is_no_event_device_fails_cleanly() {
        let xen = fake();
        let e = xen.alloc_unbound(DomId(1)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        let e = xen.bind_interdomain(DomId(1), Port(5)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert_eq!(xen.outstanding(), Outstanding::default());
    }

    #[test]
    fn invalid_requests_are_refused_before_the_kernel() {
        let xen = fake();
        assert_eq!(
            xen.grant(DomId(1), 0).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            xen.map(DomId(1), &[]).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            xen.alloc_unbound(DomId(0x7ff5)).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let mut fired = vec![9];
        // Nothing to wait for: a zero-timeout select over no channel returns at once.
        xen.select(&[], Duration::ZERO, &mut fired).unwrap();
        assert!(fired.is_empty());
    }

    #[test]
    fn readiness_fd_is_the_event_device() {
        let xen = fake();
        assert_eq!(xen.readiness_fd().unwrap().as_raw_fd(), xen.as_raw_fd());
    }
}
