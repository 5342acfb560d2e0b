//! The pore: pages shared with one peer plus one event channel.

use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use crate::{
    Backend, BackendError, CoreError, DomId, ErrorKind, EventChannel, GrantRef, GrantedPages,
    MappedPages, Port, SharedAccess, SharedMemory, SharedView, UnmapNotify,
};

/// How a pore came to be (D7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoreRole {
    /// We granted the pages and allocated the unbound port (`pore_straw:open/1`).
    Active,
    /// We mapped the peer's grants and bound to its port (`pore_straw:open/3`).
    Passive,
    /// The domain's own xenstore page and port, which exist before us; closing unmaps nothing.
    PreExisting,
}

/// What the peer needs to open the other end: our grant refs and our port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoreInfo {
    /// Grant references of the pages, in order (empty for a passive or pre-existing pore).
    pub refs: Vec<GrantRef>,
    /// Our local port.
    pub port: Port,
    /// The peer domain.
    pub peer: DomId,
}

enum Memory<B: Backend> {
    Granted(B::Granted),
    Mapped(B::Mapped),
    Store(B::StorePage),
}

/// A set of pages shared with one peer plus one event channel.
///
/// The pages are reached only through [`SharedAccess`] (the pore implements it) or
/// [`Pore::memory`]: never through a Rust reference, since the peer may write them at any time.
///
/// Close explicitly with [`Pore::close`] to learn of failures. Dropping a pore closes the port
/// and releases the pages quietly; a grant the peer still maps is deferred by the backend to its
/// revoke-later list (D7), never freed under the peer and never a panic.
pub struct Pore<B: Backend> {
    // Field order is drop order: the port goes before the pages, as in the seed's `pore_destroy`.
    channel: B::Channel,
    memory: Memory<B>,
    peer: DomId,
    base: NonNull<u8>,
    len: usize,
    /// [`SharedMemory::is_foreign`] of the handle, cached with `base`/`len`.
    foreign: bool,
}

// SAFETY: `base`/`len` cache the region owned by `memory`, whose handle types are
// `SharedMemory` and therefore `Send + Sync`; the channel is `Send + Sync` by its trait bound.
// All access to the region goes through `SharedView` (atomic, or volatile on foreign memory).
unsafe impl<B: Backend> Send for Pore<B> {}
// SAFETY: see `Send`: shared access only performs atomic (or foreign volatile) operations.
unsafe impl<B: Backend> Sync for Pore<B> {}

impl<B: Backend> core::fmt::Debug for Pore<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pore")
            .field("role", &self.role())
            .field("peer", &self.peer)
            .field("port", &self.channel.port())
            .field("len", &self.len)
            .finish()
    }
}

impl<B: Backend> Pore<B> {
    fn assemble(channel: B::Channel, memory: Memory<B>, peer: DomId) -> Self {
        let (base, len, foreign) = match &memory {
            Memory::Granted(m) => (m.as_ptr(), m.len(), m.is_foreign()),
            Memory::Mapped(m) => (m.as_ptr(), m.len(), m.is_foreign()),
            Memory::Store(m) => (m.as_ptr(), m.len(), m.is_foreign()),
        };
        Pore {
            channel,
            memory,
            peer,
            base,
            len,
            foreign,
        }
    }

    /// Opens the **active** end: grants `pages` fresh zeroed pages to `peer` and allocates an
    /// unbound port for it. Send [`Pore::info`] to the peer (e.g. through xenstore).
    pub fn open_active(backend: &B, peer: DomId, pages: usize) -> Result<Self, BackendError<B>> {
        if pages == 0 {
            return Err(
                CoreError::new(ErrorKind::InvalidInput, "a pore needs at least one page").into(),
            );
        }
        let granted = backend.grant(peer, pages)?;
        let channel = backend.alloc_unbound(peer)?;
        Ok(Self::assemble(channel, Memory::Granted(granted), peer))
    }

    /// Opens the **passive** end: maps `refs` granted by `peer` and binds to its `port`.
    pub fn open_passive(
        backend: &B,
        peer: DomId,
        refs: &[GrantRef],
        port: Port,
    ) -> Result<Self, BackendError<B>> {
        if refs.is_empty() {
            return Err(
                CoreError::new(ErrorKind::InvalidInput, "a pore needs at least one page").into(),
            );
        }
        let mapped = backend.map(peer, refs)?;
        let channel = backend.bind_interdomain(peer, port)?;
        Ok(Self::assemble(channel, Memory::Mapped(mapped), peer))
    }

