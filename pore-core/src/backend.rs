//! The bundle of capabilities a [`crate::Pore`] needs.

use crate::{Events, Grants, Maps, StoreAccess};

/// A full backend: event channels, granting, mapping and the store page, all with one error
/// type. Implemented automatically for every type that has the four capabilities.
///
/// A backend without a store page implements [`StoreAccess`] with
/// `type StorePage = pore_core::NoStore` and returns [`crate::ErrorKind::Unsupported`].
pub trait Backend:
    Events
    + Grants<Error = <Self as Events>::Error>
    + Maps<Error = <Self as Events>::Error>
    + StoreAccess
{
}

impl<B> Backend for B where
    B: Events
        + Grants<Error = <B as Events>::Error>
        + Maps<Error = <B as Events>::Error>
        + StoreAccess
{
}

/// The error type of a [`Backend`] (its four capabilities share it).
pub type BackendError<B> = <B as Events>::Error;
