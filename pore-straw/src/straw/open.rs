//! Opening the pore of a layout: granting or mapping its pages and setting up its ring.

use std::sync::Arc;
use std::vec;
use std::vec::Vec;

use pore_core::{
    Backend, DomId, Error as _, ErrorKind, EventChannel, GrantRef, MappedPages, Pore, PoreRole,
    Port, SharedMemory, UnmapNotify,
};
use pore_ring::ling::{LingConsumer, LingProducer, LingRing, LING_PAGES};
use pore_ring::v2::{self, V2Geometry, V2Ring};
use pore_ring::window::{ReadInPlace, SharedSlice, SharedSliceMut, WriteInPlace};
use pore_ring::{RingError, RingReader, RingWriter, SharedRing};

use crate::handshake::PoreGrant;
use crate::Layout;

use super::*;

pub(super) type Mem<B> = Arc<Pore<B>>;

pub(super) enum Tx<B: Backend> {
    Ling(LingProducer<Mem<B>>),
    V2(v2::Producer<Mem<B>>),
}

pub(super) enum Rx<B: Backend> {
    Ling(LingConsumer<Mem<B>>),
    V2(v2::Consumer<Mem<B>>),
}

/// Forwards a call to whichever layout a `Tx` or `Rx` holds.
macro_rules! delegate {
    ($enum:ident, $self:ident, $r:ident => $e:expr) => {
        match $self {
            $enum::Ling($r) => $e,
            $enum::V2($r) => $e,
        }
    };
}

impl<B: Backend> RingWriter for Tx<B> {
    type Error = RingError;

    fn capacity(&self) -> usize {
        delegate!(Tx, self, r => r.capacity())
    }
    fn writable(&self) -> Result<usize, RingError> {
        delegate!(Tx, self, r => r.writable())
    }
    fn write_deferred(&mut self, buf: &[u8]) -> Result<usize, RingError> {
        delegate!(Tx, self, r => r.write_deferred(buf))
    }
    fn commit(&mut self) -> Result<(), RingError> {
        delegate!(Tx, self, r => r.commit())
    }
    fn take_notify(&mut self) -> bool {
        delegate!(Tx, self, r => RingWriter::take_notify(r))
    }
    /// In polling mode (D26) nothing is armed: the ring is only re-checked.
    fn prepare_wait(&mut self) -> Result<bool, RingError> {
        match self {
            Tx::V2(r) if r.is_polling() => {
                r.commit()?;
                Ok(r.writable()? > 0)
            }
            r => delegate!(Tx, r, r => RingWriter::prepare_wait(r)),
        }
    }
    fn is_broken(&self) -> bool {
        delegate!(Tx, self, r => RingWriter::is_broken(r))
    }
}

impl<B: Backend> RingReader for Rx<B> {
    type Error = RingError;

    fn capacity(&self) -> usize {
        delegate!(Rx, self, r => r.capacity())
    }
    fn readable(&self) -> Result<usize, RingError> {
        delegate!(Rx, self, r => r.readable())
    }
    fn read_deferred(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        delegate!(Rx, self, r => r.read_deferred(buf))
    }
    fn release(&mut self) -> Result<(), RingError> {
        delegate!(Rx, self, r => r.release())
    }
    fn take_notify(&mut self) -> bool {
        delegate!(Rx, self, r => RingReader::take_notify(r))
    }
    /// In polling mode (D26) nothing is armed: the ring is only re-checked.
    fn prepare_wait(&mut self) -> Result<bool, RingError> {
        match self {
            Rx::V2(r) if r.is_polling() => {
                r.release()?;
                Ok(r.readable()? > 0)
            }
            r => delegate!(Rx, r, r => RingReader::prepare_wait(r)),
        }
    }
    fn is_broken(&self) -> bool {
        delegate!(Rx, self, r => RingReader::is_broken(r))
    }
}

