//! The sans-IO client state machine (D10): request ids, pending requests, typed replies,
//! watch events and the cap on open transactions. No I/O, no clock, no threads: a
//! bare-metal guest drives it with its own ring and event channel; the std
//! [`Client`](crate::Client) drives it from many threads.
//!
//! ```
//! use pore_xenstore::codec::{Message, Reply, Request};
//! use pore_xenstore::session::{ClientCore, Incoming};
//! use pore_xenstore::Limits;
//!
//! let mut core = ClientCore::new(Limits::SOCKET, 8);
//! let mut out = Vec::new();
//! let id = core.begin(&Request::Read("/vm/name"), 0, &mut out).unwrap();
//! // ... send `out` to xenstored, receive a message back:
//! let reply = Message { ty: 2, req_id: id, tx_id: 0, payload: b"guest".to_vec() };
//! match core.handle(reply) {
//!     Incoming::Reply { req_id, result } => {
//!         assert_eq!(req_id, id);
//!         assert_eq!(result.unwrap(), Reply::Value(b"guest".to_vec()));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use crate::codec::{Message, Reply, Request, WatchEvent};
use crate::error::{CodecError, Error};
use crate::wire::{Limits, MsgType};

/// Default cap on open transactions per connection (D12).
pub const DEFAULT_MAX_OPEN_TRANSACTIONS: usize = 8;

/// Timed-out `TRANSACTION_START`s remembered so that a late reply is reported as
/// [`Incoming::OrphanTransaction`]; beyond this the oldest is forgotten (its late reply,
/// if any, becomes [`Incoming::Stray`]), so a daemon that never replies cannot make the
/// list grow.
pub const MAX_CANCELLED_STARTS: usize = 64;

#[derive(Clone, Copy, Debug)]
struct Pending {
    ty: MsgType,
    tx_id: u32,
}

/// What an incoming message means.
#[derive(Debug)]
pub enum Incoming {
    /// The reply to request `req_id`: typed, the daemon's error, or a malformed reply.
    Reply {
        /// The request it answers.
        req_id: u32,
        /// The outcome.
        result: Result<Reply, Error>,
    },
    /// A watch event.
    Watch(WatchEvent),
    /// A transaction started by a request we gave up on (timed out): the caller should
    /// abort it so it does not count against the daemon's quota.
    OrphanTransaction(u32),
    /// A message matching no pending request (e.g. the late reply to a timed-out request).
    Stray(Message),
    /// A watch event whose payload was malformed.
    BadEvent(CodecError),
}

/// The client state machine.
#[derive(Debug)]
pub struct ClientCore {
    limits: Limits,
    next_req_id: u32,
    pending: BTreeMap<u32, Pending>,
    /// Timed-out starts, oldest first (at most [`MAX_CANCELLED_STARTS`]).
    cancelled_starts: VecDeque<u32>,
    open_tx: usize,
    max_open_tx: usize,
}

