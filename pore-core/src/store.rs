//! Access to the domain's own xenstore page and event channel (D7).

use crate::{Events, SharedMemory};

/// The capability to reach this domain's xenstore ring page and its event channel: the page and
/// port that "appear magically" in the seed (start info, HVM params, or the simulator's
/// toolstack). The result becomes a pre-existing [`crate::Pore`]; dropping it unmaps nothing.
pub trait StoreAccess: Events {
    /// The store page handle.
    type StorePage: SharedMemory;

    /// Returns the store page and a channel bound to the store's port.
    fn open_store(&self) -> Result<(Self::StorePage, Self::Channel), Self::Error>;
}

/// Sharing a backend: `&T` opens the store through `T`.
impl<T: StoreAccess + ?Sized> StoreAccess for &T {
    type StorePage = T::StorePage;

    fn open_store(&self) -> Result<(Self::StorePage, Self::Channel), Self::Error> {
        (**self).open_store()
    }
}

/// Sharing a backend: `Arc<T>` opens the store through `T`.
impl<T: StoreAccess + ?Sized> StoreAccess for alloc::sync::Arc<T> {
    type StorePage = T::StorePage;

    fn open_store(&self) -> Result<(Self::StorePage, Self::Channel), Self::Error> {
        (**self).open_store()
    }
}

/// The store page type of a backend without one (its `open_store` returns
/// [`crate::ErrorKind::Unsupported`]). It cannot be constructed.
#[derive(Debug)]
pub enum NoStore {}

// SAFETY: `NoStore` is uninhabited, so no value exists whose methods could be called.
unsafe impl SharedMemory for NoStore {
    fn as_ptr(&self) -> core::ptr::NonNull<u8> {
        match *self {}
    }
    fn len(&self) -> usize {
        match *self {}
    }
}
