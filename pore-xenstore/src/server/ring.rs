//! The server side of a guest's xenstore ring (`struct xenstore_domain_interface`,
//! `docs/protocol-facts.md` §5.3): we consume the request ring and produce the response ring.
//! The guest's indices are read once per operation and validated; ours live in private memory.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pore_core::{EventChannel, SharedAccess, SharedMemory, WaitOutcome};
use pore_ring::prelude::*;
use pore_ring::xenstore::XenstoreRing;
use pore_ring::{ByteConsumer, ByteProducer};

use crate::ring::{
    RingAccess, REQ_CONS, REQ_OFFSET, REQ_PROD, RING_SIZE, RSP_CONS, RSP_OFFSET, RSP_PROD,
};

/// Offset of the page's `error` field.
const ERROR_FIELD: usize = crate::ring::ERROR;
/// `XENSTORE_ERROR_RINGIDX`.
const ERROR_RINGIDX: u32 = 2;
/// `XENSTORE_ERROR_PROTO`.
const ERROR_PROTO: u32 = 3;

/// A guest's event channel as the server sees it.
pub trait GuestEvents: Send + Sync {
    /// Notifies the guest.
    fn notify(&self) -> io::Result<()>;
    /// Waits up to `timeout` for a notification from the guest; `Ok(true)` if one came.
    /// A notification sent while nobody waits must be remembered (as event channels do).
    fn wait(&self, timeout: Duration) -> io::Result<bool>;
}

/// The server's side of a guest's request and response rings.
///
/// `read` is called by one thread only; `write` by one thread at a time.
pub trait GuestRing: Send + Sync {
    /// Copies available request bytes into `buf` (never blocks).
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes what fits of `buf` into the response ring (never blocks).
    fn write(&self, buf: &[u8]) -> io::Result<usize>;
    /// The guest broke the protocol (e.g. a message over the size limit): mark the page
    /// (`XENSTORE_ERROR_PROTO`) and stop using it.
    fn protocol_error(&self);
}

/// What a [`DomainConnector`](super::DomainConnector) hands over for a guest: its ring
/// and its event channel.
#[derive(Clone)]
pub struct GuestLink {
    /// The guest's rings.
    pub ring: Arc<dyn GuestRing>,
    /// The bound event channel.
    pub events: Arc<dyn GuestEvents>,
}

impl GuestLink {
    /// A link over a page reached through `RingAccess` (any memory: a test's file, a
    /// mapping) and an event channel.
    pub fn from_access(
        page: Arc<dyn RingAccess + Send + Sync>,
        events: Arc<dyn GuestEvents>,
    ) -> Self {
        GuestLink {
            ring: Arc::new(ServerRing::new(page)),
            events,
        }
    }

    /// A link over a pore-core mapping of the guest's store page and an event channel
    /// bound to its store port: the ring is `pore_ring::xenstore`'s server side.
    ///
    /// # Errors
    ///
    /// The page is too small or its indices are already inconsistent.
    pub fn from_pore<M, C>(page: M, channel: C) -> Result<Self, pore_ring::RingError>
    where
        M: SharedMemory + 'static,
        C: EventChannel + 'static,
    {
        Ok(GuestLink {
            ring: Arc::new(PoreRing::new(page)?),
            events: Arc::new(ChannelEvents(channel)),
        })
    }
}

impl std::fmt::Debug for GuestLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuestLink")
    }
}

/// Server side of one xenstore ring.
pub struct ServerRing {
    page: Arc<dyn RingAccess + Send + Sync>,
    req_cons: AtomicU32,
    rsp_prod: Mutex<u32>,
    broken: AtomicBool,
}

impl std::fmt::Debug for ServerRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerRing")
            .field("broken", &self.broken.load(Ordering::Relaxed))
            .finish()
    }
}

fn broken() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "xenstore ring index out of range",
    )
}

impl ServerRing {
    /// Serves the ring on `page`, starting from the indices found there.
    pub fn new(page: Arc<dyn RingAccess + Send + Sync>) -> Self {
        let req_cons = page.load_u32(REQ_CONS);
        let rsp_prod = page.load_u32(RSP_PROD);
        ServerRing {
            page,
            req_cons: AtomicU32::new(req_cons),
            rsp_prod: Mutex::new(rsp_prod),
            broken: AtomicBool::new(false),
        }
    }