impl<B: Backend> WriteInPlace for Tx<B> {
    type Mem = Mem<B>;

    fn write_in_place(
        &mut self,
        max: usize,
        f: impl FnOnce(SharedSliceMut<'_, Mem<B>>) -> usize,
    ) -> Result<usize, RingError> {
        delegate!(Tx, self, r => r.write_in_place(max, f))
    }
}

impl<B: Backend> ReadInPlace for Rx<B> {
    type Mem = Mem<B>;

    fn read_in_place(
        &mut self,
        max: usize,
        f: impl FnOnce(SharedSlice<'_, Mem<B>>) -> usize,
    ) -> Result<usize, RingError> {
        delegate!(Rx, self, r => r.read_in_place(max, f))
    }
}

/// A pore with its ring set up, ready to become a [`Straw`].
pub struct StrawPore<B: Backend> {
    pub(super) pore: Mem<B>,
    pub(super) tx: Tx<B>,
    pub(super) rx: Rx<B>,
    pub(super) layout: Layout,
    /// v2: (our live byte, the peer's live byte).
    pub(super) live: Option<(usize, usize)>,
}

impl<B: Backend> core::fmt::Debug for StrawPore<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StrawPore")
            .field("pore", &self.pore)
            .field("layout", &self.layout)
            .finish()
    }
}

impl<B: Backend> StrawPore<B> {
    /// The layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Puts both ring halves in polling mode (D26), or back: no wake flags, no events, and
    /// the straw made from this pore waits by spinning and brief sleeps. Both sides must agree
    /// (a side that sleeps on a polling peer is woken only by its timeouts); a managed straw
    /// negotiates it (`HandshakeConfig::polling`), a straw made with [`Straw::new`] needs
    /// the same call on both sides. Only the v2 layout has it: LING fails with
    /// [`StrawError::Ring`] ([`RingError::InvalidInput`]).
    ///
    /// ```
    /// use pore_core::{loopback::Loopback, DomId};
    /// use pore_straw::straw::{open_active, open_passive_v2_all, StrawError};
    /// use pore_straw::Layout;
    ///
    /// let xen = Loopback::new();
    /// let (a, b) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
    /// let (mut pa, grant) = open_active(&a, DomId(2), Layout::V2 { ring_pages: 1 })?;
    /// let mut pb = open_passive_v2_all(&b, DomId(1), 1, &pa.all_refs(), grant.port)?;
    /// pa.set_polling(true)?;
    /// pb.set_polling(true)?;
    /// assert!(pa.is_polling() && pb.is_polling());
    /// # Ok::<(), StrawError>(())
    /// ```
    pub fn set_polling(&mut self, polling: bool) -> Result<(), StrawError> {
        match (&mut self.tx, &mut self.rx) {
            (Tx::V2(tx), Rx::V2(rx)) => {
                tx.set_polling(polling);
                rx.set_polling(polling);
                Ok(())
            }
            _ if !polling => Ok(()),
            _ => Err(StrawError::Ring(RingError::InvalidInput(
                "polling mode needs the v2 layout",
            ))),
        }
    }

    /// Whether [`StrawPore::set_polling`] is on.
    pub fn is_polling(&self) -> bool {
        match &self.tx {
            Tx::V2(tx) => tx.is_polling(),
            Tx::Ling(_) => false,
        }
    }

    /// Closes the pore (as [`Straw`] would, had it become one) and returns how many of our
    /// granted pages the peer still maps: they wait on the backend's revoke-later list.
    pub(crate) fn close_counting_parked(self) -> usize {
        let StrawPore { pore, tx, rx, .. } = self;
        drop((tx, rx));
        match Arc::try_unwrap(pore) {
            Ok(p) => close_counting_parked(p),
            // Not reached (the rings were its only other holders); closed quietly when dropped.
            Err(_) => 0,
        }
    }

