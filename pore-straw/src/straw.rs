//! Straws: framed messages over a pore's ring (`std`).
//!
//! A [`Straw`] owns a pore and its ring (LING or v2, from `pore-ring`). It sends and receives
//! frames ([`Bytes`]), blocking with a timeout or not at all, and splits into a [`Sender`] and a
//! [`Receiver`] for two threads. Frames larger than the ring stream through it. With the JSON
//! format, [`Sender::send_to`] wraps a message in the seed's envelope `{"addr": ..., "msg": ...}`
//! and [`Receiver::dispatch`] delivers incoming envelopes to the [`Mailbox`] registered under
//! their address (unknown addresses, malformed frames, envelopes over
//! [`StrawConfig::max_json_frame`] and messages for a full mailbox are logged and dropped, the
//! straw lives on).
//!
//! The peer is another domain and may be hostile: a length prefix never drives an allocation
//! by itself (the receive buffer grows as the payload arrives), every receive call does bounded
//! work and keeps its deadline, and a ring the peer broke (a bad index) ends the straw with
//! [`StrawError::PeerGone`] after the first error; a managed straw then tells its manager,
//! which tears it down.
//!
//! A straw made by the [manager](crate::manager) is closed through the handshake machine (the
//! seed's close chart) and tells the end of its stream through xenstore; a straw made directly
//! from a pore ([`Straw::new`], for tests and custom set-ups) closes its pore itself and ends
//! its stream with a marker in the ring (see [`Sender::finish`]): either way the peer's
//! receiver ends with [`StrawError::Eof`] after the last frame.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use pore_core::{loopback::Loopback, DomId};
//! use pore_straw::straw::{open_active, open_passive, Straw, StrawConfig, StrawError};
//! use pore_straw::{Endpoint, Format, Layout, Role};
//!
//! let xen = Loopback::new();
//! let (a, b) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
//! let (pa, grant) = open_active(&a, DomId(2), Layout::Ling)?;
//! let pb = open_passive(&b, DomId(1), Layout::Ling, &grant.refs, grant.port)?;
//! let cfg = StrawConfig::default();
//! let sa = Straw::new(pa, Endpoint::seed(DomId(2)), Role::Listener, Format::Raw, cfg.clone());
//! let sb = Straw::new(pb, Endpoint::seed(DomId(1)), Role::Opener, Format::Raw, cfg);
//! sa.sender().send(Bytes::from_static(b"hello"))?;
//! assert_eq!(sb.receiver().recv_timeout(Duration::from_secs(1))?, "hello");
//! sa.close()?;
//! assert_eq!(sb.receiver().recv_timeout(Duration::from_secs(1)), Err(StrawError::Eof));
//! # Ok::<(), pore_straw::straw::StrawError>(())
//! ```

mod error;
mod mailbox;
mod open;
mod recv;
mod send;
mod shared;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pore_core::Backend;
use pore_ring::frame::FrameWriter;

use crate::handshake::Role;
use crate::reasm::Reassembler;
use crate::{Endpoint, Format, Layout};
use pore_ring::spin::SpinBudget;

pub use self::error::{BackendError, StrawError};
pub use self::mailbox::{parse_envelope, Mailbox};
pub use self::open::{open_active, open_passive, open_passive_v2_all, StrawPore};
use self::shared::*;
pub(crate) use self::shared::{Hook, Shared};

