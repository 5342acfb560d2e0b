//! Xenstore from Linux user space: the xenbus device as a plain file for pore-xenstore's
//! client, and the store page of the domain that runs xenstored (`StoreAccess`).
//!
//! ## `/dev/xen/xenbus`
//! The kernel's xenbus frontend relays whole xenstore packets (16-byte `xsd_sockmsg` header
//! plus payload, host-endian; one packet per `write`, at most 4096 bytes header included) to
//! the one ring the kernel drives, and hands replies and watch events back on `read`. It
//! rewrites request ids and restores them in replies, and handles WATCH/UNWATCH itself.
//! [`open_xenbus`] gives that device as a [`std::fs::File`]; pore-xenstore's
//! `XenbusTransport::from_file` speaks the protocol over it (it writes one whole packet per
//! `write` and polls for replies), so a client on real Xen is:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let file = pore_backend_linux::open_xenbus()?;
//! // with pore-xenstore:
//! // let client = pore_xenstore::Client::with_transport(
//! //     Box::new(pore_xenstore::transport::XenbusTransport::from_file(file)),
//! //     pore_xenstore::Config::default())?;
//! # drop(file); Ok(()) }
//! ```
//!
//! **Caution (Linux 6.1, seen in the lab):** the device deadlocks the domain's whole xenstore
//! connection if a `WATCH` or `UNWATCH` is written on a file while the reply to another request
//! written on that same file has not been delivered yet. The writer of the (un)watch holds the
//! file's `msgbuffer_mutex` while the kernel waits for xenstored's answer to it; the kernel's
//! single `xenbus` thread, delivering the earlier reply first, blocks on that mutex
//! (`xenbus_dev_queue_reply`), so neither answer is ever delivered and both tasks hang in
//! state D. A client that pipelines requests from several threads over one open of the device
//! must therefore hold back (un)watches until no reply is outstanding (libxenstore never has
//! two requests in flight on one handle), or use xenstored's unix socket in dom0
//! (`/var/run/xenstored/socket`).
//!
//! ## The store page (`StoreAccess`)
//! A Linux process is a xenstore *client* through the kernel (the device above), never
//! through the ring: the kernel owns its domain's ring. What a process can reach is the other
//! side: in the domain that runs xenstored (normally dom0), `/proc/xen/xsd_kva` maps that
//! domain's own store ring page and `/proc/xen/xsd_port` names the unbound port the kernel
//! allocated for it. That is what C xenstored opens at start to serve its own domain, and what
//! [`crate::LinuxXen`]'s `StoreAccess::open_store` returns: the page and a channel bound to
//! that port. Use it to run a xenstored (pore-xenstore's server: `GuestLink::from_pore`) for
//! dom0; do not run a client on it (the kernel is the client there). While another xenstored
//! holds the port, binding fails with `NotFound`.
//!
//! Other domains' rings are reached the same way a xenstored reaches them on INTRODUCE: map
//! their grant ref [`XENSTORE_GRANT_REF`] with `Maps::map` and bind their store port with
//! `Events::bind_interdomain`.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::path::Path;

use pore_core::{ErrorKind, GrantRef, Port, PAGE_SIZE};

use crate::error::{Device, LinuxError, Result};
use crate::sys::mmap::Mapping;

/// The default path of the xenbus device.
pub const XENBUS_DEVICE: &str = "/dev/xen/xenbus";

/// The grant ref under which the toolstack pre-populates every guest's store page for
/// xenstored (`GNTTAB_RESERVED_XENSTORE`).
pub const XENSTORE_GRANT_REF: GrantRef = GrantRef(1);

/// Opens `/dev/xen/xenbus` read-write, for pore-xenstore's `XenbusTransport::from_file`.
pub fn open_xenbus() -> Result<File> {
    open_xenbus_at(Path::new(XENBUS_DEVICE))
}

/// Opens the xenbus device at `path` (e.g. `/proc/xen/xenbus`, the xenfs alias).
pub fn open_xenbus_at(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| LinuxError::open(Device::Xenbus, path, e))
}

/// The store ring page of the domain that runs xenstored, mapped from `/proc/xen/xsd_kva`
/// (see the [module docs](self)). Dropping it unmaps our view only.
#[derive(Debug)]
pub struct LinuxStorePage {
    mapping: Mapping,
}

impl LinuxStorePage {
    /// Maps the page at `path` (normally `/proc/xen/xsd_kva`).
    pub fn open(path: &Path) -> Result<LinuxStorePage> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| LinuxError::open(Device::StorePage, path, e))?;
        let mapping = Mapping::map_shared(file.as_fd(), PAGE_SIZE, 0)
            .map_err(LinuxError::os("mapping the store page (xsd_kva)"))?;
        Ok(LinuxStorePage { mapping })
    }

    pub(crate) fn mapping(&self) -> &Mapping {
        &self.mapping
    }
}

/// Reads the store's port from `path` (normally `/proc/xen/xsd_port`: a decimal number).
pub fn read_store_port(path: &Path) -> Result<Port> {
    let text =
        std::fs::read_to_string(path).map_err(|e| LinuxError::open(Device::StorePage, path, e))?;
    parse_port(&text)
}

fn parse_port(text: &str) -> Result<Port> {
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|&p| p > 0)
        .map(Port)
        .ok_or_else(|| {
            LinuxError::refused(
                ErrorKind::Other,
                format!("xsd_port holds {:?}, not a port number", text.trim()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pore_core::Error;

    #[test]
    fn missing_xenbus_says_what_to_check() {
        let e = open_xenbus_at(Path::new("/nonexistent/xen/xenbus")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        let msg = e.to_string();
        assert!(
            msg.starts_with("/nonexistent/xen/xenbus: not found — is this a Xen domain"),
            "{msg}"
        );
        assert!(msg.contains("xenstored"), "{msg}");
    }

    #[test]
    fn store_port_parses_and_rejects_garbage() {
        assert_eq!(parse_port("1\n").unwrap(), Port(1));
        assert_eq!(parse_port(" 42 ").unwrap(), Port(42));
        assert!(parse_port("0").is_err());
        assert!(parse_port("port").is_err());
        assert!(parse_port("").is_err());
        let e = read_store_port(Path::new("/nonexistent/xsd_port")).unwrap_err();
        assert!(e.to_string().contains("mount -t xenfs"), "{e}");
    }

    #[test]
    fn store_page_on_a_plain_file_fails_cleanly() {
        // An empty regular file can be mapped but not faulted; a directory cannot be opened
        // read-write: either way an error, never a panic.
        let e = LinuxStorePage::open(Path::new("/")).unwrap_err();
        assert_ne!(e.kind(), ErrorKind::Unsupported);
    }
}