    /// True after the guest broke the protocol.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    fn mark(&self, code: u32) -> io::Error {
        self.broken.store(true, Ordering::Relaxed);
        self.page.store_u32(ERROR_FIELD, code);
        broken()
    }

    /// Marks the ring broken because the guest sent a message over the size limit.
    pub fn protocol_error(&self) {
        let _ = self.mark(ERROR_PROTO);
    }

    /// Copies available request bytes into `buf` (never blocks). Only one thread reads.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if self.is_broken() {
            return Err(broken());
        }
        let cons = self.req_cons.load(Ordering::Relaxed);
        let prod = self.page.load_u32(REQ_PROD);
        let avail = prod.wrapping_sub(cons) as usize;
        if avail > RING_SIZE {
            return Err(self.mark(ERROR_RINGIDX));
        }
        let n = avail.min(buf.len());
        let mut done = 0;
        while done < n {
            let off = ring_offset(cons, done);
            let k = (RING_SIZE - off).min(n - done);
            self.page
                .read_bytes(REQ_OFFSET + off, &mut buf[done..done + k]);
            done += k;
        }
        let new = cons.wrapping_add(n as u32);
        self.req_cons.store(new, Ordering::Relaxed);
        if n > 0 {
            self.page.store_u32(REQ_CONS, new);
        }
        Ok(n)
    }

    /// Writes what fits of `buf` into the response ring (never blocks).
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        if self.is_broken() {
            return Err(broken());
        }
        let mut prod = self.rsp_prod.lock().unwrap_or_else(|e| e.into_inner());
        let cons = self.page.load_u32(RSP_CONS);
        let used = prod.wrapping_sub(cons) as usize;
        if used > RING_SIZE {
            return Err(self.mark(ERROR_RINGIDX));
        }
        let n = (RING_SIZE - used).min(buf.len());
        let mut done = 0;
        while done < n {
            let off = ring_offset(*prod, done);
            let k = (RING_SIZE - off).min(n - done);
            self.page
                .write_bytes(RSP_OFFSET + off, &buf[done..done + k]);
            done += k;
        }
        if n > 0 {
            *prod = prod.wrapping_add(n as u32);
            self.page.store_u32(RSP_PROD, *prod);
        }
        Ok(n)
    }
}

impl GuestRing for ServerRing {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        ServerRing::read(self, buf)
    }
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        ServerRing::write(self, buf)
    }
    fn protocol_error(&self) {
        ServerRing::protocol_error(self)
    }
}

/// An owned `SharedAccess` over a pore-core mapping.
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

/// A guest ring through `pore_ring::xenstore` (server side) over a pore-core mapping.
struct PoreRing<M: SharedMemory> {
    page: PageAccess<M>,
    tx: Mutex<ByteProducer<PageAccess<M>>>,
    rx: Mutex<ByteConsumer<PageAccess<M>>>,
    broken: AtomicBool,
}

impl<M: SharedMemory> PoreRing<M> {
    fn new(page: M) -> Result<Self, pore_ring::RingError> {
        let page = PageAccess(Arc::new(page));
        let (tx, rx) = XenstoreRing::server(page.clone())?.split();
        Ok(PoreRing {
            page,
            tx: Mutex::new(tx),
            rx: Mutex::new(rx),
            broken: AtomicBool::new(false),
        })
    }

    fn fail(&self, e: pore_ring::RingError) -> io::Error {
        self.broken.store(true, Ordering::Relaxed);
        self.page
            .store_u32(ERROR_FIELD, ERROR_RINGIDX, Ordering::Release);
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl<M: SharedMemory> GuestRing for PoreRing<M> {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(broken());
        }
        let mut rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        rx.read(buf).map_err(|e| self.fail(e))
    }
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(broken());
        }
        let mut tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        tx.write(buf).map_err(|e| self.fail(e))
    }
    fn protocol_error(&self) {
        self.broken.store(true, Ordering::Relaxed);
        self.page
            .store_u32(ERROR_FIELD, ERROR_PROTO, Ordering::Release);
    }
}

/// A pore-core event channel as [`GuestEvents`].
struct ChannelEvents<C>(C);

/// A backend error as an I/O error; a gone guest becomes `ConnectionAborted` so the server can
/// tell a domain's ordinary death from a failure.
fn channel_error<E: pore_core::Error>(e: E) -> io::Error {
    if e.is_peer_gone() {
        io::Error::new(io::ErrorKind::ConnectionAborted, e)
    } else {
        io::Error::other(e)
    }
}

impl<C: EventChannel> GuestEvents for ChannelEvents<C> {
    fn notify(&self) -> io::Result<()> {
        self.0.notify().map_err(channel_error)
    }
    fn wait(&self, timeout: Duration) -> io::Result<bool> {
        match self.0.wait(timeout) {
            Ok(WaitOutcome::Event) => Ok(true),
            Ok(WaitOutcome::Timeout) => Ok(false),
            Err(e) => Err(channel_error(e)),
        }
    }
}

