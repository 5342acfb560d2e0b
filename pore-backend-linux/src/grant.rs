//! Granting pages (`/dev/xen/gntalloc`) and mapping a peer's pages (`/dev/xen/gntdev`).
//!
//! ## What the kernel does with a grant the peer still maps (XSA-396)
//!
//! Read from Linux `drivers/xen/gntalloc.c` and `drivers/xen/grant-table.c`:
//!
//! * Each granted page is a `gntalloc_gref` with a use count: one for the file (dropped by
//!   `IOCTL_GNTALLOC_DEALLOC_GREF` or when the file closes) and one per `mmap` of it (dropped
//!   by `munmap` or process exit). DEALLOC and munmap may come in either order; the page is
//!   released when the count reaches zero.
//! * Release (`__del_gref`) first fires the unmap notification (clears the byte, then
//!   signals the port), then ends foreign access with `gnttab_end_foreign_access(ref, page)`.
//!   Since the XSA-396 fix (CVE-2022-23039, Linux 5.17 and the stable backports, so Debian's
//!   6.1) that call never frees a page the peer still maps: if ending access fails, the ref
//!   and page go on the kernel's deferred list, retried every second, freed once the peer
//!   unmaps ("g.e. … still pending" in the kernel log after a minute). Kernels before the fix
//!   kept such a gref on gntalloc's own list and retried at the next allocation: also never
//!   freed under the peer.
//! * There is no ioctl to ask whether the peer still maps a page.
//!
//! So the revoke-later list of the pore-core contract (D7) is the kernel's own on Linux:
//! [`GrantedPages::end_access`] hands the pages back (munmap, then DEALLOC) and returns `Ok`
//! even while the peer maps them — it never reports [`ErrorKind::Busy`], because it cannot
//! know, and nothing is freed under the peer. [`crate::Outstanding::revoke_later`] is always
//! zero for the same reason: the deferral is invisible from user space.
//!
//! ## Mapping
//! `IOCTL_GNTDEV_MAP_GRANT_REF` only records the refs; the hypercall happens at `mmap`, which
//! is where a bad or foreign ref fails. Teardown is `munmap` first, then
//! `IOCTL_GNTDEV_UNMAP_GRANT_REF`.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pore_core::{DomId, ErrorKind, GrantRef, GrantedPages, MappedPages, UnmapNotify, PAGE_SIZE};
use rustix::io::Errno;

use crate::error::{Device, LinuxError, Result};
use crate::sys::ioctl;
use crate::sys::mmap::Mapping;

/// An open `/dev/xen/gntalloc` or `/dev/xen/gntdev`, shared by the handles made through it.
#[derive(Debug)]
pub(crate) struct GntDevice {
    fd: OwnedFd,
}

impl GntDevice {
    pub(crate) fn open(device: Device, path: &Path) -> Result<Arc<GntDevice>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| LinuxError::open(device, path, e))?;
        Ok(Arc::new(GntDevice { fd: file.into() }))
    }
}

/// Pages and mappings held through one backend (for leak checks).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) granted_pages: AtomicUsize,
    pub(crate) mapped_pages: AtomicUsize,
}

fn check_peer(remote: DomId, what: &'static str) -> Result<()> {
    if remote.is_valid_domain() {
        Ok(())
    } else {
        Err(LinuxError::refused(ErrorKind::InvalidInput, what))
    }
}

fn notify_action(notify: &UnmapNotify, len: usize) -> Result<(u32, usize, u32)> {
    let mut action = 0;
    if let Some(b) = notify.clear_byte {
        if b >= len {
            return Err(LinuxError::refused(
                ErrorKind::InvalidInput,
                "unmap-notify byte outside the pages",
            ));
        }
        action |= ioctl::UNMAP_NOTIFY_CLEAR_BYTE;
    }
    if notify.send_event.is_some() {
        action |= ioctl::UNMAP_NOTIFY_SEND_EVENT;
    }
    Ok((
        action,
        notify.clear_byte.unwrap_or(0),
        notify.send_event.map_or(0, |p| p.0),
    ))
}

/// The `SET_UNMAP_NOTIFY` failure: EINVAL with an event means the port is not one this domain
/// bound through `/dev/xen/evtchn`.
const NOTIFY_OP: &str = "arming an unmap notification (the event port must be bound through \
                         /dev/xen/evtchn in this domain)";

