//! Granting pages to a peer and mapping a peer's pages.

use crate::{DomId, Error, GrantRef, Port, SharedMemory};

/// What the hypervisor does for the peer when our side of the memory goes away
/// (gntalloc/gntdev `SET_UNMAP_NOTIFY`, D8): the way a peer learns of our death when
/// xenstore does not change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnmapNotify {
    /// Byte offset in the shared region to set to zero (a "live" byte).
    pub clear_byte: Option<usize>,
    /// Event channel (ours) to signal.
    pub send_event: Option<Port>,
}

/// Pages we granted to one peer (the active side of a pore). They are zeroed when granted,
/// contiguous in our address space and page-aligned.
///
/// Dropping them ends the peer's access; if the peer still maps them the backend must not
/// panic nor free the memory, but defer the revocation to a revoke-later list (D7, XSA-396).
pub trait GrantedPages: SharedMemory {
    /// The backend's error type.
    type Error: Error;

    /// One grant reference per page, in page order.
    fn refs(&self) -> &[GrantRef];

    /// Arms an unmap notification for when these pages are released (ended, dropped, or our
    /// process or domain dead). A backend without unmap-notify returns
    /// [`crate::ErrorKind::Unsupported`]; it never accepts the request and ignores it.
    fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<(), Self::Error>;

    /// Ends the peer's access. Never frees pages the peer still maps: a backend that can tell
    /// fails with [`crate::ErrorKind::Busy`] and defers them to its revoke-later list, released
    /// at the peer's last unmap; one that cannot tell (Linux user space, where the kernel
    /// defers them) returns `Ok`. Either way the handle is consumed; nothing is left for the caller to do.
    fn end_access(self) -> Result<(), Self::Error>
    where
        Self: Sized;
}

/// A peer's pages mapped into our address space (the passive side of a pore), contiguous and
/// page-aligned.
pub trait MappedPages: SharedMemory {
    /// The backend's error type.
    type Error: Error;

    /// Arms an unmap notification for when this mapping goes away (unmapped, dropped, or our
    /// process or domain dead). [`crate::ErrorKind::Unsupported`] if the backend has none.
    fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<(), Self::Error>;

    /// Unmaps the pages, reporting any failure (dropping them ignores it).
    fn unmap(self) -> Result<(), Self::Error>
    where
        Self: Sized;
}

/// The capability to grant fresh zeroed pages to a peer.
pub trait Grants {
    /// The backend's error type.
    type Error: Error;
    /// Handle of granted pages.
    type Granted: GrantedPages<Error = Self::Error>;

    /// Allocates `pages` zeroed, contiguous, page-aligned pages and grants each to `remote`
    /// (read-write), one ref per page in page order. Zero pages is
    /// [`crate::ErrorKind::InvalidInput`].
    fn grant(&self, remote: DomId, pages: usize) -> Result<Self::Granted, Self::Error>;
}

/// The capability to map pages a peer granted to us.
pub trait Maps {
    /// The backend's error type.
    type Error: Error;
    /// Handle of a mapping.
    type Mapped: MappedPages<Error = Self::Error>;

    /// Maps `refs` granted to us by `remote`, contiguously and in order, all or none.
    ///
    /// Must accept every ref of one grant in page order (what [`crate::Pore::open_passive`]
    /// passes); may refuse with [`crate::ErrorKind::Unsupported`] a set it cannot place
    /// contiguously (part of a grant, another order, several grants). A ref that does not exist
    /// or whose access was ended is [`crate::ErrorKind::NotFound`]; no refs at all,
    /// [`crate::ErrorKind::InvalidInput`].
    fn map(&self, remote: DomId, refs: &[GrantRef]) -> Result<Self::Mapped, Self::Error>;
}

/// Sharing a backend: `&T` and `Arc<T>` grant and map through `T`.
impl<T: Grants + ?Sized> Grants for &T {
    type Error = T::Error;
    type Granted = T::Granted;

    fn grant(&self, remote: DomId, pages: usize) -> Result<Self::Granted, Self::Error> {
        (**self).grant(remote, pages)
    }
}

impl<T: Grants + ?Sized> Grants for alloc::sync::Arc<T> {
    type Error = T::Error;
    type Granted = T::Granted;

    fn grant(&self, remote: DomId, pages: usize) -> Result<Self::Granted, Self::Error> {
        (**self).grant(remote, pages)
    }
}

impl<T: Maps + ?Sized> Maps for &T {
    type Error = T::Error;
    type Mapped = T::Mapped;

    fn map(&self, remote: DomId, refs: &[GrantRef]) -> Result<Self::Mapped, Self::Error> {
        (**self).map(remote, refs)
    }
}

impl<T: Maps + ?Sized> Maps for alloc::sync::Arc<T> {
    type Error = T::Error;
    type Mapped = T::Mapped;

    fn map(&self, remote: DomId, refs: &[GrantRef]) -> Result<Self::Mapped, Self::Error> {
        (**self).map(remote, refs)
    }
}
