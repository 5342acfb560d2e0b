//! The xenstore ring: Xen's `struct xenstore_domain_interface` (`xen/include/public/io/xs_wire.h`,
//! `docs/protocol-facts.md` §5.3), one 4 KiB page shared by a guest (the client) and xenstored
//! (the server).
//!
//! The client produces requests into `req` and consumes replies and watch events from `rsp`;
//! the server does the reverse. Indices are free-running `u32` (byte `x` lives at `x % 1024`);
//! nothing assumes they start at 0. Messages larger than the 1 KiB rings stream through them in
//! chunks: the halves' `write` and `read` ([`SharedRing::writer`], [`SharedRing::reader`]) move
//! as many bytes as fit and return how many. After every call that moved bytes, the half's
//! `take_notify` is `true`: the protocol signals the event channel after every ring update.
//!
//! ```
//! use pore_core::{loopback::Loopback, DomId, Grants, SharedMemory};
//! use pore_ring::prelude::*;
//! use pore_ring::xenstore::XenstoreRing;
//!
//! let xen = Loopback::new();
//! let page = xen.domain(DomId(1)).grant(DomId(0), 1)?;
//! let (mut client, mut server) = (XenstoreRing::client(page.view())?, XenstoreRing::server(page.view())?);
//! // A 3000-byte request streams through the 1024-byte request ring.
//! let request = [7u8; 3000];
//! let (mut sent, mut got, mut buf) = (0, 0, [0u8; 512]);
//! while got < request.len() {
//!     sent += client.writer().write(&request[sent..])?;
//!     got += server.reader().read(&mut buf)?;
//! }
//! assert_eq!(sent, 3000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::mem::offset_of;
use core::sync::atomic::Ordering;

use pore_core::SharedAccess;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::free::FreeLayout;
use crate::{ByteConsumer, ByteProducer, RingError, SharedRing};

/// Bytes of each of the two rings (`XENSTORE_RING_SIZE`).
pub const XENSTORE_RING_SIZE: usize = 1024;

/// The layout of the xenstore page, bit-exact with Xen's public header.
///
/// It documents and pins the offsets; the rings never make a reference to it over shared memory
/// (they use [`SharedAccess`] at these offsets).
#[repr(C)]
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct XenstoreDomainInterface {
    /// Requests, guest to xenstored.
    pub req: [u8; XENSTORE_RING_SIZE],
    /// Replies and watch events, xenstored to guest.
    pub rsp: [u8; XENSTORE_RING_SIZE],
    /// Request consumer index (server writes).
    pub req_cons: u32,
    /// Request producer index (client writes).
    pub req_prod: u32,
    /// Response consumer index (client writes).
    pub rsp_cons: u32,
    /// Response producer index (server writes).
    pub rsp_prod: u32,
    /// Features the server supports (`XENSTORE_SERVER_FEATURE_*`).
    pub server_features: u32,
    /// Connection state (`XENSTORE_CONNECTED`, `XENSTORE_RECONNECT`).
    pub connection: u32,
    /// Error the server reports (`XENSTORE_ERROR_*`).
    pub error: u32,
    /// Event channel port, if non-zero (dom0less / Hyperlaunch).
    pub evtchn_port: u32,
}

/// Offset of `req`.
pub const REQ: usize = offset_of!(XenstoreDomainInterface, req);
/// Offset of `rsp`.
pub const RSP: usize = offset_of!(XenstoreDomainInterface, rsp);
/// Offset of `req_cons`.
pub const REQ_CONS: usize = offset_of!(XenstoreDomainInterface, req_cons);
/// Offset of `req_prod`.
pub const REQ_PROD: usize = offset_of!(XenstoreDomainInterface, req_prod);
/// Offset of `rsp_cons`.
pub const RSP_CONS: usize = offset_of!(XenstoreDomainInterface, rsp_cons);
/// Offset of `rsp_prod`.
pub const RSP_PROD: usize = offset_of!(XenstoreDomainInterface, rsp_prod);
/// Offset of `server_features`.
pub const SERVER_FEATURES: usize = offset_of!(XenstoreDomainInterface, server_features);
/// Offset of `connection`.
pub const CONNECTION: usize = offset_of!(XenstoreDomainInterface, connection);
/// Offset of `error`.
pub const ERROR: usize = offset_of!(XenstoreDomainInterface, error);
/// Offset of `evtchn_port`.
pub const EVTCHN_PORT: usize = offset_of!(XenstoreDomainInterface, evtchn_port);
/// Bytes of the page the layout uses.
pub const INTERFACE_LEN: usize = core::mem::size_of::<XenstoreDomainInterface>();