    /// Every grant ref of the pore in page order (an active pore; empty for a passive one).
    /// For v2 the data refs also sit in the control page, where the peer reads them.
    pub fn all_refs(&self) -> Vec<GrantRef> {
        self.pore.info().refs
    }
}

/// As [`open_passive`] for v2, for backends that cannot map a single page of a grant (such as
/// pore-core's loopback): maps `all_refs` (control page first) at once, then checks that the
/// control page lists exactly the other refs as its data pages.
pub fn open_passive_v2_all<B: Backend>(
    backend: &B,
    peer: DomId,
    ring_pages: u32,
    all_refs: &[GrantRef],
    port: Port,
) -> Result<StrawPore<B>, StrawError> {
    let want = geometry(ring_pages)?;
    if all_refs.len() != want.pages() {
        return Err(StrawError::Ring(RingError::InvalidInput(
            "wrong number of v2 refs",
        )));
    }
    let mut pore =
        Pore::open_passive(backend, peer, all_refs, port).map_err(StrawError::backend)?;
    let mut listed = vec![GrantRef(0); want.data_pages()];
    let check = v2::read_grants_expecting(&pore.memory(), want, &mut listed).and_then(|_| {
        if listed[..] == all_refs[1..] {
            Ok(())
        } else {
            Err(RingError::BadHeader("control page lists other data pages"))
        }
    });
    if let Err(e) = check {
        let _ = pore.close();
        return Err(e.into());
    }
    arm_unmap_notify(&mut pore, Some(v2::PASSIVE_LIVE));
    let pore = Arc::new(pore);
    let (tx, rx) = V2Ring::passive_expecting(pore.clone(), want)?.split();
    Ok(StrawPore {
        pore,
        tx: Tx::V2(tx),
        rx: Rx::V2(rx),
        layout: Layout::V2 { ring_pages },
        live: Some((v2::PASSIVE_LIVE, v2::ACTIVE_LIVE)),
    })
}

pub(super) fn geometry(ring_pages: u32) -> Result<V2Geometry, StrawError> {
    if ring_pages == 0 || !ring_pages.is_power_of_two() {
        return Err(StrawError::Ring(RingError::InvalidInput(
            "v2 ring pages must be a power of two",
        )));
    }
    let order = ring_pages.trailing_zeros() as u8;
    Ok(V2Geometry::new(order, order)?)
}

/// Closes `pore` (the port, then the pages) and returns how many of its pages were left on
/// the backend's revoke-later list because the peer still maps them (XSA-396: never freed
/// under the peer). Only granted pages can be left so.
pub(crate) fn close_counting_parked<B: Backend>(pore: Pore<B>) -> usize {
    let granted = pore.role() == PoreRole::Active;
    let (pages, peer) = (pore.pages(), pore.peer());
    match pore.close() {
        Ok(()) => 0,
        Err(e) if granted && e.kind() == ErrorKind::Busy => {
            tracing::debug!(peer = %peer, pages, "straw: the peer still maps our pages: revoked later");
            pages
        }
        Err(e) => {
            tracing::debug!(peer = %peer, error = %e, "straw: closing the pore");
            0
        }
    }
}

pub(super) fn arm_unmap_notify<B: Backend>(pore: &mut Pore<B>, live: Option<usize>) {
    let notify = UnmapNotify {
        clear_byte: live,
        send_event: Some(pore.channel().port()),
    };
    if let Err(e) = pore.set_unmap_notify(notify) {
        tracing::debug!(error = %e, "straw: no unmap-notify");
    }
}

