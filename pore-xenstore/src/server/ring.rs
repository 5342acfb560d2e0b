//! The server side of a guest's xenstore ring (`struct xenstore_domain_interface`,
//! `docs/protocol-facts.md` §5.3): `pore_ring::xenstore`'s server half (we consume the
//! request ring and produce the response ring) and the guest's event channel.
//!
//! The guest's indices are read and validated by pore-ring, the one path to memory a peer
//! writes; a bad index is an error that ends the guest's connection (the page's `error` field
//! is set to `XENSTORE_ERROR_RINGIDX`), never a panic.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pore_core::{EventChannel, SharedAccess, SharedMemory, WaitOutcome};
use pore_ring::prelude::*;
use pore_ring::xenstore::{XenstoreRing, XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX};
use pore_ring::RingError;

use crate::error::Error;

/// What the server serves for one guest: the server's side of its xenstore page and the
/// event channel bound to its store port.
///
/// The doorbell is any [`pore_core::EventChannel`]. A server that does not own the guest's
/// port as an event channel value (a test whose guest polls, a daemon whose events arrive
/// some other way) implements `EventChannel` for whatever signals it: `notify` rings the
/// guest, `wait` may return [`WaitOutcome::Timeout`] early (the server re-checks the ring
/// after every return, so a wait that only sleeps makes a polling server).
///
/// A link given a [`GuestReadiness`] ([`GuestLink::with_readiness`]) is served by the
/// server's event loop, with no thread of its own; a link without one gets a thread that
/// waits on its channel.
#[derive(Clone)]
pub struct GuestLink {
    link: Arc<dyn Link>,
    readiness: Option<Arc<dyn GuestReadiness>>,
}

/// A descriptor that becomes readable when the event channel of a guest (one of many,
/// usually: an event device multiplexes every port bound through it) may have fired:
/// [`pore_core::Events::readiness_fd`] of the backend the guests' channels were bound with.
///
/// The server's event loop waits on it (level-triggered). When it is readable, the loop calls
/// [`GuestReadiness::acknowledge`], then consumes the event of every guest channel sharing
/// this descriptor with [`EventChannel::try_wait`] and looks at each guest's ring. The
/// descriptor must therefore stop being readable once acknowledged and every such channel's
/// event consumed, and become readable again for any event after that; spurious readiness
/// is allowed. Links whose readiness has the same descriptor number share one entry of the
/// loop (the first one's `acknowledge` is used).
pub trait GuestReadiness: Send + Sync {
    /// The descriptor to wait on.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Called after the descriptor polled readable, before the channels are looked at: drain
    /// it if it needs draining (an eventfd). The default does nothing (a device that the
    /// channels' `try_wait` reads, as the Linux event device).
    fn acknowledge(&self) {}
}

impl GuestLink {
    /// Serves the server side `ring` of a guest's page, signalling on `channel`.
    pub fn new<A, C>(ring: XenstoreRing<A>, channel: C) -> Self
    where
        A: SharedAccess + Send + 'static,
        C: EventChannel + 'static,
    {
        GuestLink {
            link: Arc::new(Served {
                ring: Mutex::new(ring),
                broken: AtomicBool::new(false),
                channel,
            }),
            readiness: None,
        }
    }

    /// Serves this link from the server's event loop, waking on `readiness` (see
    /// [`GuestReadiness`]) instead of on a thread of its own.
    pub fn with_readiness(mut self, readiness: Arc<dyn GuestReadiness>) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// The readiness handle given with [`GuestLink::with_readiness`].
    pub(crate) fn readiness(&self) -> Option<&Arc<dyn GuestReadiness>> {
        self.readiness.as_ref()
    }

    /// Consumes a pending notification from the guest without blocking (re-arms its port).
    pub(crate) fn try_wait(&self) -> Result<bool, Error> {
        self.link.try_wait()
    }

    /// A link over a pore-core mapping of the guest's store page and an event channel
    /// bound to its store port.
    ///
    /// # Errors
    ///
    /// The page is too small or its indices are already inconsistent.
    pub fn from_pore<M, C>(page: M, channel: C) -> Result<Self, Error>
    where
        M: SharedMemory + 'static,
        C: EventChannel + 'static,
    {
        let ring = XenstoreRing::server(PageAccess(Arc::new(page)))?;
        Ok(Self::new(ring, channel))
    }