impl ClientCore {
    /// A core for a transport with `limits`, allowing `max_open_tx` open transactions.
    pub fn new(limits: Limits, max_open_tx: usize) -> Self {
        Self {
            limits,
            next_req_id: 1,
            pending: BTreeMap::new(),
            cancelled_starts: VecDeque::new(),
            open_tx: 0,
            max_open_tx,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Open (or starting) transactions.
    pub fn open_transactions(&self) -> usize {
        self.open_tx
    }

    /// Requests awaiting a reply.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Timed-out transaction starts still remembered (at most
    /// [`MAX_CANCELLED_STARTS`]).
    pub fn cancelled_starts(&self) -> usize {
        self.cancelled_starts.len()
    }

    /// Encodes `req` (in transaction `tx_id`, 0 for none) into `out` and records it as
    /// pending. Returns its request id.
    ///
    /// A `TRANSACTION_START` beyond the cap fails with [`Error::TooManyTransactions`]
    /// without encoding anything.
    pub fn begin(
        &mut self,
        req: &Request<'_>,
        tx_id: u32,
        out: &mut Vec<u8>,
    ) -> Result<u32, Error> {
        let ty = req.msg_type();
        if ty == MsgType::TransactionStart && self.open_tx >= self.max_open_tx {
            return Err(Error::TooManyTransactions(self.max_open_tx));
        }
        let req_id = self.alloc_id();
        req.encode_into(req_id, tx_id, self.limits.request_payload_max, out)?;
        self.pending.insert(req_id, Pending { ty, tx_id });
        if ty == MsgType::TransactionStart {
            self.open_tx += 1;
        }
        Ok(req_id)
    }

    fn alloc_id(&mut self) -> u32 {
        loop {
            let id = self.next_req_id;
            self.next_req_id = self.next_req_id.wrapping_add(1);
            // 0 is what watch events carry; skip ids still in use after a wrap.
            if id != 0 && !self.pending.contains_key(&id) && !self.cancelled_starts.contains(&id) {
                return id;
            }
        }
    }

    /// Forgets a pending request (its caller gave up, e.g. on a timeout).
    pub fn cancel(&mut self, req_id: u32) {
        if let Some(p) = self.pending.remove(&req_id) {
            match p.ty {
                MsgType::TransactionStart => {
                    self.open_tx = self.open_tx.saturating_sub(1);
                    if self.cancelled_starts.len() >= MAX_CANCELLED_STARTS {
                        self.cancelled_starts.pop_front();
                    }
                    self.cancelled_starts.push_back(req_id);
                }
                MsgType::TransactionEnd => self.open_tx = self.open_tx.saturating_sub(1),
                _ => {}
            }
        }
    }

    /// Interprets one incoming message.
    pub fn handle(&mut self, msg: Message) -> Incoming {
        if msg.ty == MsgType::WatchEvent.as_u32() {
            return match WatchEvent::parse(&msg.payload) {
                Ok(ev) => Incoming::Watch(ev),
                Err(e) => Incoming::BadEvent(e),
            };
        }
        let Some(p) = self.pending.remove(&msg.req_id) else {
            let cancelled = self.cancelled_starts.iter().position(|&i| i == msg.req_id);
            if let Some(i) = cancelled {
                self.cancelled_starts.remove(i);
                if let Ok(Ok(Reply::TransactionId(id))) =
                    Reply::decode(MsgType::TransactionStart, &msg)
                {
                    // The daemon did open it: it counts as open until the caller's abort
                    // (a TRANSACTION_END, which decrements when answered or cancelled).
                    self.open_tx += 1;
                    return Incoming::OrphanTransaction(id);
                }
            }
            return Incoming::Stray(msg);
        };
        let result = if msg.tx_id != p.tx_id {
            Err(Error::Codec(CodecError::malformed(
                "reply with another transaction id",
            )))
        } else {
            match Reply::decode(p.ty, &msg) {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(name)) => Err(Error::Xs(name)),
                Err(e) => Err(Error::Codec(e)),
            }
        };
        match p.ty {
            MsgType::TransactionStart if result.is_err() => {
                self.open_tx = self.open_tx.saturating_sub(1)
            }
            MsgType::TransactionEnd => self.open_tx = self.open_tx.saturating_sub(1),
            _ => {}
        }
        Incoming::Reply {
            req_id: msg.req_id,
            result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorName;
    use alloc::vec;

    fn reply(core: &mut ClientCore, ty: MsgType, req_id: u32, tx_id: u32, p: &[u8]) -> Incoming {
        core.handle(Message {
            ty: ty.as_u32(),
            req_id,
            tx_id,
            payload: p.to_vec(),
        })
    }

    #[test]
    fn out_of_order_replies_match_by_id() {
        let mut c = ClientCore::new(Limits::SOCKET, 8);
        let mut out = vec![];
        let a = c.begin(&Request::Read("/a"), 0, &mut out).unwrap();
        let b = c.begin(&Request::Directory("/"), 0, &mut out).unwrap();
        assert_ne!(a, b);
        assert_eq!(c.pending(), 2);
        match reply(&mut c, MsgType::Directory, b, 0, b"x\0") {
            Incoming::Reply { req_id, result } => {
                assert_eq!(req_id, b);
                assert_eq!(result.unwrap(), Reply::Children(vec!["x".into()]));
            }
            o => panic!("{o:?}"),
        }
        match reply(&mut c, MsgType::Error, a, 0, b"ENOENT\0") {
            Incoming::Reply {
                result: Err(Error::Xs(ErrorName::ENOENT)),
                ..
            } => {}
            o => panic!("{o:?}"),
        }
        assert!(matches!(
            reply(&mut c, MsgType::Read, a, 0, b"late"),
            Incoming::Stray(_)
        ));
        assert!(matches!(
            reply(&mut c, MsgType::WatchEvent, 0, 0, b"/a\0t\0"),
            Incoming::Watch(_)
        ));
        assert!(matches!(
            reply(&mut c, MsgType::WatchEvent, 0, 0, b"/a\0"),
            Incoming::BadEvent(_)
        ));
    }

    #[test]
    fn malformed_reply_is_an_error_for_that_request() {
        let mut c = ClientCore::new(Limits::SOCKET, 8);
        let mut out = vec![];
        let a = c
            .begin(
                &Request::Write {
                    path: "/a",
                    value: b"",
                },
                0,
                &mut out,
            )
            .unwrap();
        match reply(&mut c, MsgType::Write, a, 0, b"KO") {
            Incoming::Reply {
                result: Err(Error::Codec(_)),
                ..
            } => {}
            o => panic!("{o:?}"),
        }
        let a = c.begin(&Request::Read("/a"), 4, &mut out).unwrap();
        match reply(&mut c, MsgType::Read, a, 5, b"v") {
            Incoming::Reply {
                result: Err(Error::Codec(_)),
                ..
            } => {}
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn transaction_cap_and_accounting() {
        let mut c = ClientCore::new(Limits::SOCKET, 2);
        let mut out = vec![];
        let s1 = c.begin(&Request::TransactionStart, 0, &mut out).unwrap();
        let s2 = c.begin(&Request::TransactionStart, 0, &mut out).unwrap();
        let before = out.len();
        assert!(matches!(
            c.begin(&Request::TransactionStart, 0, &mut out),
            Err(Error::TooManyTransactions(2))
        ));
        assert_eq!(out.len(), before);
        // a failed start frees its slot
        reply(&mut c, MsgType::Error, s2, 0, b"EQUOTA\0");
        assert_eq!(c.open_transactions(), 1);
        match reply(&mut c, MsgType::TransactionStart, s1, 0, b"7\0") {
            Incoming::Reply {
                result: Ok(Reply::TransactionId(7)),
                ..
            } => {}
            o => panic!("{o:?}"),
        }
        let e = c
            .begin(&Request::TransactionEnd { commit: true }, 7, &mut out)
            .unwrap();
        reply(&mut c, MsgType::Error, e, 7, b"EAGAIN\0");
        assert_eq!(c.open_transactions(), 0);
        // a timed-out start whose reply comes late is reported as an orphan
        let s = c.begin(&Request::TransactionStart, 0, &mut out).unwrap();
        c.cancel(s);
        assert_eq!(c.open_transactions(), 0);
        assert!(matches!(
            reply(&mut c, MsgType::TransactionStart, s, 0, b"9\0"),
            Incoming::OrphanTransaction(9)
        ));
    }

    /// Starts that time out while the daemon never replies are remembered up to a cap,
    /// oldest forgotten first (they accumulated forever before).
    #[test]
    fn an_orphan_transaction_counts_as_open_until_its_abort_is_answered() {
        let mut c = ClientCore::new(Limits::SOCKET, 8);
        let mut out = vec![];
        let start = c.begin(&Request::TransactionStart, 0, &mut out).unwrap();
        c.cancel(start); // the caller timed out
        assert_eq!(c.open_transactions(), 0);
        match reply(&mut c, MsgType::TransactionStart, start, 0, b"17\0") {
            Incoming::OrphanTransaction(17) => {}
            o => panic!("{o:?}"),
        }
        assert_eq!(c.open_transactions(), 1, "open on the daemon until aborted");
        let end = c
            .begin(&Request::TransactionEnd { commit: false }, 17, &mut out)
            .unwrap();
        assert_eq!(c.open_transactions(), 1);
        assert!(matches!(
            reply(&mut c, MsgType::TransactionEnd, end, 17, b"OK\0"),
            Incoming::Reply { result: Ok(_), .. }
        ));
        assert_eq!(c.open_transactions(), 0, "decremented exactly once");
    }

    #[test]
    fn cancelled_starts_are_bounded() {
        let mut c = ClientCore::new(Limits::SOCKET, 8);
        let mut out = vec![];
        let mut ids = vec![];
        for _ in 0..MAX_CANCELLED_STARTS + 100 {
            let s = c.begin(&Request::TransactionStart, 0, &mut out).unwrap();
            c.cancel(s);
            ids.push(s);
        }
        assert_eq!(c.cancelled_starts(), MAX_CANCELLED_STARTS);
        assert_eq!(c.pending(), 0);
        assert_eq!(c.open_transactions(), 0);
        // The oldest is forgotten, the newest still recognised.
        assert!(matches!(
            reply(&mut c, MsgType::TransactionStart, ids[0], 0, b"3\0"),
            Incoming::Stray(_)
        ));
        let last = *ids.last().unwrap();
        assert!(matches!(
            reply(&mut c, MsgType::TransactionStart, last, 0, b"4\0"),
            Incoming::OrphanTransaction(4)
        ));
        assert_eq!(c.cancelled_starts(), MAX_CANCELLED_STARTS - 1);
    }

    #[test]
    fn request_limit_enforced() {
        let mut c = ClientCore::new(Limits::XENBUS_DEV, 8);
        let mut out = vec![];
        let v = vec![b'x'; 4080 - 3];
        assert!(c
            .begin(
                &Request::Write {
                    path: "/a",
                    value: &v
                },
                0,
                &mut out
            )
            .is_ok());
        let v = vec![b'x'; 4080 - 2];
        assert!(c
            .begin(
                &Request::Write {
                    path: "/a",
                    value: &v
                },
                0,
                &mut out
            )
            .is_err());
        assert_eq!(c.pending(), 1);
    }
}