/// Settings of a straw's data path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrawConfig {
    /// The largest frame accepted or sent (longer incoming frames are skipped and counted).
    /// The receive buffer grows only as a frame's bytes arrive, never on its length prefix
    /// alone, and shrinks back after a large frame.
    pub max_frame: usize,
    /// The largest JSON envelope [`Receiver::deliver`] parses: parsing builds a tree many
    /// times the frame's size, so longer envelopes are reported, counted and dropped.
    pub max_json_frame: usize,
    /// How many messages a [`Mailbox`] holds before further ones are dropped (counted and
    /// reported): a peer cannot fill a slowly drained mailbox without bound.
    pub mailbox_depth: usize,
    /// How many bytes of frames a [`Mailbox`] holds (a message is let in while the mailbox is
    /// empty even when larger) before further messages are dropped.
    pub mailbox_bytes: usize,
    /// The timeout of [`Sender::send`] and [`Receiver::recv`].
    pub io_timeout: Duration,
    /// How long [`Straw::close`] waits for the peer to consume what we sent (D17, D9: 5 s).
    pub close_timeout: Duration,
    /// The longest single sleep: how often a blocked call re-checks for a lost peer.
    pub slice: Duration,
    /// The longest a blocking call spins on the ring before it asks the peer for an event and
    /// sleeps (zero: sleep at once; no spin on a single CPU). A peer that answers within the
    /// spin costs neither side an event nor a sleep: the 64 KiB streaming bench runs 2–3×
    /// faster with the default 20 µs than with none. The spin adapts (pore-ring's `spin::SpinBudget`):
    /// it yields the CPU between polling rounds, spins that keep running out shrink it down
    /// to none, and sleeps the peer ends early grow it back, so a peer that shares our CPU is
    /// not starved. An idle blocked call spins at most once per `slice`.
    pub spin: Duration,
    /// A polling straw's busy time and longest sleep (see [`StrawPore::set_polling`], D26).
    /// A polling straw's blocking call expects no event: for its first `poll_sleep` it
    /// spins (the full [`StrawConfig::spin`] each time, no adaptation) and yields the CPU in
    /// turn; then it spins once per nap, each nap a quarter of the time waited so far, up to
    /// `poll_sleep`. So an idle blocked call wakes about once per `poll_sleep`, and a frame
    /// that arrives after a long wait is seen within about this much. Capped by
    /// [`StrawConfig::slice`]; a close is seen at once.
    pub poll_sleep: Duration,
}

impl Default for StrawConfig {
    fn default() -> Self {
        StrawConfig {
            max_frame: 16 << 20,
            max_json_frame: 1 << 20,
            mailbox_depth: 1024,
            mailbox_bytes: 8 << 20,
            io_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
            slice: Duration::from_millis(100),
            spin: Duration::from_micros(20),
            poll_sleep: Duration::from_millis(1),
        }
    }
}

/// What a straw did so far (both halves), e.g. to report events per message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StrawStats {
    /// Frames whose send completed.
    pub frames_sent: u64,
    /// Their payload bytes.
    pub bytes_sent: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Their payload bytes.
    pub bytes_received: u64,
    /// Events we sent the peer.
    pub notifies: u64,
    /// Times a call slept (on the event channel or behind the other half).
    pub sleeps: u64,
    /// Incoming frames over [`StrawConfig::max_frame`], skipped.
    pub frames_skipped: u64,
    /// Incoming JSON envelopes over [`StrawConfig::max_json_frame`], dropped unparsed.
    pub json_too_large: u64,
    /// JSON messages dropped because their [`Mailbox`] was full.
    pub mailbox_full: u64,
}

/// A live straw: both halves. See the [module docs](self).
pub struct Straw<B: Backend> {
    tx: Sender<B>,
    rx: Receiver<B>,
}

impl<B: Backend> core::fmt::Debug for Straw<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Straw")
            .field("peer", &self.tx.sh.peer)
            .field("role", &self.tx.sh.role)
            .field("layout", &self.tx.sh.layout)
            .field("format", &self.tx.sh.format)
            .finish()
    }
}

/// The sending half of a straw.
pub struct Sender<B: Backend> {
    sh: Arc<Shared<B>>,
}

/// The receiving half of a straw.
pub struct Receiver<B: Backend> {
    sh: Arc<Shared<B>>,
}

/// Rounds of one receive call that yield no frame (a skipped frame, a re-check after a
/// wake-up) before it returns: a peer that keeps the ring busy with frames we skip cannot hold
/// a call past its deadline, nor a non-blocking call at all.
const RECV_BUDGET: usize = 64;

/// What one bounded receive step found.
enum Step {
    /// A whole frame.
    Frame(Bytes),
    /// Nothing whole, and the ring is armed to wake us.
    Empty,
    /// The step's share of work is used up (or its deadline passed); bytes may be waiting.
    Busy,
}

impl<B: Backend> Straw<B> {
    /// A straw over `pore`, closing its pore itself (no handshake machine).
    pub fn new(
        pore: StrawPore<B>,
        peer: Endpoint,
        role: Role,
        format: Format,
        cfg: StrawConfig,
    ) -> Self {
        Self::build(pore, peer, role, format, cfg, None)
    }