    /// Copies available request bytes into `buf` (never blocks).
    pub(crate) fn read(&self, buf: &mut [u8]) -> Result<usize, Error> {
        self.link.read(buf)
    }

    /// The guest broke the protocol (e.g. a message over the size limit): mark the page
    /// (`XENSTORE_ERROR_PROTO`) and stop using it.
    pub(crate) fn protocol_error(&self) {
        self.link.fail(XENSTORE_ERROR_PROTO);
    }

    /// Notifies the guest.
    pub(crate) fn notify(&self) -> Result<(), Error> {
        self.link.notify()
    }

    /// Waits up to `timeout` for a notification from the guest.
    pub(crate) fn wait(&self, timeout: Duration) -> Result<(), Error> {
        self.link.wait(timeout)
    }
}

impl std::fmt::Debug for GuestLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuestLink")
    }
}

/// A [`GuestLink`] with its page and channel types erased.
trait Link: Send + Sync {
    fn read(&self, buf: &mut [u8]) -> Result<usize, Error>;
    fn write(&self, buf: &[u8]) -> Result<usize, Error>;
    fn fail(&self, code: u32);
    fn notify(&self) -> Result<(), Error>;
    fn wait(&self, timeout: Duration) -> Result<(), Error>;
    fn try_wait(&self) -> Result<bool, Error>;
}

/// The ring (read by the guest's thread, written by whoever delivers its output: one lock,
/// held for a copy) and the channel.
struct Served<A: SharedAccess, C> {
    ring: Mutex<XenstoreRing<A>>,
    broken: AtomicBool,
    channel: C,
}

impl<A: SharedAccess, C> Served<A, C> {
    fn ring(&self) -> Result<MutexGuard<'_, XenstoreRing<A>>, Error> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(Error::Ring(RingError::Broken));
        }
        Ok(self.ring.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The guest broke the ring: mark the page and stop.
    fn broke(&self, ring: &XenstoreRing<A>, e: RingError) -> Error {
        self.broken.store(true, Ordering::Relaxed);
        ring.set_error(XENSTORE_ERROR_RINGIDX);
        Error::Ring(e)
    }
}

impl<A, C> Link for Served<A, C>
where
    A: SharedAccess + Send,
    C: EventChannel,
{
    fn read(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let mut ring = self.ring()?;
        match ring.reader().read(buf) {
            Ok(n) => Ok(n),
            Err(e) => Err(self.broke(&ring, e)),
        }
    }

    fn write(&self, buf: &[u8]) -> Result<usize, Error> {
        let mut ring = self.ring()?;
        match ring.writer().write(buf) {
            Ok(n) => Ok(n),
            Err(e) => Err(self.broke(&ring, e)),
        }
    }

    fn fail(&self, code: u32) {
        self.broken.store(true, Ordering::Relaxed);
        self.ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_error(code);
    }

    fn notify(&self) -> Result<(), Error> {
        self.channel
            .notify()
            .map_err(|e| Error::backend("notifying the guest", e))
    }

    fn wait(&self, timeout: Duration) -> Result<(), Error> {
        match self.channel.wait(timeout) {
            Ok(WaitOutcome::Event | WaitOutcome::Timeout) => Ok(()),
            Err(e) => Err(Error::backend("waiting for the guest", e)),
        }
    }

    fn try_wait(&self) -> Result<bool, Error> {
        self.channel
            .try_wait()
            .map_err(|e| Error::backend("polling the guest's channel", e))
    }
}

/// An owned `SharedAccess` over a pore-core mapping (through its `SharedView`).
struct PageAccess<M>(Arc<M>);

impl<M> Clone for PageAccess<M> {
    fn clone(&self) -> Self {
        PageAccess(self.0.clone())
    }
}

impl<M: SharedMemory> SharedAccess for PageAccess<M> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        self.0.view().load_u32(offset, order)
    }
    fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        self.0.view().store_u32(offset, value, order)
    }
    fn load_u8(&self, offset: usize, order: Ordering) -> u8 {
        self.0.view().load_u8(offset, order)
    }
    fn store_u8(&self, offset: usize, value: u8, order: Ordering) {
        self.0.view().store_u8(offset, value, order)
    }
    fn swap_u8(&self, offset: usize, value: u8, order: Ordering) -> u8 {
        self.0.view().swap_u8(offset, value, order)
    }
    fn fetch_or_u8(&self, offset: usize, bits: u8, order: Ordering) -> u8 {
        self.0.view().fetch_or_u8(offset, bits, order)
    }
    fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        self.0.view().read_bytes(offset, dst)
    }
    fn write_bytes(&self, offset: usize, src: &[u8]) {
        self.0.view().write_bytes(offset, src)
    }
}

