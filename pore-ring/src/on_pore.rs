//! Rings on a pore: the constructors that grant or map a ring's pages and bind its event
//! channel in one call.
//!
//! [`V2Ring::open_active`] grants the control page and the data pages to the peer, allocates
//! the port and initialises the ring; the peer learns the control page's ref and the port (for
//! strawman, through xenstore) and calls [`V2Ring::open_passive`], which maps the control page
//! alone, reads and validates the geometry and the data refs from it, then maps the whole ring.
//! [`V2Ring::open_passive_all`] is for backends that cannot map a single page of a grant (such as
//! pore-core's loopback): the peer passes every ref. [`LingRing::open_active`] /
//! [`LingRing::open_passive`] do the same for LING's fixed 8 pages.
//!
//! Each returns a [`PoreRing`]: the ring, whose halves share the [`Pore`] through an [`Arc`],
//! and the pore itself (its event channel, its refs, its close).

use alloc::sync::Arc;
use alloc::vec;

use pore_core::{
    Backend, BackendError, CoreError, DomId, ErrorKind, GrantRef, MappedPages, Pore, Port,
    SharedMemory,
};

use crate::ling::{LingRing, LING_PAGES};
use crate::v2::{self, V2Geometry, V2Ring};
use crate::RingError;

/// A ring and the pore it lives on. The ring (or its halves, once split) holds the pore too, so
/// the pore's pages stay mapped (or granted) for as long as any of them lives.
#[derive(Debug)]
pub struct PoreRing<B: Backend, R> {
    /// The pore: its event channel, its refs ([`Pore::info`]).
    pub pore: Arc<Pore<B>>,
    /// The ring over the pore's pages.
    pub ring: R,
}

impl<B: Backend, R> PoreRing<B, R> {
    /// Drops the ring, then closes the pore (port, then pages).
    ///
    /// # Errors
    ///
    /// The backend's error; [`ErrorKind::Busy`] if halves split off the ring still hold the
    /// pore (it is then closed quietly when the last of them goes).
    pub fn close(self) -> Result<(), BackendError<B>> {
        let PoreRing { pore, ring } = self;
        drop(ring);
        match Arc::try_unwrap(pore) {
            Ok(pore) => pore.close(),
            Err(_) => {
                Err(CoreError::new(ErrorKind::Busy, "ring halves still hold the pore").into())
            }
        }
    }
}