/// Output of a guest connection: the response ring, then a notification.
pub(crate) struct RingSink {
    pub(crate) ring: Arc<dyn GuestRing>,
    pub(crate) events: Arc<dyn GuestEvents>,
}

impl super::conn::Sink for RingSink {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.ring.write(buf)
    }
    fn written(&self) {
        if let Err(e) = self.events.notify() {
            tracing::debug!(error = %e, "guest notify failed");
        }
    }
}

/// Offset in a ring's data area of free-running index `idx` advanced by `done` bytes
/// (`done` < `RING_SIZE`): computed in `u32` with wrap-around, as the indices wrap, so it
/// cannot overflow where `usize` is 32 bits.
fn ring_offset(idx: u32, done: usize) -> usize {
    // RING_SIZE (1024) divides 2^32, so masking the wrapped index is exact.
    idx.wrapping_add(done as u32) as usize % RING_SIZE
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::AtomicU8;

    /// A 4 KiB page in plain memory.
    pub(crate) struct MemPage(pub(crate) Vec<AtomicU8>);

    impl MemPage {
        pub(crate) fn new() -> Self {
            MemPage((0..4096).map(|_| AtomicU8::new(0)).collect())
        }
    }

    impl RingAccess for MemPage {
        fn load_u32(&self, o: usize) -> u32 {
            let b: Vec<u8> = (0..4)
                .map(|i| self.0[o + i].load(Ordering::Acquire))
                .collect();
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
        fn store_u32(&self, o: usize, v: u32) {
            for (i, b) in v.to_le_bytes().iter().enumerate() {
                self.0[o + i].store(*b, Ordering::Release);
            }
        }
        fn read_bytes(&self, o: usize, out: &mut [u8]) {
            for (i, b) in out.iter_mut().enumerate() {
                *b = self.0[o + i].load(Ordering::Relaxed);
            }
        }
        fn write_bytes(&self, o: usize, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                self.0[o + i].store(*b, Ordering::Relaxed);
            }
        }
    }

    #[test]
    fn wraps_and_rejects_bad_indices() {
        let page = Arc::new(MemPage::new());
        page.store_u32(REQ_CONS, 1020);
        page.store_u32(REQ_PROD, 1020);
        let ring = ServerRing::new(page.clone());
        page.write_bytes(REQ_OFFSET + 1020, b"abcd");
        page.write_bytes(REQ_OFFSET, b"ef");
        page.store_u32(REQ_PROD, 1026);
        let mut buf = [0u8; 16];
        assert_eq!(ring.read(&mut buf).unwrap(), 6);
        assert_eq!(&buf[..6], b"abcdef");
        assert_eq!(page.load_u32(REQ_CONS), 1026);
        assert_eq!(ring.write(&[7u8; 2000]).unwrap(), 1024);
        assert_eq!(ring.write(b"x").unwrap(), 0);
        page.store_u32(REQ_PROD, 1026 + 5000);
        assert!(ring.read(&mut buf).is_err());
        assert!(ring.is_broken());
        assert_eq!(page.load_u32(ERROR_FIELD), ERROR_RINGIDX);
    }

    /// Indices about to wrap past `u32::MAX`: the offset arithmetic wraps in `u32` (the
    /// old `cons as usize + done` overflowed, a panic in debug, where `usize` is 32 bits).
    #[test]
    fn indices_wrap_past_u32_max() {
        let page = Arc::new(MemPage::new());
        let start = u32::MAX - 2; // offset 1021
        page.store_u32(REQ_CONS, start);
        page.store_u32(REQ_PROD, start);
        page.store_u32(RSP_CONS, start);
        page.store_u32(RSP_PROD, start);
        let ring = ServerRing::new(page.clone());
        page.write_bytes(REQ_OFFSET + 1021, b"abc");
        page.write_bytes(REQ_OFFSET, b"def");
        page.store_u32(REQ_PROD, start.wrapping_add(6));
        let mut buf = [0u8; 16];
        assert_eq!(ring.read(&mut buf).unwrap(), 6);
        assert_eq!(&buf[..6], b"abcdef");
        assert_eq!(page.load_u32(REQ_CONS), 3);
        assert_eq!(ring.write(b"uvwxyz").unwrap(), 6);
        assert_eq!(page.load_u32(RSP_PROD), 3);
        let mut rsp = [0u8; 6];
        page.read_bytes(RSP_OFFSET + 1021, &mut rsp[..3]);
        page.read_bytes(RSP_OFFSET, &mut rsp[3..]);
        assert_eq!(&rsp, b"uvwxyz");
        assert_eq!(ring_offset(u32::MAX, 1), 0);
        assert_eq!(ring_offset(u32::MAX, 1023), 1022);
    }
}