const _: () = {
    assert!(REQ == 0);
    assert!(RSP == 1024);
    assert!(REQ_CONS == 2048);
    assert!(REQ_PROD == 2052);
    assert!(RSP_CONS == 2056);
    assert!(RSP_PROD == 2060);
    assert!(SERVER_FEATURES == 2064);
    assert!(CONNECTION == 2068);
    assert!(ERROR == 2072);
    assert!(EVTCHN_PORT == 2076);
    assert!(INTERFACE_LEN == 2080);
};

/// `server_features` bit: the server supports reconnection.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// `server_features` bit: the server reports errors in `error`.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;
/// `server_features` bit: watch depth.
pub const XENSTORE_SERVER_FEATURE_WATCHDEPTH: u32 = 4;
/// `server_features` bit: `DOMID_ANY` accepted.
pub const XENSTORE_SERVER_FEATURE_DOMID_ANY: u32 = 8;
/// `connection`: connected.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `connection`: the guest asked for a reconnection, in progress.
pub const XENSTORE_RECONNECT: u32 = 1;
/// `error`: no error.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `error`: communication problem.
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `error`: invalid ring index.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `error`: protocol violation (e.g. a message too long).
pub const XENSTORE_ERROR_PROTO: u32 = 3;

/// Which side of the xenstore page we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XsRole {
    /// The guest: writes requests, reads replies.
    Client,
    /// xenstored: reads requests, writes replies.
    Server,
}

fn layout(data: usize, prod: usize, cons: usize) -> FreeLayout {
    FreeLayout {
        data,
        size: XENSTORE_RING_SIZE as u32,
        prod,
        cons,
        want_write: None,
        want_read: None,
    }
}

/// One side of a xenstore page: a producer on one ring and a consumer on the other.
pub struct XenstoreRing<A: SharedAccess> {
    mem: A,
    role: XsRole,
    pub(crate) tx: ByteProducer<A>,
    pub(crate) rx: ByteConsumer<A>,
}

impl<A: SharedAccess> core::fmt::Debug for XenstoreRing<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XenstoreRing")
            .field("role", &self.role)
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .finish()
    }
}

impl<A: SharedAccess + Clone> XenstoreRing<A> {
    /// The guest's side of the page `mem` (at least [`INTERFACE_LEN`] bytes, normally a page).
    ///
    /// Reads the current indices (they need not start at 0) and validates them.
    ///
    /// # Errors
    ///
    /// [`RingError::RegionTooSmall`], or [`RingError::BadIndex`] if an index pair is more than
    /// 1024 bytes apart.
    pub fn client(mem: A) -> Result<Self, RingError> {
        Self::new(mem, XsRole::Client)
    }

    /// xenstored's side of the page `mem`. See [`XenstoreRing::client`].
    ///
    /// # Errors
    ///
    /// As for [`XenstoreRing::client`].
    pub fn server(mem: A) -> Result<Self, RingError> {
        Self::new(mem, XsRole::Server)
    }

    /// Our side of the page `mem`.
    ///
    /// # Errors
    ///
    /// As for [`XenstoreRing::client`].
    pub fn new(mem: A, role: XsRole) -> Result<Self, RingError> {
        if mem.len() < INTERFACE_LEN {
            return Err(RingError::RegionTooSmall {
                need: INTERFACE_LEN,
                have: mem.len(),
            });
        }
        let (tx, rx) = match role {
            XsRole::Client => (
                layout(REQ, REQ_PROD, REQ_CONS),
                layout(RSP, RSP_PROD, RSP_CONS),
            ),
            XsRole::Server => (
                layout(RSP, RSP_PROD, RSP_CONS),
                layout(REQ, REQ_PROD, REQ_CONS),
            ),
        };
        let pair = |lay: &FreeLayout| -> Result<(u32, u32), RingError> {
            let prod = mem.load_u32(lay.prod, Ordering::Acquire);
            let cons = mem.load_u32(lay.cons, Ordering::Acquire);
            if prod.wrapping_sub(cons) > lay.size {
                return Err(RingError::BadIndex {
                    what: "producer",
                    value: prod,
                });
            }
            Ok((prod, cons))
        };
        let (tp, tc) = pair(&tx)?;
        let (rp, rc) = pair(&rx)?;
        Ok(XenstoreRing {
            tx: ByteProducer::new(mem.clone(), tx, tp, tc),
            rx: ByteConsumer::new(mem.clone(), rx, rc, rp),
            mem,
            role,
        })
    }