/// Why opening a ring on a pore failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError<E> {
    /// The backend failed (granting, mapping, binding the port).
    #[error("backend: {0}")]
    Backend(#[source] E),
    /// The ring's header or geometry is wrong (the peer's or ours).
    #[error("ring: {0}")]
    Ring(#[source] RingError),
}

impl<E: pore_core::Error> From<CoreError> for OpenError<E> {
    fn from(e: CoreError) -> Self {
        OpenError::Backend(E::from(e))
    }
}

impl<E> From<RingError> for OpenError<E> {
    fn from(e: RingError) -> Self {
        OpenError::Ring(e)
    }
}

impl<E: pore_core::Error> pore_core::Error for OpenError<E> {
    fn kind(&self) -> ErrorKind {
        match self {
            OpenError::Backend(e) => e.kind(),
            OpenError::Ring(e) => e.kind(),
        }
    }
}

type Opened<B, R> = Result<PoreRing<B, R>, OpenError<BackendError<B>>>;

impl<B: Backend> V2Ring<Arc<Pore<B>>> {
    /// Grants a v2 ring of `geometry` to `peer` on a new pore (control page first, then the data
    /// pages), allocates its port and initialises the ring. The peer needs
    /// `pore.info().refs[0]` (the control page) and `pore.info().port`.
    ///
    /// # Errors
    ///
    /// The backend's error.
    pub fn open_active(backend: &B, peer: DomId, geometry: V2Geometry) -> Opened<B, Self> {
        let pore =
            Pore::open_active(backend, peer, geometry.pages()).map_err(OpenError::Backend)?;
        let refs = pore.info().refs;
        let pore = Arc::new(pore);
        let ring = V2Ring::active(pore.clone(), geometry, &refs[1..])?;
        Ok(PoreRing { pore, ring })
    }

    /// Maps the v2 ring `peer` granted with control page `control`, binding its `port`: maps
    /// the control page alone, reads the geometry and the data refs once and validates them
    /// (at most [`v2::V2_MAX_GRANTS`] refs), unmaps it, then maps the whole ring.
    ///
    /// # Errors
    ///
    /// The backend's error, or [`OpenError::Ring`] if the control page is malformed.
    pub fn open_passive(
        backend: &B,
        peer: DomId,
        control: GrantRef,
        port: Port,
    ) -> Opened<B, Self> {
        let page = backend.map(peer, &[control]).map_err(OpenError::Backend)?;
        let geometry = V2Geometry::read(&page.view());
        let all = geometry.and_then(|g| {
            let mut all = vec![GrantRef(0); g.pages()];
            all[0] = control;
            v2::grants_of(&page.view(), g, &mut all[1..]).map(|_| (g, all))
        });
        page.unmap().map_err(OpenError::Backend)?;
        let (geometry, all) = all?;
        let pore =
            Arc::new(Pore::open_passive(backend, peer, &all, port).map_err(OpenError::Backend)?);
        let ring = V2Ring::passive_expecting(pore.clone(), geometry)?;
        Ok(PoreRing { pore, ring })
    }

    /// As [`V2Ring::open_passive`], for backends that cannot map a single page of a grant: maps
    /// `all_refs` (control page first) at once, then checks that the control page lists exactly
    /// the other refs as its data pages.
    ///
    /// # Errors
    ///
    /// The backend's error, or [`OpenError::Ring`] if the control page is malformed or lists
    /// other data pages.
    pub fn open_passive_all(
        backend: &B,
        peer: DomId,
        all_refs: &[GrantRef],
        port: Port,
    ) -> Opened<B, Self> {
        let pore = Pore::open_passive(backend, peer, all_refs, port).map_err(OpenError::Backend)?;
        let checked = V2Geometry::read(&pore).and_then(|g| {
            if all_refs.len() != g.pages() {
                return Err(RingError::BadHeader("the geometry does not match the refs"));
            }
            let mut listed = vec![GrantRef(0); g.data_pages()];
            v2::grants_of(&pore, g, &mut listed)?;
            if listed[..] != all_refs[1..] {
                return Err(RingError::BadHeader("control page lists other data pages"));
            }
            Ok(g)
        });
        let geometry = match checked {
            Ok(g) => g,
            Err(e) => {
                // The malformed header is what the caller needs to hear of; a failure to close
                // the pore we are abandoning changes nothing for it.
                let _ = pore.close();
                return Err(e.into());
            }
        };
        let pore = Arc::new(pore);
        let ring = V2Ring::passive_expecting(pore.clone(), geometry)?;
        Ok(PoreRing { pore, ring })
    }
}

impl<B: Backend> LingRing<Arc<Pore<B>>> {
    /// Grants LING's 8 ring pages to `peer` on a new pore, allocates its port and initialises
    /// the ring (the granting side). The peer needs all of `pore.info().refs` and the port.
    ///
    /// # Errors
    ///
    /// The backend's error.
    pub fn open_active(backend: &B, peer: DomId) -> Opened<B, Self> {
        let pore =
            Arc::new(Pore::open_active(backend, peer, LING_PAGES).map_err(OpenError::Backend)?);
        let ring = LingRing::active(pore.clone())?;
        Ok(PoreRing { pore, ring })
    }

    /// Maps LING's 8 ring pages `peer` granted (`refs`, in order) and binds its `port` (the
    /// mapping side).
    ///
    /// # Errors
    ///
    /// The backend's error; [`OpenError::Ring`] unless there are exactly 8 refs.
    pub fn open_passive(
        backend: &B,
        peer: DomId,
        refs: &[GrantRef],
        port: Port,
    ) -> Opened<B, Self> {
        if refs.len() != LING_PAGES {
            return Err(RingError::InvalidInput("LING needs 8 ring refs").into());
        }
        let pore =
            Arc::new(Pore::open_passive(backend, peer, refs, port).map_err(OpenError::Backend)?);
        let ring = LingRing::passive(pore.clone())?;
        Ok(PoreRing { pore, ring })
    }
}