/// Zeroed pages granted to one peer through `/dev/xen/gntalloc`, contiguous in our address
/// space. See the [module docs](self) for what ending access does while the peer maps them.
#[derive(Debug)]
pub struct LinuxGrant {
    dev: Arc<GntDevice>,
    stats: Arc<Stats>,
    mapping: Mapping,
    /// mmap offset of the first page (gntalloc's `index`).
    index: u64,
    refs: Vec<GrantRef>,
    /// mmap offset of the page carrying the unmap notification, if armed.
    notify_page: Option<u64>,
    released: bool,
}

impl LinuxGrant {
    pub(crate) fn new(
        dev: Arc<GntDevice>,
        stats: Arc<Stats>,
        remote: DomId,
        pages: usize,
    ) -> Result<LinuxGrant> {
        check_peer(remote, "granting pages to an id that is no domain")?;
        let count = u32::try_from(pages)
            .ok()
            .filter(|&c| c > 0)
            .ok_or(LinuxError::refused(
                ErrorKind::InvalidInput,
                "granting zero pages or more than 2^32",
            ))?;
        let len = pages.checked_mul(PAGE_SIZE).ok_or(LinuxError::refused(
            ErrorKind::InvalidInput,
            "page count too large",
        ))?;
        let (index, refs) = ioctl::gntalloc_alloc_gref(dev.fd.as_fd(), remote.0, true, count)
            .map_err(LinuxError::os(
                "granting pages through gntalloc (its module parameter `limit` caps the \
                 grants, 1024 by default)",
            ))?;
        let mapping = match Mapping::map_shared(dev.fd.as_fd(), len, index) {
            Ok(m) => m,
            Err(e) => {
                if let Err(d) = ioctl::gntalloc_dealloc_gref(dev.fd.as_fd(), index, count) {
                    tracing::warn!(error = %d, "dealloc after a failed gntalloc mmap");
                }
                return Err(LinuxError::os("mapping granted pages")(e));
            }
        };
        stats.granted_pages.fetch_add(pages, Ordering::Relaxed);
        Ok(LinuxGrant {
            dev,
            stats,
            mapping,
            index,
            refs: refs.into_iter().map(GrantRef).collect(),
            notify_page: None,
            released: false,
        })
    }

    pub(crate) fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Unmaps our view, then gives the grants back to the kernel, which ends the peer's access
    /// (deferred while the peer maps them). Both steps are attempted.
    fn release(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        let count = self.refs.len();
        let unmapped = self
            .mapping
            .unmap()
            .map_err(LinuxError::os("unmapping granted pages"));
        let dealloc = ioctl::gntalloc_dealloc_gref(self.dev.fd.as_fd(), self.index, count as u32)
            .map_err(LinuxError::os(
                "ending access to granted pages (gntalloc dealloc)",
            ));
        self.stats.granted_pages.fetch_sub(count, Ordering::Relaxed);
        unmapped.and(dealloc)
    }
}

impl GrantedPages for LinuxGrant {
    type Error = LinuxError;

    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }

    /// Arms gntalloc's unmap notification: when our side of the pages goes away (ended,
    /// dropped, or this process dies) the kernel zeroes `clear_byte` and signals `send_event`,
    /// which must be a port bound through this domain's `/dev/xen/evtchn` (the kernel holds
    /// it open until the notification is sent). One notification per grant: arming again
    /// replaces the previous one.
    fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<()> {
        let (action, byte, port) = notify_action(&notify, self.mapping.len())?;
        let page = self.index + (byte & !(PAGE_SIZE - 1)) as u64;
        let fd = self.dev.fd.as_fd();
        if let Some(old) = self.notify_page.filter(|&old| old != page) {
            // The kernel keeps one notification per page: disarm the old page's.
            ioctl::gntalloc_set_unmap_notify(fd, old, 0, 0)
                .map_err(LinuxError::os("disarming an unmap notification"))?;
            self.notify_page = None;
        }
        ioctl::gntalloc_set_unmap_notify(fd, self.index + byte as u64, action, port)
            .map_err(LinuxError::os(NOTIFY_OP))?;
        self.notify_page = (action != 0).then_some(page);
        Ok(())
    }

    /// Ends the peer's access. Never [`ErrorKind::Busy`] on Linux: the kernel defers pages the
    /// peer still maps (module docs).
    fn end_access(mut self) -> Result<()> {
        self.release()
    }
}