    /// Re-reads the indices from the page, e.g. after a reconnection reset them; clears a
    /// broken state.
    ///
    /// # Errors
    ///
    /// As for [`XenstoreRing::client`].
    pub fn resync(&mut self) -> Result<(), RingError> {
        *self = Self::new(self.mem.clone(), self.role)?;
        Ok(())
    }
}

impl<A: SharedAccess> XenstoreRing<A> {
    /// Our role.
    pub fn role(&self) -> XsRole {
        self.role
    }

    /// `server_features` as the page holds it now.
    pub fn server_features(&self) -> u32 {
        self.mem.load_u32(SERVER_FEATURES, Ordering::Acquire)
    }

    /// Sets `server_features` (the server's job).
    pub fn set_server_features(&self, features: u32) {
        self.mem
            .store_u32(SERVER_FEATURES, features, Ordering::Release)
    }

    /// `connection` as the page holds it now.
    pub fn connection(&self) -> u32 {
        self.mem.load_u32(CONNECTION, Ordering::Acquire)
    }

    /// Sets `connection`.
    pub fn set_connection(&self, state: u32) {
        self.mem.store_u32(CONNECTION, state, Ordering::Release)
    }

    /// `error` as the page holds it now.
    pub fn error(&self) -> u32 {
        self.mem.load_u32(ERROR, Ordering::Acquire)
    }

    /// Sets `error` (the server's job).
    pub fn set_error(&self, error: u32) {
        self.mem.store_u32(ERROR, error, Ordering::Release)
    }

    /// `evtchn_port` as the page holds it now (meaningful only if non-zero).
    pub fn evtchn_port(&self) -> u32 {
        self.mem.load_u32(EVTCHN_PORT, Ordering::Acquire)
    }
}

impl<A: SharedAccess> SharedRing for XenstoreRing<A> {
    type Writer = ByteProducer<A>;
    type Reader = ByteConsumer<A>;

    fn writer(&mut self) -> &mut ByteProducer<A> {
        &mut self.tx
    }

    fn reader(&mut self) -> &mut ByteConsumer<A> {
        &mut self.rx
    }