    /// Opens the **pre-existing** pore of this domain's xenstore page and port (D7). Its peer is
    /// dom0 (where xenstored lives); closing it unmaps nothing.
    pub fn open_store(backend: &B) -> Result<Self, BackendError<B>> {
        let (page, channel) = backend.open_store()?;
        Ok(Self::assemble(channel, Memory::Store(page), DomId::DOM0))
    }

    /// The role this pore was opened in.
    pub fn role(&self) -> PoreRole {
        match self.memory {
            Memory::Granted(_) => PoreRole::Active,
            Memory::Mapped(_) => PoreRole::Passive,
            Memory::Store(_) => PoreRole::PreExisting,
        }
    }

    /// The peer domain.
    pub fn peer(&self) -> DomId {
        self.peer
    }

    /// Number of shared pages.
    pub fn pages(&self) -> usize {
        self.len / crate::PAGE_SIZE
    }

    /// Refs and port for the handshake (the seed's `pore_straw:info/1`).
    pub fn info(&self) -> PoreInfo {
        let refs = match &self.memory {
            Memory::Granted(g) => g.refs().to_vec(),
            _ => Vec::new(),
        };
        PoreInfo {
            refs,
            port: self.channel.port(),
            peer: self.peer,
        }
    }

    /// Notifies the peer through the pore's event channel (the seed's `pore:poke/1`).
    pub fn notify(&self) -> Result<(), BackendError<B>> {
        self.channel.notify()
    }

    /// The event channel, to wait on or to pass to [`Events::select`](crate::Events::select).
    pub fn channel(&self) -> &B::Channel {
        &self.channel
    }

    /// A bounds-checked atomic view of the shared pages.
    pub fn memory(&self) -> SharedView<'_> {
        // SAFETY: `base`/`len`/`foreign` were read from the `SharedMemory` handle now in
        // `self.memory`, whose contract makes the address valid while the handle lives and
        // independent of moves of the handle (so caching it before moving the handle in is
        // sound), and makes `foreign` true only for memory outside every Rust allocation; the
        // view borrows `self`, so it cannot outlive the handle.
        unsafe {
            if self.foreign {
                SharedView::from_foreign_parts(self.base, self.len)
            } else {
                SharedView::from_raw_parts(self.base, self.len)
            }
        }
    }

    /// Arms an unmap notification (D8) on an active or passive pore. On a pre-existing pore this
    /// fails with [`ErrorKind::Unsupported`].
    pub fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<(), BackendError<B>> {
        if notify.clear_byte.is_some_and(|b| b >= self.len) {
            return Err(CoreError::new(
                ErrorKind::InvalidInput,
                "unmap-notify byte outside the pore",
            )
            .into());
        }
        match &mut self.memory {
            Memory::Granted(g) => g.set_unmap_notify(notify),
            Memory::Mapped(m) => m.set_unmap_notify(notify),
            Memory::Store(_) => Err(CoreError::new(
                ErrorKind::Unsupported,
                "unmap-notify on the pre-existing store pore",
            )
            .into()),
        }
    }

    /// Closes the pore: the port first, then the pages (end grant access / unmap). Every step is
    /// attempted; the first failure is returned. A grant the peer still maps is left on the
    /// backend's revoke-later list, with [`ErrorKind::Busy`] on a backend that can tell (on
    /// Linux the kernel defers it and the close succeeds).
    pub fn close(self) -> Result<(), BackendError<B>> {
        let Pore {
            channel, memory, ..
        } = self;
        let port = channel.close();
        let pages = match memory {
            Memory::Granted(g) => g.end_access(),
            Memory::Mapped(m) => m.unmap(),
            Memory::Store(_) => Ok(()),
        };
        port.and(pages)
    }
}

impl<B: Backend> SharedAccess for Pore<B> {
    fn len(&self) -> usize {
        self.len
    }
    fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        self.memory().load_u32(offset, order)
    }
    fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        self.memory().store_u32(offset, value, order)
    }
    fn load_u8(&self, offset: usize, order: Ordering) -> u8 {
        self.memory().load_u8(offset, order)
    }
    fn store_u8(&self, offset: usize, value: u8, order: Ordering) {
        self.memory().store_u8(offset, value, order)
    }
    fn swap_u8(&self, offset: usize, value: u8, order: Ordering) -> u8 {
        self.memory().swap_u8(offset, value, order)
    }
    fn fetch_or_u8(&self, offset: usize, bits: u8, order: Ordering) -> u8 {
        self.memory().fetch_or_u8(offset, bits, order)
    }
    fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        self.memory().read_bytes(offset, dst)
    }
    fn write_bytes(&self, offset: usize, src: &[u8]) {
        self.memory().write_bytes(offset, src)
    }
}