impl Drop for LinuxGrant {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(error = %e, "releasing dropped grants");
        }
    }
}

/// A peer's pages mapped through `/dev/xen/gntdev`, contiguous and in ref order.
#[derive(Debug)]
pub struct LinuxMapping {
    dev: Arc<GntDevice>,
    stats: Arc<Stats>,
    mapping: Mapping,
    /// gntdev's `index` (mmap offset) of the mapping.
    index: u64,
    count: usize,
    released: bool,
}

impl LinuxMapping {
    pub(crate) fn new(
        dev: Arc<GntDevice>,
        stats: Arc<Stats>,
        remote: DomId,
        refs: &[GrantRef],
    ) -> Result<LinuxMapping> {
        check_peer(remote, "mapping pages of an id that is no domain")?;
        if refs.is_empty() {
            return Err(LinuxError::refused(
                ErrorKind::InvalidInput,
                "mapping zero pages",
            ));
        }
        let count = u32::try_from(refs.len()).map_err(|_| {
            LinuxError::refused(ErrorKind::InvalidInput, "mapping more than 2^32 pages")
        })?;
        let len = refs
            .len()
            .checked_mul(PAGE_SIZE)
            .ok_or(LinuxError::refused(
                ErrorKind::InvalidInput,
                "page count too large",
            ))?;
        let pairs: Vec<(u16, u32)> = refs.iter().map(|r| (remote.0, r.0)).collect();
        let fd = dev.fd.as_fd();
        let index = ioctl::gntdev_map_grant_ref(fd, &pairs).map_err(LinuxError::os(
            "recording grant refs to map (gntdev; its module parameter `limit` caps a map)",
        ))?;
        let mapping = match Mapping::map_shared(fd, len, index) {
            Ok(m) => m,
            Err(e) => {
                if let Err(u) = ioctl::gntdev_unmap_grant_ref(fd, index, count) {
                    tracing::warn!(error = %u, "unmap after a failed gntdev mmap");
                }
                // The grant hypercall runs in mmap: a ref that does not exist, was granted to
                // another domain, or already ended fails here.
                let kind = match e.raw_os_error().map(Errno::from_raw_os_error) {
                    Some(Errno::INVAL | Errno::FAULT | Errno::NOENT | Errno::IO) => {
                        ErrorKind::NotFound
                    }
                    _ => crate::error::errno_kind(&e),
                };
                return Err(LinuxError::Os {
                    op: "mapping the peer's grant refs (do they exist, granted to this domain?)",
                    kind,
                    source: e,
                });
            }
        };
        stats.mapped_pages.fetch_add(refs.len(), Ordering::Relaxed);
        Ok(LinuxMapping {
            dev,
            stats,
            mapping,
            index,
            count: refs.len(),
            released: false,
        })
    }

    pub(crate) fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// `munmap` first (the pages leave our address space and the grant hypercall is undone),
    /// then `UNMAP_GRANT_REF` (gntdev forgets the refs). Both steps are attempted.
    fn release(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        let unmapped = self
            .mapping
            .unmap()
            .map_err(LinuxError::os("unmapping the peer's pages"));
        let forgot =
            ioctl::gntdev_unmap_grant_ref(self.dev.fd.as_fd(), self.index, self.count as u32)
                .map_err(LinuxError::os("releasing the peer's grant refs (gntdev)"));
        self.stats
            .mapped_pages
            .fetch_sub(self.count, Ordering::Relaxed);
        unmapped.and(forgot)
    }
}

impl MappedPages for LinuxMapping {
    type Error = LinuxError;

    /// Arms gntdev's unmap notification: when this mapping goes away (unmapped, dropped, or
    /// this process dies) the kernel zeroes `clear_byte` in the peer's page and signals
    /// `send_event` (a port bound through this domain's `/dev/xen/evtchn`). Arming again
    /// replaces the previous notification.
    fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<()> {
        let (action, byte, port) = notify_action(&notify, self.mapping.len())?;
        ioctl::gntdev_set_unmap_notify(self.dev.fd.as_fd(), self.index + byte as u64, action, port)
            .map_err(LinuxError::os(NOTIFY_OP))
    }

    fn unmap(mut self) -> Result<()> {
        self.release()
    }
}

impl Drop for LinuxMapping {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(error = %e, "releasing a dropped mapping");
        }
    }
}
