//! A straw's JSON envelopes and mailboxes facing a hostile peer: envelopes well-formed,
//! mutated or garbage, delivered directly or through the ring, to mailboxes registered,
//! replaced, dropped and drained in any order, with small bounds.
//!
//! A model follows every mailbox (its queue, in order, and its bytes) and the drop
//! counters; after every move the straw must agree with it: what [`Receiver::deliver`]
//! accepts and refuses, what each mailbox yields (the envelope's `msg`, first in first
//! out), how many envelopes were dropped for size or a full mailbox. A mailbox never holds
//! more than `mailbox_depth` messages, nor more than `mailbox_bytes` of frames unless it
//! holds a single one.
//!
//! [`Receiver::deliver`]: pore_straw::straw::Receiver::deliver

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;
use pore_core::loopback::{Loopback, LoopbackDomain};
use pore_core::DomId;
use pore_straw::straw::{open_active, open_passive, Mailbox, Straw, StrawConfig};
use pore_straw::{Endpoint, Format, Layout, Role};
use serde_json::Value;

const ADDRS: &[&str] = &["a", "b", "", "echo", "\u{e9}", "a\u{0}b"];

/// A JSON value, small.
#[derive(Arbitrary, Debug)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Json>),
    Obj(Vec<(u8, Json)>),
}

impl Json {
    fn value(&self, depth: usize) -> Value {
        if depth > 6 {
            return Value::Null;
        }
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Int(i) => Value::from(*i),
            Json::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Json::Str(s) => Value::String(s.clone()),
            Json::List(v) => Value::Array(v.iter().take(8).map(|j| j.value(depth + 1)).collect()),
            Json::Obj(v) => Value::Object(
                v.iter()
                    .take(8)
                    .map(|(k, j)| (format!("k{}", k % 4), j.value(depth + 1)))
                    .collect(),
            ),
        }
    }
}

/// A frame the peer sends.
#[derive(Arbitrary, Debug)]
pub enum Frame {
    /// `{"addr": .., "msg": ..}` (extra keys first, possibly a duplicate `addr`).
    Envelope {
        addr: u8,
        msg: Json,
        extra: Option<(u8, Json)>,
        pad: u16,
    },
    /// An envelope with one byte changed.
    Mutated {
        addr: u8,
        msg: Json,
        at: u16,
        to: u8,
    },
    /// Anything.
    Raw(Vec<u8>),
    /// Deeply nested arrays (the parser's recursion limit).
    Deep(u16),
}

impl Frame {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Frame::Envelope {
                addr,
                msg,
                extra,
                pad,
            } => {
                let mut s = String::from("{");
                if let Some((k, v)) = extra {
                    let key = ["addr", "msg", "x", "addr "][usize::from(k % 4)];
                    s.push_str(&format!("{}:{},", Value::from(key), v.value(0)));
                }
                s.push_str(&" ".repeat(usize::from(pad % 600)));
                let a = ADDRS[usize::from(*addr) % ADDRS.len()];
                s.push_str(&format!(
                    "\"addr\":{},\"msg\":{}}}",
                    Value::from(a),
                    msg.value(0)
                ));
                s.into_bytes()
            }
            Frame::Mutated { addr, msg, at, to } => {
                let a = ADDRS[usize::from(*addr) % ADDRS.len()];
                let mut b =
                    serde_json::to_vec(&serde_json::json!({"addr": a, "msg": msg.value(0)}))
                        .unwrap_or_default();
                if !b.is_empty() {
                    let i = usize::from(*at) % b.len();
                    b[i] = *to;
                }
                b
            }
            Frame::Raw(v) => v.clone(),
            Frame::Deep(n) => {
                let n = usize::from(n % 300);
                let mut s = String::from("{\"addr\":\"a\",\"msg\":");
                s.push_str(&"[".repeat(n));
                s.push_str(&"]".repeat(n));
                s.push('}');
                s.into_bytes()
            }
        }
    }
}

/// One move.
#[derive(Arbitrary, Debug)]
pub enum Move {
    /// The peer's frame handed to `deliver`.
    Deliver(Frame),
    /// The peer's frame sent through the ring, then received and delivered.
    Ring(Frame),
    /// (Re-)registers the mailbox of an address.
    Register(u8),
    /// Drops the mailbox of an address (ours: its messages go with it).
    Drop(u8),
    /// Takes up to `n` messages from a mailbox.
    Drain(u8, u8),
}

/// Bounds.
#[derive(Arbitrary, Debug)]
pub struct Bounds {
    depth: u8,
    bytes: u16,
    json: u16,
}

/// What the model expects of one mailbox.
#[derive(Default)]
struct Model {
    queue: VecDeque<(Value, usize)>,
}

struct Harness {
    /// The hostile peer's side (sends).
    peer: Straw<LoopbackDomain>,
    /// Ours (receives, delivers).
    us: Straw<LoopbackDomain>,
    cfg: StrawConfig,
    /// Mailboxes we hold, by address index.
    boxes: BTreeMap<usize, (Mailbox, Model)>,
    /// Mailboxes we dropped whose address is still registered: the straw keeps their
    /// queued bytes (the messages go when the address is registered again).
    dropped: BTreeMap<usize, usize>,
    too_large: u64,
    full: u64,
    _xen: Loopback,
}

/// The envelope as the model reads it: an object whose last `addr` is a string, and a
/// `msg` (serde_json keeps the last of duplicate keys).
fn envelope(frame: &[u8]) -> Option<(String, Value)> {
    let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(frame) else {
        return None;
    };
    let Some(Value::String(a)) = o.remove("addr") else {
        return None;
    };
    Some((a, o.remove("msg")?))
}