/// Output of a guest connection: the response ring, then a notification.
pub(crate) struct RingSink {
    pub(crate) link: GuestLink,
}

impl super::conn::Sink for RingSink {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        Ok(self.link.link.write(buf)?)
    }
    fn written(&self) {
        if let Err(e) = self.link.notify() {
            tracing::debug!(error = %e, "guest notify failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pore_core::loopback::Loopback;
    use pore_core::{
        CoreError, DomId, Error as _, ErrorKind, GrantedPages, Grants, Maps, Port, SharedView,
    };
    use pore_ring::xenstore::{ERROR, REQ, REQ_CONS, REQ_PROD, RSP, RSP_CONS, RSP_PROD};

    /// A channel that never fires.
    struct Quiet;

    impl EventChannel for Quiet {
        type Error = CoreError;
        fn port(&self) -> Port {
            Port(0)
        }
        fn notify(&self) -> Result<(), CoreError> {
            Ok(())
        }
        fn try_wait(&self) -> Result<bool, CoreError> {
            Ok(false)
        }
        fn wait(&self, _: Duration) -> Result<WaitOutcome, CoreError> {
            Ok(WaitOutcome::Timeout)
        }
        fn close(self) -> Result<(), CoreError> {
            Ok(())
        }
    }

    fn with_page(f: impl FnOnce(SharedView<'_>, GuestLink)) {
        let xen = Loopback::new();
        let page = xen.domain(DomId(1)).grant(DomId(0), 1).unwrap();
        let view = page.view();
        for off in [REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD] {
            view.store_u32(off, u32::MAX - 2, Ordering::Relaxed);
        }
        let mapping = xen.domain(DomId(0)).map(DomId(1), page.refs()).unwrap();
        let link = GuestLink::from_pore(mapping, Quiet).unwrap();
        f(view, link);
    }

    /// Indices about to wrap past `u32::MAX`, then a hostile producer index: an error that
    /// marks the page, and every later use fails (no panic).
    #[test]
    fn wraps_and_rejects_bad_indices() {
        with_page(|page, link| {
            let start = u32::MAX - 2; // offset 1021
            page.write_bytes(REQ + 1021, b"abc");
            page.write_bytes(REQ, b"def");
            page.store_u32(REQ_PROD, start.wrapping_add(6), Ordering::Release);
            let mut buf = [0u8; 16];
            assert_eq!(link.read(&mut buf).unwrap(), 6);
            assert_eq!(&buf[..6], b"abcdef");
            assert_eq!(page.load_u32(REQ_CONS, Ordering::Relaxed), 3);
            assert_eq!(link.link.write(b"uvwxyz").unwrap(), 6);
            assert_eq!(page.load_u32(RSP_PROD, Ordering::Relaxed), 3);
            let mut rsp = [0u8; 6];
            page.read_bytes(RSP + 1021, &mut rsp[..3]);
            page.read_bytes(RSP, &mut rsp[3..]);
            assert_eq!(&rsp, b"uvwxyz");
            assert_eq!(link.link.write(&[7u8; 2000]).unwrap(), 1018);
            assert_eq!(link.link.write(b"x").unwrap(), 0);

            page.store_u32(REQ_PROD, 5000, Ordering::Release);
            let e = link.read(&mut buf).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol);
            assert_eq!(
                page.load_u32(ERROR, Ordering::Relaxed),
                XENSTORE_ERROR_RINGIDX
            );
            assert!(link.read(&mut buf).is_err());
            assert!(link.link.write(b"x").is_err());
        });
    }

    #[test]
    fn protocol_error_marks_the_page() {
        with_page(|page, link| {
            link.protocol_error();
            assert_eq!(
                page.load_u32(ERROR, Ordering::Relaxed),
                XENSTORE_ERROR_PROTO
            );
            assert!(link.read(&mut [0u8; 4]).is_err());
        });
    }
}