/// Opens the active (granting) side of a straw pore for `layout` (the listener's side):
/// grants the pages, allocates the port, initialises the ring. Returns what the handshake
/// publishes.
pub fn open_active<B: Backend>(
    backend: &B,
    peer: DomId,
    layout: Layout,
) -> Result<(StrawPore<B>, PoreGrant), StrawError> {
    match layout {
        Layout::Ling => {
            let mut pore =
                Pore::open_active(backend, peer, LING_PAGES).map_err(StrawError::backend)?;
            arm_unmap_notify(&mut pore, None);
            let info = pore.info();
            let pore = Arc::new(pore);
            let (tx, rx) = LingRing::active(pore.clone())?.split();
            let grant = PoreGrant {
                refs: info.refs,
                port: info.port,
            };
            let sp = StrawPore {
                pore,
                tx: Tx::Ling(tx),
                rx: Rx::Ling(rx),
                layout,
                live: None,
            };
            Ok((sp, grant))
        }
        Layout::V2 { ring_pages } => {
            let g = geometry(ring_pages)?;
            let mut pore =
                Pore::open_active(backend, peer, g.pages()).map_err(StrawError::backend)?;
            arm_unmap_notify(&mut pore, Some(v2::ACTIVE_LIVE));
            let info = pore.info();
            let pore = Arc::new(pore);
            let ring = V2Ring::active(pore.clone(), g, &info.refs[1..])?;
            let (tx, rx) = ring.split();
            let grant = PoreGrant {
                refs: vec![info.refs[0]],
                port: info.port,
            };
            let sp = StrawPore {
                pore,
                tx: Tx::V2(tx),
                rx: Rx::V2(rx),
                layout,
                live: Some((v2::ACTIVE_LIVE, v2::PASSIVE_LIVE)),
            };
            Ok((sp, grant))
        }
    }
}

/// Opens the passive (mapping) side of a straw pore (the opener's side) from what the listener
/// published: LING's 8 refs, or v2's control-page ref (the data refs are read from the control
/// page and validated).
pub fn open_passive<B: Backend>(
    backend: &B,
    peer: DomId,
    layout: Layout,
    refs: &[GrantRef],
    port: Port,
) -> Result<StrawPore<B>, StrawError> {
    match layout {
        Layout::Ling => {
            if refs.len() != LING_PAGES {
                return Err(StrawError::Ring(RingError::InvalidInput(
                    "LING needs 8 ring refs",
                )));
            }
            let mut pore =
                Pore::open_passive(backend, peer, refs, port).map_err(StrawError::backend)?;
            arm_unmap_notify(&mut pore, None);
            let pore = Arc::new(pore);
            let (tx, rx) = LingRing::passive(pore.clone())?.split();
            Ok(StrawPore {
                pore,
                tx: Tx::Ling(tx),
                rx: Rx::Ling(rx),
                layout,
                live: None,
            })
        }
        Layout::V2 { ring_pages } => {
            let [ctrl] = refs else {
                return Err(StrawError::Ring(RingError::InvalidInput(
                    "v2 needs exactly the control page ref",
                )));
            };
            // Map the control page alone to learn the data pages.
            let control = backend.map(peer, &[*ctrl]).map_err(StrawError::backend)?;
            let want = match geometry(ring_pages) {
                Ok(g) => g,
                Err(e) => {
                    let _ = control.unmap();
                    return Err(e);
                }
            };
            let mut all = vec![GrantRef(0); 1 + want.data_pages()];
            all[0] = *ctrl;
            // The geometry is read once; the grant list is sized from the negotiated one.
            let read = v2::read_grants_expecting(&control.view(), want, &mut all[1..]);
            if let Err(e) = control.unmap() {
                tracing::debug!(error = %e, "straw: unmapping the control page");
            }
            read?;
            let mut pore =
                Pore::open_passive(backend, peer, &all, port).map_err(StrawError::backend)?;
            arm_unmap_notify(&mut pore, Some(v2::PASSIVE_LIVE));
            let pore = Arc::new(pore);
            let (tx, rx) = V2Ring::passive_expecting(pore.clone(), want)?.split();
            Ok(StrawPore {
                pore,
                tx: Tx::V2(tx),
                rx: Rx::V2(rx),
                layout,
                live: Some((v2::PASSIVE_LIVE, v2::ACTIVE_LIVE)),
            })
        }
    }
}