impl Harness {
    fn new(b: &Bounds) -> Option<Self> {
        let cfg = StrawConfig {
            max_frame: 8192,
            max_json_frame: 16 + usize::from(b.json % 2048),
            mailbox_depth: 1 + usize::from(b.depth % 6),
            mailbox_bytes: 16 + usize::from(b.bytes % 2048),
            io_timeout: Duration::from_millis(10),
            close_timeout: Duration::from_millis(1),
            ..StrawConfig::default()
        };
        let xen = Loopback::new();
        let (x, y) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
        let (pa, grant) = open_active(&x, DomId(2), Layout::Ling).ok()?;
        let pb = open_passive(&y, DomId(1), Layout::Ling, &grant.refs, grant.port).ok()?;
        let peer = Straw::new(
            pa,
            Endpoint::seed(DomId(2)),
            Role::Listener,
            Format::Json,
            cfg.clone(),
        );
        let us = Straw::new(
            pb,
            Endpoint::seed(DomId(1)),
            Role::Opener,
            Format::Json,
            cfg.clone(),
        );
        Some(Harness {
            peer,
            us,
            cfg,
            boxes: BTreeMap::new(),
            dropped: BTreeMap::new(),
            too_large: 0,
            full: 0,
            _xen: xen,
        })
    }

    /// What delivering `frame` must do, applied to the model.
    fn expect(&mut self, frame: &[u8]) -> bool {
        if frame.len() > self.cfg.max_json_frame {
            self.too_large += 1;
            return false;
        }
        let Some((addr, msg)) = envelope(frame) else {
            return false;
        };
        let Some(i) = ADDRS.iter().position(|a| *a == addr) else {
            return false;
        };
        if let Some(&queued) = self.dropped.get(&i) {
            // The straw still holds the dropped mailbox's bytes: over its byte bound the
            // message counts as "mailbox full", otherwise it is refused uncounted.
            if queued + frame.len() > self.cfg.mailbox_bytes && queued > 0 {
                self.full += 1;
            }
            return false;
        }
        let Some((_, m)) = self.boxes.get_mut(&i) else {
            return false;
        };
        let queued: usize = m.queue.iter().map(|(_, l)| l).sum();
        if (queued + frame.len() > self.cfg.mailbox_bytes && queued > 0)
            || m.queue.len() >= self.cfg.mailbox_depth
        {
            self.full += 1;
            return false;
        }
        m.queue.push_back((msg, frame.len()));
        true
    }

    fn deliver(&mut self, frame: &[u8]) {
        let want = self.expect(frame);
        let got = self.us.receiver().deliver(frame);
        assert_eq!(got, want, "deliver of {:?}", String::from_utf8_lossy(frame));
    }

    fn play(&mut self, mv: &Move) {
        match mv {
            Move::Deliver(f) => self.deliver(&f.bytes()),
            Move::Ring(f) => {
                let bytes = f.bytes();
                if self
                    .peer
                    .sender()
                    .try_send(Bytes::from(bytes.clone()))
                    .is_ok()
                {
                    match self.us.receiver().try_recv() {
                        Ok(got) => {
                            assert_eq!(&got[..], &bytes[..], "frame through the ring");
                            self.deliver(&got);
                        }
                        Err(e) => panic!("frame sent but not received: {e}"),
                    }
                }
            }
            Move::Register(a) => {
                let i = usize::from(*a) % ADDRS.len();
                let mb = self.us.mailbox(ADDRS[i]);
                self.boxes.insert(i, (mb, Model::default()));
                self.dropped.remove(&i);
            }
            Move::Drop(a) => {
                let i = usize::from(*a) % ADDRS.len();
                if let Some((_, m)) = self.boxes.remove(&i) {
                    self.dropped.insert(i, m.queue.iter().map(|(_, l)| l).sum());
                }
            }
            Move::Drain(a, n) => {
                if let Some((mb, m)) = self.boxes.get_mut(&(usize::from(*a) % ADDRS.len())) {
                    for _ in 0..(n % 4) {
                        let got = mb.try_recv();
                        let want = m.queue.pop_front().map(|(v, _)| v);
                        assert_eq!(got, want, "mailbox order");
                    }
                }
            }
        }
        let st = self.us.stats();
        assert_eq!(st.json_too_large, self.too_large, "oversized count");
        assert_eq!(st.mailbox_full, self.full, "mailbox-full count");
        for (_, m) in self.boxes.values() {
            let bytes: usize = m.queue.iter().map(|(_, l)| l).sum();
            assert!(m.queue.len() <= self.cfg.mailbox_depth);
            assert!(bytes <= self.cfg.mailbox_bytes || m.queue.len() == 1);
        }
    }
}

/// Runs the moves `data` encodes.
pub fn run(data: &[u8]) {
    let mut u = arbitrary::Unstructured::new(data);
    let Ok(b) = Bounds::arbitrary(&mut u) else {
        return;
    };
    let Some(mut h) = Harness::new(&b) else {
        return;
    };
    let Ok(moves) = u.arbitrary_iter::<Move>() else {
        return;
    };
    for mv in moves.take(100) {
        let Ok(mv) = mv else {
            break;
        };
        h.play(&mv);
    }
}

/// The bounds and moves `data` encodes (to read a crash).
pub fn decode(data: &[u8]) -> String {
    let mut u = arbitrary::Unstructured::new(data);
    let Ok(b) = Bounds::arbitrary(&mut u) else {
        return String::new();
    };
    let mut s = format!("{b:?}\n");
    if let Ok(moves) = u.arbitrary_iter::<Move>() {
        for m in moves.take(100).map_while(Result::ok) {
            s.push_str(&format!("  {m:?}\n"));
        }
    }
    s
}
