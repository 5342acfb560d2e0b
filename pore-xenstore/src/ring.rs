//! The guest side of the xenstore shared ring (`struct xenstore_domain_interface`,
//! `docs/protocol-facts.md` §5.3), over a small accessor trait so that it needs no `unsafe`.
//!
//! Peer-owned indices are read once per operation and validated
//! (`prod - cons <= 1024`, free-running u32); our own indices live in private memory
//! and are only written to the page. A bad index is a [`RingError`], never a panic.

/// Size of each of the two byte rings.
pub const RING_SIZE: usize = 1024;
/// Offset of the request ring (guest to xenstored).
pub const REQ_OFFSET: usize = 0;
/// Offset of the response ring (xenstored to guest).
pub const RSP_OFFSET: usize = 1024;
/// Offset of `req_cons`.
pub const REQ_CONS: usize = 2048;
/// Offset of `req_prod`.
pub const REQ_PROD: usize = 2052;
/// Offset of `rsp_cons`.
pub const RSP_CONS: usize = 2056;
/// Offset of `rsp_prod`.
pub const RSP_PROD: usize = 2060;
/// Offset of `server_features`.
pub const SERVER_FEATURES: usize = 2064;
/// Offset of `connection`.
pub const CONNECTION: usize = 2068;
/// Offset of `error`.
pub const ERROR: usize = 2072;

/// Access to the 4 KiB store page that the peer may write concurrently.
///
/// Implementations must use atomic (or otherwise race-defined) accesses; `load_u32` has
/// acquire and `store_u32` release semantics with respect to the byte copies.
pub trait RingAccess {
    /// Loads the u32 at `offset` (acquire).
    fn load_u32(&self, offset: usize) -> u32;
    /// Stores `v` at `offset` (release).
    fn store_u32(&self, offset: usize, v: u32);
    /// Copies `out.len()` bytes from the page at `offset` into `out`.
    fn read_bytes(&self, offset: usize, out: &mut [u8]);
    /// Copies `data` into the page at `offset`.
    fn write_bytes(&self, offset: usize, data: &[u8]);
}

impl<T: RingAccess + ?Sized> RingAccess for &T {
    fn load_u32(&self, offset: usize) -> u32 {
        (**self).load_u32(offset)
    }
    fn store_u32(&self, offset: usize, v: u32) {
        (**self).store_u32(offset, v)
    }
    fn read_bytes(&self, offset: usize, out: &mut [u8]) {
        (**self).read_bytes(offset, out)
    }
    fn write_bytes(&self, offset: usize, data: &[u8]) {
        (**self).write_bytes(offset, data)
    }
}

#[cfg(feature = "std")]
impl<T: RingAccess + ?Sized> RingAccess for std::sync::Arc<T> {
    fn load_u32(&self, offset: usize) -> u32 {
        (**self).load_u32(offset)
    }
    fn store_u32(&self, offset: usize, v: u32) {
        (**self).store_u32(offset, v)
    }
    fn read_bytes(&self, offset: usize, out: &mut [u8]) {
        (**self).read_bytes(offset, out)
    }
    fn write_bytes(&self, offset: usize, data: &[u8]) {
        (**self).write_bytes(offset, data)
    }
}

/// The ring is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The peer's index is more than a ring away from ours.
    #[error("peer index out of range (prod - cons = {0})")]
    BadIndex(u32),
    /// The server set the page's `error` field.
    #[error("server reported ring error {0}")]
    Server(u32),
    /// A reconnection is in progress (`connection` != 0).
    #[error("ring reconnecting")]
    Reconnecting,
}

/// Producer of the request ring (one writer).
#[derive(Debug)]
pub struct RequestWriter<A: RingAccess> {
    mem: A,
    prod: u32,
}

impl<A: RingAccess> RequestWriter<A> {
    /// Takes over the request ring; our index starts where the page says it is (guests
    /// must not assume indices start at 0).
    pub fn new(mem: A) -> Self {
        let prod = mem.load_u32(REQ_PROD);
        Self { mem, prod }
    }