    fn split(self) -> (ByteProducer<A>, ByteConsumer<A>) {
        (self.tx, self.rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{cases, max_ops, Guarded};
    use crate::{RingReader, RingWriter};
    use pore_core::{Error as _, ErrorKind};
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::vec;
    use std::vec::Vec;
    use zerocopy::FromZeros;

    #[test]
    fn layout_matches_xen() {
        // Also checked at compile time; here against zerocopy's view of the struct.
        let mut page = XenstoreDomainInterface::new_zeroed();
        page.req_prod = 0x0102_0304;
        page.evtchn_port = 0xaabb_ccdd;
        let bytes = page.as_bytes();
        assert_eq!(bytes.len(), 2080);
        assert_eq!(&bytes[2052..2056], &0x0102_0304u32.to_ne_bytes());
        assert_eq!(&bytes[2076..2080], &0xaabb_ccddu32.to_ne_bytes());
    }

    #[test]
    fn indices_need_not_start_at_zero() {
        let g = Guarded::new(4096);
        let v = g.view();
        for off in [REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD] {
            v.store_u32(off, u32::MAX - 5, Ordering::Relaxed);
        }
        let mut c = XenstoreRing::client(v).unwrap();
        let mut s = XenstoreRing::server(v).unwrap();
        let msg: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
        assert_eq!(c.writer().write(&msg).unwrap(), 1024);
        assert_eq!(c.writer().write(b"x").unwrap(), 0, "full");
        let mut buf = vec![0u8; 2000];
        assert_eq!(s.reader().read(&mut buf).unwrap(), 1024);
        assert_eq!(&buf[..1024], &msg[..]);
        assert_eq!(s.writer().write(b"reply").unwrap(), 5);
        assert!(s.take_notify());
        assert_eq!(c.reader().read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"reply");
        assert_eq!(
            v.load_u32(REQ_PROD, Ordering::Relaxed),
            (u32::MAX - 5).wrapping_add(1024)
        );
        g.assert_guards();
    }

    #[test]
    fn control_fields() {
        let g = Guarded::new(4096);
        let s = XenstoreRing::server(g.view()).unwrap();
        let c = XenstoreRing::client(g.view()).unwrap();
        s.set_server_features(XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR);
        assert_eq!(c.server_features(), 3);
        c.set_connection(XENSTORE_RECONNECT);
        assert_eq!(s.connection(), XENSTORE_RECONNECT);
        s.set_error(XENSTORE_ERROR_RINGIDX);
        assert_eq!(c.error(), 2);
        assert_eq!(c.evtchn_port(), 0);
        assert_eq!(c.role(), XsRole::Client);
    }

    #[test]
    fn too_small_and_bad_initial_indices() {
        let g = Guarded::new(2048);
        assert!(matches!(
            XenstoreRing::client(g.view()),
            Err(RingError::RegionTooSmall { .. })
        ));
        let g = Guarded::new(4096);
        g.view().store_u32(RSP_PROD, 5000, Ordering::Relaxed);
        let e = XenstoreRing::client(g.view()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
    }

    #[test]
    fn hostile_server_indices() {
        let g = Guarded::new(4096);
        let v = g.view();
        let mut c = XenstoreRing::client(v).unwrap();
        let mut buf = [0u8; 64];
        // The server claims 2000 bytes of reply: more than the ring holds.
        v.store_u32(RSP_PROD, 2000, Ordering::Relaxed);
        let e = c.reader().read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert_eq!(c.reader().read(&mut buf), Err(RingError::Broken));
        // The request side is a separate half: the server fakes consumption we never published.
        v.store_u32(REQ_CONS, 77, Ordering::Relaxed);
        assert!(c.writer().writable().is_err());
        assert!(c.writer().write(b"abc").is_err());
        g.assert_guards();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        /// Random writes and reads in both directions against `VecDeque` models.
        #[test]
        fn model(start in any::<u32>(), ops in proptest::collection::vec((any::<bool>(), any::<bool>(), 0usize..1500), 1..max_ops(60))) {
            let g = Guarded::new(4096);
            let v = g.view();
            for off in [REQ_CONS, REQ_PROD] { v.store_u32(off, start, Ordering::Relaxed); }
            let mut c = XenstoreRing::client(v).unwrap();
            let mut s = XenstoreRing::server(v).unwrap();
            let (mut req, mut rsp) = (VecDeque::new(), VecDeque::new());
            let mut counter = 0u8;
            for (to_server, write, len) in ops {
                let (w, r, model) = if to_server { (&mut c, &mut s, &mut req) } else { (&mut s, &mut c, &mut rsp) };
                if write {
                    let data: Vec<u8> = (0..len).map(|_| { counter = counter.wrapping_add(1); counter }).collect();
                    let n = w.writer().write(&data).unwrap();
                    prop_assert_eq!(n, len.min(XENSTORE_RING_SIZE - model.len()));
                    model.extend(&data[..n]);
                } else {
                    let mut buf = vec![0u8; len];
                    let n = r.reader().read(&mut buf).unwrap();
                    prop_assert_eq!(n, len.min(model.len()));
                    let want: Vec<u8> = model.drain(..n).collect();
                    prop_assert_eq!(&buf[..n], &want[..]);
                }
            }
            g.assert_guards();
        }

        /// A hostile server writes arbitrary indices between operations: the client returns
        /// values or errors, never panics, never touches memory outside the page.
        #[test]
        fn hostile(ops in proptest::collection::vec((0u8..4, any::<u32>(), 0usize..1200), 1..max_ops(40))) {
            let g = Guarded::new(4096);
            let v = g.view();
            let mut c = XenstoreRing::client(v).unwrap();
            let mut buf = vec![0u8; 1200];
            for (op, value, len) in ops {
                match op {
                    0 => v.store_u32(RSP_PROD, value, Ordering::Relaxed),
                    1 => v.store_u32(REQ_CONS, value, Ordering::Relaxed),
                    2 => { let _ = c.writer().write(&buf[..len]); }
                    _ => { if let Ok(n) = c.reader().read(&mut buf[..len]) { prop_assert!(n <= len); } }
                }
            }
            g.assert_guards();
        }
    }
}