    pub(crate) fn build(
        pore: StrawPore<B>,
        peer: Endpoint,
        role: Role,
        format: Format,
        cfg: StrawConfig,
        hook: Option<Hook>,
    ) -> Self {
        let polling = pore.is_polling();
        let StrawPore {
            pore,
            tx,
            rx,
            layout,
            live,
        } = pore;
        let max = cfg.max_frame;
        let sh = Arc::new(Shared {
            pore: Mutex::new(Some(pore)),
            tx: Mutex::new(Some(TxState {
                ring: tx,
                framer: FrameWriter::new(max),
                pending: None,
            })),
            rx: Mutex::new(Some(RxState {
                ring: rx,
                framer: Reassembler::new(max),
            })),
            leftover: Mutex::new(VecDeque::new()),
            spin_tx: SpinBudget::new(cfg.spin),
            spin_rx: SpinBudget::new(cfg.spin),
            bell: Bell::default(),
            status: AtomicU8::new(OPEN),
            peer,
            role,
            layout,
            format,
            polling,
            cfg,
            live,
            mailboxes: Mutex::new(HashMap::new()),
            hook,
            stats: Counters::default(),
            close_sent: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            end_sent: AtomicBool::new(false),
            peer_finished: AtomicBool::new(false),
            vanishing: AtomicBool::new(false),
            vanish_asked: AtomicU64::new(0),
            vanish_answered: AtomicU64::new(0),
            users: AtomicUsize::new(2),
            done: Mutex::new(None),
            done_cv: Condvar::new(),
        });
        Straw {
            tx: Sender { sh: sh.clone() },
            rx: Receiver { sh },
        }
    }

    pub(crate) fn shared(&self) -> Arc<Shared<B>> {
        self.tx.sh.clone()
    }

    /// The peer endpoint.
    pub fn peer(&self) -> &Endpoint {
        &self.tx.sh.peer
    }

    /// Our role in the handshake.
    pub fn role(&self) -> Role {
        self.tx.sh.role
    }

    /// The ring layout.
    pub fn layout(&self) -> Layout {
        self.tx.sh.layout
    }

    /// The negotiated format.
    pub fn format(&self) -> Format {
        self.tx.sh.format
    }

    /// Whether the straw runs in polling mode (D26; see [`StrawPore::set_polling`] and, for
    /// a managed straw, `HandshakeConfig::polling`).
    pub fn is_polling(&self) -> bool {
        self.tx.sh.polling
    }

    /// Counters of both halves.
    pub fn stats(&self) -> StrawStats {
        self.tx.stats()
    }

    /// The sending half.
    pub fn sender(&self) -> &Sender<B> {
        &self.tx
    }

    /// The receiving half.
    pub fn receiver(&self) -> &Receiver<B> {
        &self.rx
    }

    /// Half-closes our sending direction; see [`Sender::finish`].
    pub fn finish(&self) -> Result<(), StrawError> {
        self.tx.finish()
    }

    /// Splits into halves for two threads. Closing either half closes the straw.
    pub fn split(self) -> (Sender<B>, Receiver<B>) {
        (self.tx, self.rx)
    }

    /// Registers a mailbox for JSON messages addressed to `addr` (replacing any earlier one).
    pub fn mailbox(&self, addr: &str) -> Mailbox {
        self.rx.mailbox(addr)
    }

    /// Closes gracefully (D17): finishes a partly sent frame, waits (up to
    /// [`StrawConfig::close_timeout`]) until the peer consumed everything we sent, then follows
    /// the close chart (a straw made with [`Straw::new`]: writes its end of stream, see
    /// [`Sender::finish`], and closes its pore). Every frame whose `send` returned `Ok` before
    /// this reaches the peer's ring unless the peer stops reading; the peer's receiver then
    /// ends with [`StrawError::Eof`]. Either half can close: [`Sender::close`],
    /// [`Receiver::close`].
    pub fn close(self) -> Result<(), StrawError> {
        self.tx.close()
    }
}

impl<B: Backend> Drop for Sender<B> {
    fn drop(&mut self) {
        self.sh.user_gone();
    }
}

impl<B: Backend> Drop for Receiver<B> {
    fn drop(&mut self) {
        self.sh.user_gone();
    }
}