    /// Writes as many bytes of `data` as fit; returns how many (0 if the ring is full).
    pub fn write(&mut self, data: &[u8]) -> Result<usize, RingError> {
        check_status(&self.mem)?;
        let cons = self.mem.load_u32(REQ_CONS);
        let used = self.prod.wrapping_sub(cons);
        if used as usize > RING_SIZE {
            return Err(RingError::BadIndex(used));
        }
        let mut space = RING_SIZE - used as usize;
        let mut done = 0;
        while space > 0 && done < data.len() {
            let off = self.prod as usize % RING_SIZE;
            let n = space.min(RING_SIZE - off).min(data.len() - done);
            self.mem
                .write_bytes(REQ_OFFSET + off, &data[done..done + n]);
            done += n;
            space -= n;
            self.prod = self.prod.wrapping_add(n as u32);
        }
        if done > 0 {
            self.mem.store_u32(REQ_PROD, self.prod);
        }
        Ok(done)
    }
}

/// Consumer of the response ring (one reader).
#[derive(Debug)]
pub struct ResponseReader<A: RingAccess> {
    mem: A,
    cons: u32,
}

impl<A: RingAccess> ResponseReader<A> {
    /// Takes over the response ring at the page's current consumer index.
    pub fn new(mem: A) -> Self {
        let cons = mem.load_u32(RSP_CONS);
        Self { mem, cons }
    }

    /// Copies available bytes into `out`; returns how many (0 if the ring is empty).
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, RingError> {
        check_status(&self.mem)?;
        let prod = self.mem.load_u32(RSP_PROD);
        let avail = prod.wrapping_sub(self.cons);
        if avail as usize > RING_SIZE {
            return Err(RingError::BadIndex(avail));
        }
        let mut avail = avail as usize;
        let mut done = 0;
        while avail > 0 && done < out.len() {
            let off = self.cons as usize % RING_SIZE;
            let n = avail.min(RING_SIZE - off).min(out.len() - done);
            self.mem
                .read_bytes(RSP_OFFSET + off, &mut out[done..done + n]);
            done += n;
            avail -= n;
            self.cons = self.cons.wrapping_add(n as u32);
        }
        if done > 0 {
            self.mem.store_u32(RSP_CONS, self.cons);
        }
        Ok(done)
    }
}

fn check_status<A: RingAccess>(mem: &A) -> Result<(), RingError> {
    match mem.load_u32(ERROR) {
        0 => {}
        e => return Err(RingError::Server(e)),
    }
    if mem.load_u32(CONNECTION) != 0 {
        return Err(RingError::Reconnecting);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;

    struct Page(RefCell<[u8; 4096]>);
    impl RingAccess for Page {
        fn load_u32(&self, o: usize) -> u32 {
            let p = self.0.borrow();
            u32::from_le_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]])
        }
        fn store_u32(&self, o: usize, v: u32) {
            self.0.borrow_mut()[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }
        fn read_bytes(&self, o: usize, out: &mut [u8]) {
            out.copy_from_slice(&self.0.borrow()[o..o + out.len()]);
        }
        fn write_bytes(&self, o: usize, d: &[u8]) {
            self.0.borrow_mut()[o..o + d.len()].copy_from_slice(d);
        }
    }

    #[test]
    fn wraps_and_validates() {
        let page = Page(RefCell::new([0; 4096]));
        // indices near the u32 wrap, not starting at 0
        page.store_u32(REQ_PROD, u32::MAX - 10);
        page.store_u32(REQ_CONS, u32::MAX - 10);
        let mut w = RequestWriter::new(&page);
        let data = [7u8; 1500];
        assert_eq!(w.write(&data).unwrap(), 1024);
        assert_eq!(w.write(&data).unwrap(), 0);
        page.store_u32(REQ_CONS, (u32::MAX - 10).wrapping_add(100));
        assert_eq!(w.write(&data[..200]).unwrap(), 100);
        // hostile consumer index
        page.store_u32(REQ_CONS, 5_000_000);
        assert!(matches!(w.write(&data), Err(RingError::BadIndex(_))));

        page.store_u32(RSP_CONS, 1020);
        page.store_u32(RSP_PROD, 1030);
        let mut r = ResponseReader::new(&page);
        let mut out = [0u8; 64];
        assert_eq!(r.read(&mut out).unwrap(), 10);
        assert_eq!(page.load_u32(RSP_CONS), 1030);
        assert_eq!(r.read(&mut out).unwrap(), 0);
        page.store_u32(RSP_PROD, 1030 + 1025);
        assert!(matches!(r.read(&mut out), Err(RingError::BadIndex(1025))));
        page.store_u32(RSP_PROD, 1030);
        page.store_u32(ERROR, 1);
        assert_eq!(r.read(&mut out), Err(RingError::Server(1)));
    }
}
