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
//! [`StrawIoError::PeerGone`] after the first error; a managed straw then tells its manager,
//! which tears it down.
//!
//! A straw made by the [manager](crate::manager) is closed through the handshake machine (the
//! seed's close chart); a straw made directly from a pore ([`Straw::new`], for tests and custom
//! set-ups) closes its pore itself.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use pore_core::{loopback::Loopback, DomId};
//! use pore_straw::straw::{open_active, open_passive, Straw, StrawConfig};
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
//! assert!(sb.receiver().recv_timeout(Duration::from_secs(1)).is_err());
//! # Ok::<(), pore_straw::straw::StrawIoError>(())
//! ```

use std::collections::{HashMap, VecDeque};
use std::string::{String, ToString};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use std::vec;
use std::vec::Vec;

use bytes::Bytes;
use pore_core::{
    Backend, DomId, Error as _, ErrorKind, EventChannel, GrantRef, MappedPages, Pore, PoreRole,
    Port, SharedAccess, SharedMemory, UnmapNotify, WaitOutcome,
};
use pore_ring::frame::{FrameWriter, Progress};
use pore_ring::ling::{LingConsumer, LingProducer, LingRing, LING_PAGES};
use pore_ring::v2::{self, V2Geometry, V2Ring};
use pore_ring::{RingError, RingReader, RingWriter, SharedRing};

use crate::handshake::{Closed, Input, PoreGrant, Role, StrawError};
use crate::reasm::{Got, Reassembler, AHEAD};
use crate::spin::SpinBudget;
use crate::{Endpoint, Format, Layout};

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
    /// faster with the default 20 µs than with none. The spin adapts (see the `spin` module):
    /// it yields the CPU between polling rounds, spins that keep running out shrink it down
    /// to none, and sleeps the peer ends early grow it back, so a peer that shares our CPU is
    /// not starved. An idle blocked call spins at most once per `slice`.
    pub spin: Duration,
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
        }
    }
}

/// Why a straw operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrawIoError {
    /// The timeout elapsed.
    #[error("timed out")]
    TimedOut,
    /// A non-blocking call could not proceed now.
    #[error("would block")]
    WouldBlock,
    /// A send timed out after its frame began: the frame stays queued and is finished by the
    /// next send or flush (do not send it again).
    #[error("timed out with the frame partly sent (it stays queued)")]
    Queued,
    /// The peer closed the straw and everything it sent has been received.
    #[error("end of stream: the peer closed the straw")]
    Eof,
    /// We closed the straw.
    #[error("the straw is closed")]
    Closed,
    /// The peer died, vanished from xenstore or unmapped the pages.
    #[error("peer gone")]
    PeerGone,
    /// The peer broke the ring protocol (the straw is dead).
    #[error("ring: {0}")]
    Ring(RingError),
    /// The backend failed.
    #[error("backend: {kind}: {message}")]
    Backend {
        /// Its classification.
        kind: ErrorKind,
        /// Its message.
        message: String,
    },
    /// A frame longer than [`StrawConfig::max_frame`].
    #[error("frame of {0} bytes exceeds the maximum")]
    TooLarge(usize),
    /// A message that cannot be encoded as JSON.
    #[error("json: {0}")]
    Json(String),
    /// The handshake or close protocol failed.
    #[error("strawman: {0}")]
    Protocol(StrawError),
}

impl StrawIoError {
    fn backend<E: pore_core::Error>(e: E) -> Self {
        if e.is_peer_gone() {
            return StrawIoError::PeerGone;
        }
        StrawIoError::Backend {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

impl From<RingError> for StrawIoError {
    fn from(e: RingError) -> Self {
        StrawIoError::Ring(e)
    }
}

// ----- opening the pore of a layout -----

type Mem<B> = Arc<Pore<B>>;

enum Tx<B: Backend> {
    Ling(LingProducer<Mem<B>>),
    V2(v2::Producer<Mem<B>>),
}

enum Rx<B: Backend> {
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
    fn prepare_wait(&mut self) -> Result<bool, RingError> {
        delegate!(Tx, self, r => RingWriter::prepare_wait(r))
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
    fn prepare_wait(&mut self) -> Result<bool, RingError> {
        delegate!(Rx, self, r => RingReader::prepare_wait(r))
    }
    fn is_broken(&self) -> bool {
        delegate!(Rx, self, r => RingReader::is_broken(r))
    }
}

/// A pore with its ring set up, ready to become a [`Straw`].
pub struct StrawPore<B: Backend> {
    pore: Mem<B>,
    tx: Tx<B>,
    rx: Rx<B>,
    layout: Layout,
    /// v2: (our live byte, the peer's live byte).
    live: Option<(usize, usize)>,
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
) -> Result<StrawPore<B>, StrawIoError> {
    let want = geometry(ring_pages)?;
    if all_refs.len() != want.pages() {
        return Err(StrawIoError::Ring(RingError::InvalidInput(
            "wrong number of v2 refs",
        )));
    }
    let mut pore =
        Pore::open_passive(backend, peer, all_refs, port).map_err(StrawIoError::backend)?;
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

fn geometry(ring_pages: u32) -> Result<V2Geometry, StrawIoError> {
    if ring_pages == 0 || !ring_pages.is_power_of_two() {
        return Err(StrawIoError::Ring(RingError::InvalidInput(
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

fn arm_unmap_notify<B: Backend>(pore: &mut Pore<B>, live: Option<usize>) {
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
) -> Result<(StrawPore<B>, PoreGrant), StrawIoError> {
    match layout {
        Layout::Ling => {
            let mut pore =
                Pore::open_active(backend, peer, LING_PAGES).map_err(StrawIoError::backend)?;
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
                Pore::open_active(backend, peer, g.pages()).map_err(StrawIoError::backend)?;
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
) -> Result<StrawPore<B>, StrawIoError> {
    match layout {
        Layout::Ling => {
            if refs.len() != LING_PAGES {
                return Err(StrawIoError::Ring(RingError::InvalidInput(
                    "LING needs 8 ring refs",
                )));
            }
            let mut pore =
                Pore::open_passive(backend, peer, refs, port).map_err(StrawIoError::backend)?;
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
                return Err(StrawIoError::Ring(RingError::InvalidInput(
                    "v2 needs exactly the control page ref",
                )));
            };
            // Map the control page alone to learn the data pages.
            let control = backend.map(peer, &[*ctrl]).map_err(StrawIoError::backend)?;
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
                Pore::open_passive(backend, peer, &all, port).map_err(StrawIoError::backend)?;
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

// ----- the shared state of a straw -----

const OPEN: u8 = 0;
const PEER_CLOSED: u8 = 1;
const PEER_GONE: u8 = 2;
const CLOSING: u8 = 3;
const CLOSED: u8 = 4;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct TxState<B: Backend> {
    ring: Tx<B>,
    framer: FrameWriter,
    /// A frame partly in the ring: it is finished before anything else.
    pending: Option<Bytes>,
}

struct RxState<B: Backend> {
    ring: Rx<B>,
    framer: Reassembler,
}

#[derive(Default)]
struct BellState {
    seq: u64,
    on_channel: bool,
}

/// Fans the pore's single event channel out to both halves.
#[derive(Default)]
struct Bell {
    state: Mutex<BellState>,
    cv: Condvar,
}

/// How a straw driven by the manager talks to its handshake machine.
pub(crate) type Hook = Box<dyn Fn(Input) + Send + Sync>;

/// How long a managed straw whose event channel died waits for the manager to learn from
/// xenstore whether the peer closed gracefully (end of stream) or vanished (peer gone): at
/// least this long, and until the manager has re-read the peer's state since we asked.
const VANISH_GRACE: Duration = Duration::from_millis(250);

/// The longest a managed straw waits for that answer (a manager starved of CPU for longer:
/// the straw decides alone that the peer is gone).
const VANISH_MAX_WAIT: Duration = Duration::from_secs(5);

pub(crate) struct Shared<B: Backend> {
    pore: Mutex<Option<Mem<B>>>,
    tx: Mutex<Option<TxState<B>>>,
    rx: Mutex<Option<RxState<B>>>,
    /// Whole frames the receiver had taken out of the ring (its read-ahead) or that still sat
    /// in it when the pore closed: delivered before the end of the stream (see
    /// [`Shared::shutdown_pore`]). Locked after `rx`.
    leftover: Mutex<VecDeque<Bytes>>,
    bell: Bell,
    status: AtomicU8,
    peer: Endpoint,
    role: Role,
    layout: Layout,
    format: Format,
    cfg: StrawConfig,
    live: Option<(usize, usize)>,
    mailboxes: Mutex<HashMap<String, MailboxTx>>,
    hook: Option<Hook>,
    stats: Counters,
    close_sent: AtomicBool,
    finished: AtomicBool,
    peer_finished: AtomicBool,
    vanishing: AtomicBool,
    /// Re-reads of the peer's state the data path asked the manager for, and the last one it
    /// answered (see [`Shared::peer_vanished`]).
    vanish_asked: AtomicU64,
    vanish_answered: AtomicU64,
    users: AtomicUsize,
    /// The spin budgets of the sending and the receiving half.
    spin_tx: SpinBudget,
    spin_rx: SpinBudget,
    done: Mutex<Option<Result<Closed, StrawError>>>,
    done_cv: Condvar,
}

impl<B: Backend> Shared<B> {
    fn status_error(&self) -> Option<StrawIoError> {
        match self.status.load(Ordering::Acquire) {
            OPEN => None,
            PEER_CLOSED => Some(StrawIoError::Eof),
            PEER_GONE => Some(StrawIoError::PeerGone),
            _ => Some(StrawIoError::Closed),
        }
    }

    fn peer_live_gone(&self) -> bool {
        let Some((_, theirs)) = self.live else {
            return false;
        };
        lock(&self.pore)
            .as_ref()
            .is_some_and(|p| p.load_u8(theirs, Ordering::Acquire) == v2::LIVE_GONE)
    }

    /// Spins (up to `budget`'s next spin, never past `deadline`) until `ready` says the ring
    /// has what we wait for: `true` if it did. Called before arming the ring's wake-up, so a
    /// peer that answers within the spin costs neither side an event nor a sleep (see
    /// [`crate::spin`]).
    fn spin_until(
        &self,
        budget: &SpinBudget,
        deadline: Instant,
        mut ready: impl FnMut() -> Result<bool, RingError>,
    ) -> Result<bool, RingError> {
        let spin = budget.next(self.cfg.spin);
        if spin.is_zero() {
            return Ok(false);
        }
        let end = (Instant::now() + spin).min(deadline);
        loop {
            for _ in 0..64 {
                if ready()? {
                    budget.succeeded();
                    return Ok(true);
                }
                core::hint::spin_loop();
            }
            if Instant::now() >= end || self.status.load(Ordering::Acquire) != OPEN {
                budget.failed();
                return Ok(false);
            }
            // A peer that shares our CPU runs now rather than after our spin (with nothing
            // else runnable here this returns at once).
            std::thread::yield_now();
        }
    }

    fn ring_bell(&self) {
        let mut st = lock(&self.bell.state);
        st.seq = st.seq.wrapping_add(1);
        self.bell.cv.notify_all();
    }

    fn bell_seq(&self) -> u64 {
        lock(&self.bell.state).seq
    }

    fn poke(&self) -> Result<(), StrawIoError> {
        self.stats.notifies.fetch_add(1, Ordering::Relaxed);
        let pore = lock(&self.pore).clone();
        match pore {
            Some(p) => p.notify().map_err(StrawIoError::backend),
            None => Err(StrawIoError::Closed),
        }
    }

    /// Sleeps until an event may have arrived since `seen`, or `timeout` (capped by the slice).
    fn sleep(&self, seen: u64, timeout: Duration) -> Result<(), StrawIoError> {
        self.stats.sleeps.fetch_add(1, Ordering::Relaxed);
        let timeout = timeout.min(self.cfg.slice);
        let mut st = lock(&self.bell.state);
        if st.seq != seen {
            return Ok(());
        }
        if st.on_channel {
            let _ = self
                .bell
                .cv
                .wait_timeout(st, timeout)
                .unwrap_or_else(|p| p.into_inner());
            return Ok(());
        }
        st.on_channel = true;
        drop(st);
        let pore = lock(&self.pore).clone();
        let r = match &pore {
            Some(p) => p.channel().wait(timeout),
            None => {
                let mut st = lock(&self.bell.state);
                st.on_channel = false;
                self.bell.cv.notify_all();
                return Err(StrawIoError::Closed);
            }
        };
        drop(pore);
        let mut st = lock(&self.bell.state);
        st.on_channel = false;
        if matches!(r, Ok(WaitOutcome::Event)) {
            st.seq = st.seq.wrapping_add(1);
        }
        self.bell.cv.notify_all();
        drop(st);
        match r {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = StrawIoError::backend(e);
                if e == StrawIoError::PeerGone {
                    // The caller re-checks the ring, then the status.
                    self.peer_vanished();
                    return Ok(());
                }
                Err(e)
            }
        }
    }

    /// The data path saw the peer go (its port closed, its live byte cleared). A managed straw
    /// first asks the manager to re-read the peer's state: a graceful close unbinds the port
    /// just before it writes Closed, and that must end the stream, not fail it. It waits
    /// [`VANISH_GRACE`] and until the manager answered (on a loaded machine the manager may
    /// take longer than the grace: a fixed wait turned graceful closes into peer gone).
    fn peer_vanished(&self) {
        if self.status.load(Ordering::Acquire) != OPEN
            || self.vanishing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        if let Some(hook) = &self.hook {
            let asked = self.vanish_asked.fetch_add(1, Ordering::AcqRel) + 1;
            hook(Input::Watch);
            let start = Instant::now();
            while self.status.load(Ordering::Acquire) == OPEN {
                let waited = start.elapsed();
                let answered = self.vanish_answered.load(Ordering::Acquire) >= asked;
                if (answered && waited >= VANISH_GRACE) || waited >= VANISH_MAX_WAIT {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if self.status.load(Ordering::Acquire) == OPEN {
                self.mark(PEER_GONE);
                hook(Input::PeerLost);
            }
        } else {
            self.mark(PEER_GONE);
        }
    }

    /// The peer broke the ring protocol (a bad index, a bad header): the channel is dead
    /// (DESIGN: a bad index closes the channel). Marks the peer gone and, for a managed straw,
    /// tells the manager, which tears the straw down and cleans xenstore. Returns the error
    /// for the caller.
    fn ring_failed(&self, e: RingError) -> StrawIoError {
        use pore_core::Error as _;
        if e.kind() != ErrorKind::Protocol {
            return e.into();
        }
        if self.status.load(Ordering::Acquire) == OPEN {
            tracing::warn!(peer = %self.peer, error = %e, "straw: the peer broke the ring; closing");
            self.mark(PEER_GONE);
            if let Some(hook) = &self.hook {
                hook(Input::PeerLost);
            }
        }
        e.into()
    }

    fn user_gone(&self) {
        if self.users.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // The last half dropped without `close()`: let the manager close the straw.
        if let Some(hook) = &self.hook {
            if !self.close_sent.swap(true, Ordering::AcqRel) {
                hook(Input::Close);
            }
        }
    }

    /// Records a terminal status (the first one wins, except that a local close does not
    /// hide a peer's).
    fn mark(&self, status: u8) {
        let _ = self
            .status
            .compare_exchange(OPEN, status, Ordering::AcqRel, Ordering::Acquire);
        if status == CLOSED {
            let _ =
                self.status
                    .compare_exchange(CLOSING, CLOSED, Ordering::AcqRel, Ordering::Acquire);
        }
        self.ring_bell();
    }

    /// Stops the data path and closes the pore (the close chart's "unmap refs" / "end access").
    /// Waits up to `grace` for blocked calls to let go of the pore; if they do not, the pore is
    /// closed quietly when the last of them does. Returns how many of our granted pages the
    /// peer still maps (left on the backend's revoke-later list; 0 when closed later).
    pub(crate) fn shutdown_pore(&self, grace: Duration) -> usize {
        if let Some((mine, _)) = self.live {
            if let Some(p) = lock(&self.pore).as_ref() {
                p.store_u8(mine, v2::LIVE_GONE, Ordering::Release);
                let _ = p.notify();
            }
        }
        drop(lock(&self.tx).take());
        {
            let mut rx = lock(&self.rx);
            if let Some(mut st) = rx.take() {
                // Under the rx lock: a receive sees the ring or the salvaged frames, never
                // neither.
                self.salvage(&mut st);
            }
        }
        let pore = lock(&self.pore).take();
        self.ring_bell();
        let Some(mut pore) = pore else { return 0 };
        let end = Instant::now() + grace;
        loop {
            match Arc::try_unwrap(pore) {
                Ok(p) => return close_counting_parked(p),
                Err(p) if Instant::now() < end => {
                    pore = p;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(_) => {
                    tracing::debug!(peer = %self.peer, "straw: pore still in use; closed later");
                    return 0;
                }
            }
        }
    }

    /// Before the pore goes: keeps the whole frames the receiver already took out of the ring
    /// (its read-ahead) or that still sit in it, so that the application receives them before
    /// the end of the stream. A peer drains its ring before it closes, but the bytes it saw
    /// consumed may sit in our read-ahead, not yet received: without this they were lost when
    /// the close chart closed our pore. Bounded by what the ring holds (a peer still writing
    /// cannot keep us here), and skipped for a broken ring.
    fn salvage(&self, st: &mut RxState<B>) {
        if st.ring.is_broken() {
            return;
        }
        let budget = st.ring.capacity().saturating_add(AHEAD);
        let mut taken = 0usize;
        let mut leftover = lock(&self.leftover);
        while taken < budget {
            match st.framer.recv(&mut st.ring) {
                Ok(Some(Got::Frame(f))) => {
                    taken = taken.saturating_add(f.len() + 4);
                    leftover.push_back(f);
                }
                Ok(Some(Got::Skipped(n))) => taken = taken.saturating_add(n as usize + 4),
                Ok(None) | Err(_) => break,
            }
        }
        if !leftover.is_empty() {
            tracing::debug!(peer = %self.peer, frames = leftover.len(), "straw: frames kept past the pore's close");
        }
    }

    /// How many re-reads of the peer's state the data path asked for so far (the manager
    /// loads it when it takes a watch input, before it re-reads the state).
    pub(crate) fn vanish_asked(&self) -> u64 {
        self.vanish_asked.load(Ordering::Acquire)
    }

    /// The manager handled a watch input it took after the data path's `asked`-th request
    /// (it re-read the peer's state and acted on it).
    pub(crate) fn vanish_answered(&self, asked: u64) {
        self.vanish_answered.fetch_max(asked, Ordering::AcqRel);
    }

    pub(crate) fn peer_finished(&self) {
        self.peer_finished.store(true, Ordering::Release);
        self.ring_bell();
    }

    pub(crate) fn peer_left(&self, graceful: bool) {
        self.mark(if graceful { PEER_CLOSED } else { PEER_GONE });
    }

    pub(crate) fn is_finished(&self) -> bool {
        lock(&self.done).is_some()
    }

    pub(crate) fn finished(&self, result: Result<Closed, StrawError>) {
        match &result {
            Ok(Closed::ByPeer) => self.mark(PEER_CLOSED),
            Ok(Closed::Locally) => self.mark(CLOSED),
            Err(_) => self.mark(PEER_GONE),
        }
        *lock(&self.done) = Some(result);
        self.done_cv.notify_all();
    }
}

#[derive(Default)]
struct Counters {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    notifies: AtomicU64,
    sleeps: AtomicU64,
    frames_skipped: AtomicU64,
    json_too_large: AtomicU64,
    mailbox_full: AtomicU64,
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

/// Where JSON messages addressed to one name arrive ([`Straw::mailbox`]). Bounded by
/// [`StrawConfig::mailbox_depth`] and [`StrawConfig::mailbox_bytes`].
#[derive(Debug)]
pub struct Mailbox {
    rx: mpsc::Receiver<(serde_json::Value, usize)>,
    /// Frame bytes of the messages waiting here.
    queued: Arc<AtomicUsize>,
}

/// The delivering end of a [`Mailbox`].
struct MailboxTx {
    tx: mpsc::SyncSender<(serde_json::Value, usize)>,
    queued: Arc<AtomicUsize>,
}

impl Mailbox {
    fn took(&self, (msg, len): (serde_json::Value, usize)) -> serde_json::Value {
        self.queued.fetch_sub(len, Ordering::AcqRel);
        msg
    }

    /// The next message, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<serde_json::Value, StrawIoError> {
        match self.rx.recv_timeout(timeout) {
            Ok(m) => Ok(self.took(m)),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(StrawIoError::TimedOut),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(StrawIoError::Closed),
        }
    }

    /// The next message if one is there.
    pub fn try_recv(&self) -> Option<serde_json::Value> {
        self.rx.try_recv().ok().map(|m| self.took(m))
    }
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
            cfg,
            live,
            mailboxes: Mutex::new(HashMap::new()),
            hook,
            stats: Counters::default(),
            close_sent: AtomicBool::new(false),
            finished: AtomicBool::new(false),
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
    pub fn finish(&self) -> Result<(), StrawIoError> {
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
    /// the close chart. Every frame whose `send` returned `Ok` before this reaches the peer's
    /// ring unless the peer stops reading.
    pub fn close(self) -> Result<(), StrawIoError> {
        self.tx.close()
    }
}

impl<B: Backend> Shared<B> {
    fn count_sent(&self, len: usize) {
        self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_sent
            .fetch_add(len as u64, Ordering::Relaxed);
    }

    fn stats(&self) -> StrawStats {
        let c = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StrawStats {
            frames_sent: l(&c.frames_sent),
            bytes_sent: l(&c.bytes_sent),
            frames_received: l(&c.frames_received),
            bytes_received: l(&c.bytes_received),
            notifies: l(&c.notifies),
            sleeps: l(&c.sleeps),
            frames_skipped: l(&c.frames_skipped),
            json_too_large: l(&c.json_too_large),
            mailbox_full: l(&c.mailbox_full),
        }
    }
}

impl<B: Backend> Sender<B> {
    /// Counters of the straw (both halves).
    pub fn stats(&self) -> StrawStats {
        self.sh.stats()
    }

    /// Sends one frame, blocking up to [`StrawConfig::io_timeout`].
    pub fn send(&self, frame: Bytes) -> Result<(), StrawIoError> {
        self.send_timeout(frame, self.sh.cfg.io_timeout)
    }

    /// Sends one frame, blocking up to `timeout`. A frame larger than the ring streams through
    /// it. [`StrawIoError::TimedOut`]: nothing of it was taken, send it again later.
    /// [`StrawIoError::Queued`]: the timeout struck after the frame began; it stays queued
    /// and the next send, [`Sender::flush_timeout`] or close finishes it first (do not resend
    /// it).
    pub fn send_timeout(&self, frame: Bytes, timeout: Duration) -> Result<(), StrawIoError> {
        if frame.len() > self.sh.cfg.max_frame {
            return Err(StrawIoError::TooLarge(frame.len()));
        }
        let deadline = Instant::now() + timeout;
        let mut frame = Some(frame);
        loop {
            let seen = self.sh.bell_seq();
            match self.step(&mut frame, Some(deadline))? {
                true => return Ok(()),
                false => match self.wait(seen, deadline) {
                    // Taken, partly in the ring: it will be finished, never resend it.
                    Err(StrawIoError::TimedOut) if frame.is_none() => {
                        return Err(StrawIoError::Queued)
                    }
                    r => r?,
                },
            }
        }
    }

    /// Sends one frame if the ring takes at least its beginning now; a frame only partly in the
    /// ring is finished by later calls (or [`Sender::flush_timeout`]). Fails with
    /// [`StrawIoError::WouldBlock`] (nothing sent) if the ring has no room.
    pub fn try_send(&self, frame: Bytes) -> Result<(), StrawIoError> {
        if frame.len() > self.sh.cfg.max_frame {
            return Err(StrawIoError::TooLarge(frame.len()));
        }
        let mut frame = Some(frame);
        self.step(&mut frame, None)?;
        match frame {
            None => Ok(()),
            Some(_) => Err(StrawIoError::WouldBlock),
        }
    }

    /// Finishes a partly sent frame, blocking up to `timeout`.
    pub fn flush_timeout(&self, timeout: Duration) -> Result<(), StrawIoError> {
        let deadline = Instant::now() + timeout;
        let mut none = None;
        loop {
            let seen = self.sh.bell_seq();
            if self.step(&mut none, Some(deadline))? {
                return Ok(());
            }
            self.wait(seen, deadline)?;
        }
    }

    /// Wraps `msg` in the seed's JSON envelope `{"addr": addr, "msg": msg}` and sends it.
    pub fn send_to(&self, addr: &str, msg: &serde_json::Value) -> Result<(), StrawIoError> {
        let v = serde_json::json!({ "addr": addr, "msg": msg });
        let bytes = serde_json::to_vec(&v).map_err(|e| StrawIoError::Json(e.to_string()))?;
        self.send(Bytes::from(bytes))
    }

    /// One step: finish the pending frame, then start `frame` (taken when it is entirely or
    /// partly in the ring). `true`: nothing is pending and `frame` was taken. With a
    /// `deadline` (a blocking call) it spins for room before giving up.
    fn step(
        &self,
        frame: &mut Option<Bytes>,
        deadline: Option<Instant>,
    ) -> Result<bool, StrawIoError> {
        if self.sh.finished.load(Ordering::Acquire) && frame.is_some() {
            return Err(StrawIoError::Closed);
        }
        if let Some(e) = self.sh.status_error() {
            return Err(match e {
                StrawIoError::Eof => StrawIoError::Closed,
                e => e,
            });
        }
        let mut guard = lock(&self.sh.tx);
        let st = guard.as_mut().ok_or(StrawIoError::Closed)?;
        if st.ring.is_broken() {
            return Err(self.sh.status_error().unwrap_or(StrawIoError::PeerGone));
        }
        let mut notify = false;
        let r = self.pump(st, frame, &mut notify, deadline);
        drop(guard);
        let finished = r.map_err(|e| self.sh.ring_failed(e))?;
        if notify {
            self.sh.poke()?;
        }
        Ok(finished)
    }

    /// The ring work of [`Sender::step`].
    fn pump(
        &self,
        st: &mut TxState<B>,
        frame: &mut Option<Bytes>,
        notify: &mut bool,
        spin: Option<Instant>,
    ) -> Result<bool, RingError> {
        loop {
            let mut done = true;
            if let Some(p) = st.pending.clone() {
                match st.framer.send_deferred(&mut st.ring, &p)? {
                    Progress::Done => {
                        st.pending = None;
                        self.sh.count_sent(p.len());
                    }
                    Progress::Pending => done = false,
                }
            }
            if done {
                if let Some(f) = frame.take() {
                    match st.framer.send_deferred(&mut st.ring, &f)? {
                        Progress::Done => self.sh.count_sent(f.len()),
                        Progress::Pending if st.framer.in_progress() => {
                            st.pending = Some(f);
                            done = false;
                        }
                        Progress::Pending => {
                            *frame = Some(f);
                            done = false;
                        }
                    }
                }
            }
            st.ring.commit()?;
            *notify |= st.ring.take_notify();
            if done {
                return Ok(true);
            }
            if let Some(deadline) = spin {
                if self
                    .sh
                    .spin_until(&self.sh.spin_tx, deadline, || Ok(st.ring.writable()? > 0))?
                {
                    continue;
                }
            }
            // About to wait for room: ask to be woken, then re-check.
            if !st.ring.prepare_wait()? {
                return Ok(false);
            }
        }
    }

    fn wait(&self, seen: u64, deadline: Instant) -> Result<(), StrawIoError> {
        let now = Instant::now();
        if now >= deadline {
            return Err(StrawIoError::TimedOut);
        }
        if self.sh.peer_live_gone() {
            self.sh.peer_vanished();
            return Ok(());
        }
        self.sh.sleep(seen, deadline - now)?;
        self.sh.spin_tx.slept(now.elapsed(), self.sh.cfg.spin);
        Ok(())
    }

    /// Finishes a partly sent frame and waits (up to `timeout`) until the peer has consumed
    /// everything we sent; the straw stays open (e.g. wait for this, then keep receiving until
    /// the peer closes).
    pub fn drain_timeout(&self, timeout: Duration) -> Result<(), StrawIoError> {
        self.drain(timeout)
    }

    fn drain(&self, timeout: Duration) -> Result<(), StrawIoError> {
        let deadline = Instant::now() + timeout;
        self.flush_timeout(timeout)?;
        loop {
            let seen = self.sh.bell_seq();
            {
                let mut guard = lock(&self.sh.tx);
                let st = guard.as_mut().ok_or(StrawIoError::Closed)?;
                let cap = st.ring.capacity();
                let empty = st.ring.writable().and_then(|w| {
                    Ok(w == cap || (st.ring.prepare_wait()? && st.ring.writable()? == cap))
                });
                drop(guard);
                if empty.map_err(|e| self.sh.ring_failed(e))? {
                    return Ok(());
                }
            }
            if let Some(e) = self.sh.status_error() {
                return Err(e);
            }
            self.wait(seen, deadline)?;
        }
    }

    /// Half-closes: finishes a partly sent frame, waits (up to
    /// [`StrawConfig::close_timeout`]) until the peer consumed everything, then tells the peer
    /// that nothing more will come (its receiver then ends with [`StrawIoError::Eof`]). We can
    /// still receive; later sends fail with [`StrawIoError::Closed`]. Close the straw once both
    /// directions are done. Needs the manager (a straw made with [`Straw::new`] only drains).
    pub fn finish(&self) -> Result<(), StrawIoError> {
        self.drain(self.sh.cfg.close_timeout)?;
        self.sh.finished.store(true, Ordering::Release);
        if let Some(hook) = &self.sh.hook {
            hook(Input::Finish);
        }
        Ok(())
    }

    /// Closes the straw gracefully; see [`Straw::close`].
    pub fn close(&self) -> Result<(), StrawIoError> {
        let timeout = self.sh.cfg.close_timeout;
        let drained = match self.drain(timeout) {
            // The peer closed first: nothing more can be delivered, and that is no failure.
            Err(_) if self.sh.status.load(Ordering::Acquire) == PEER_CLOSED => Ok(()),
            d => d,
        };
        if let Err(e) = &drained {
            tracing::warn!(peer = %self.sh.peer, error = %e, "straw: closing without a full drain");
        }
        let _ = self
            .sh
            .status
            .compare_exchange(OPEN, CLOSING, Ordering::AcqRel, Ordering::Acquire);
        match &self.sh.hook {
            None => {
                // Standalone: close the pore ourselves.
                self.sh.shutdown_pore(Duration::from_millis(200));
                self.sh.mark(CLOSED);
                drained
            }
            Some(hook) => {
                if !self.sh.close_sent.swap(true, Ordering::AcqRel) {
                    hook(Input::Close);
                }
                // The manager runs the close chart; wait for its verdict.
                let wait = timeout * 2 + Duration::from_secs(1);
                let guard = lock(&self.sh.done);
                let (guard, _) = self
                    .sh
                    .done_cv
                    .wait_timeout_while(guard, wait, |d| d.is_none())
                    .unwrap_or_else(|p| p.into_inner());
                match guard.clone() {
                    Some(Ok(_)) => drained,
                    Some(Err(e)) => Err(StrawIoError::Protocol(e)),
                    None => Err(StrawIoError::TimedOut),
                }
            }
        }
    }
}

impl<B: Backend> Receiver<B> {
    /// Counters of the straw (both halves).
    pub fn stats(&self) -> StrawStats {
        self.sh.stats()
    }

    /// Receives one frame, blocking up to [`StrawConfig::io_timeout`].
    pub fn recv(&self) -> Result<Bytes, StrawIoError> {
        self.recv_timeout(self.sh.cfg.io_timeout)
    }

    /// Receives one frame, blocking up to `timeout`. [`StrawIoError::Eof`] once the peer closed
    /// and everything it sent was received.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Bytes, StrawIoError> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.sh.bell_seq();
            let busy = match self.step(Some(deadline))? {
                Step::Frame(f) => return Ok(f),
                Step::Busy => true,
                Step::Empty => false,
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(StrawIoError::TimedOut);
            }
            if busy {
                // More bytes wait in the ring: no sleep.
                continue;
            }
            if self.sh.peer_live_gone() {
                self.sh.peer_vanished();
                continue;
            }
            self.sh.sleep(seen, deadline - now)?;
            self.sh.spin_rx.slept(now.elapsed(), self.sh.cfg.spin);
        }
    }

    /// Receives one frame if a whole one is there; [`StrawIoError::WouldBlock`] otherwise
    /// (also when the call's share of work, a few skipped frames, is used up).
    pub fn try_recv(&self) -> Result<Bytes, StrawIoError> {
        match self.step(None)? {
            Step::Frame(f) => Ok(f),
            Step::Busy | Step::Empty => Err(StrawIoError::WouldBlock),
        }
    }

    /// One bounded step: at most [`RECV_BUDGET`] rounds without a frame, and none past
    /// `deadline` after the first.
    fn step(&self, deadline: Option<Instant>) -> Result<Step, StrawIoError> {
        let mut guard = lock(&self.sh.rx);
        let Some(st) = guard.as_mut() else {
            if let Some(f) = lock(&self.sh.leftover).pop_front() {
                self.sh
                    .stats
                    .frames_received
                    .fetch_add(1, Ordering::Relaxed);
                self.sh
                    .stats
                    .bytes_received
                    .fetch_add(f.len() as u64, Ordering::Relaxed);
                return Ok(Step::Frame(f));
            }
            return Err(self.sh.status_error().unwrap_or(StrawIoError::Closed));
        };
        if st.ring.is_broken() {
            return Err(self.sh.status_error().unwrap_or(StrawIoError::PeerGone));
        }
        let mut rounds = 0;
        loop {
            if rounds == RECV_BUDGET
                || (rounds > 0 && deadline.is_some_and(|d| Instant::now() >= d))
            {
                return Ok(Step::Busy);
            }
            rounds += 1;
            let r = st.framer.recv(&mut st.ring);
            let notify = st.ring.take_notify();
            if notify {
                self.sh.poke()?;
            }
            let got = match r {
                Ok(got) => got,
                Err(e) => return Err(self.sh.ring_failed(e)),
            };
            match got {
                Some(Got::Frame(f)) => {
                    self.sh
                        .stats
                        .frames_received
                        .fetch_add(1, Ordering::Relaxed);
                    self.sh
                        .stats
                        .bytes_received
                        .fetch_add(f.len() as u64, Ordering::Relaxed);
                    return Ok(Step::Frame(f));
                }
                Some(Got::Skipped(n)) => {
                    let count = self.sh.stats.frames_skipped.fetch_add(1, Ordering::Relaxed);
                    if count.is_power_of_two() || count == 0 {
                        tracing::warn!(peer = %self.sh.peer, len = n, skipped = count + 1, "straw: skipped an oversized frame");
                    } else {
                        tracing::debug!(peer = %self.sh.peer, len = n, "straw: skipped an oversized frame");
                    }
                }
                None => {
                    let readable = match st.ring.readable() {
                        Ok(n) => n,
                        Err(e) => return Err(self.sh.ring_failed(e)),
                    };
                    // Nothing whole yet. After the peer finished or closed, an empty ring is the
                    // end.
                    if self.sh.peer_finished.load(Ordering::Acquire)
                        && !st.framer.in_progress()
                        && readable == 0
                    {
                        return Err(StrawIoError::Eof);
                    }
                    if let Some(e) = self.sh.status_error() {
                        if readable == 0 {
                            return Err(e);
                        }
                        continue;
                    }
                    if let Some(deadline) = deadline {
                        match self
                            .sh
                            .spin_until(&self.sh.spin_rx, deadline, || Ok(st.ring.readable()? > 0))
                        {
                            Ok(true) => continue,
                            Ok(false) => {}
                            Err(e) => return Err(self.sh.ring_failed(e)),
                        }
                    }
                    match st.ring.prepare_wait() {
                        Ok(true) => continue,
                        Ok(false) => return Ok(Step::Empty),
                        Err(e) => return Err(self.sh.ring_failed(e)),
                    }
                }
            }
        }
    }

    /// Registers a mailbox for JSON messages addressed to `addr`. It holds up to
    /// [`StrawConfig::mailbox_depth`] messages and [`StrawConfig::mailbox_bytes`] of their
    /// frames; messages beyond are dropped (counted in [`StrawStats::mailbox_full`] and
    /// reported).
    pub fn mailbox(&self, addr: &str) -> Mailbox {
        let (tx, rx) = mpsc::sync_channel(self.sh.cfg.mailbox_depth);
        let queued = Arc::new(AtomicUsize::new(0));
        lock(&self.sh.mailboxes).insert(
            addr.to_string(),
            MailboxTx {
                tx,
                queued: queued.clone(),
            },
        );
        Mailbox { rx, queued }
    }

    /// Receives frames for up to `timeout` and delivers each JSON envelope to its mailbox (the
    /// seed's `Addressee ! Message`). Unknown addresses, malformed or oversized frames and
    /// messages for a full mailbox are logged and dropped. Returns how many messages were
    /// delivered once at least one frame arrived and no other one is there (or the deadline
    /// passed), or the timeout passed (`Ok(0)`).
    pub fn dispatch(&self, timeout: Duration) -> Result<usize, StrawIoError> {
        let deadline = Instant::now() + timeout;
        let first = match self.recv_timeout(timeout) {
            Ok(f) => f,
            Err(StrawIoError::TimedOut) => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut delivered = usize::from(self.deliver(&first));
        loop {
            if Instant::now() >= deadline {
                return Ok(delivered);
            }
            match self.try_recv() {
                Ok(f) => delivered += usize::from(self.deliver(&f)),
                Err(StrawIoError::WouldBlock) => return Ok(delivered),
                Err(e) if delivered > 0 => {
                    tracing::debug!(error = %e, "straw: dispatch stopped");
                    return Ok(delivered);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Delivers one JSON envelope; `false` if it was dropped (over
    /// [`StrawConfig::max_json_frame`], malformed, no mailbox, or the mailbox full).
    pub fn deliver(&self, frame: &[u8]) -> bool {
        if frame.len() > self.sh.cfg.max_json_frame {
            self.sh.stats.json_too_large.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %self.sh.peer, len = frame.len(), max = self.sh.cfg.max_json_frame, "straw: oversized JSON message dropped unparsed");
            return false;
        }
        match parse_envelope(frame) {
            Ok((addr, msg)) => {
                let boxes = lock(&self.sh.mailboxes);
                let Some(mb) = boxes.get(&addr) else {
                    tracing::warn!(peer = %self.sh.peer, addr, "straw: no mailbox; message dropped");
                    return false;
                };
                let len = frame.len();
                let queued = mb.queued.fetch_add(len, Ordering::AcqRel);
                let full = if queued.saturating_add(len) > self.sh.cfg.mailbox_bytes && queued > 0 {
                    true
                } else {
                    match mb.tx.try_send((msg, len)) {
                        Ok(()) => return true,
                        Err(mpsc::TrySendError::Full(_)) => true,
                        Err(mpsc::TrySendError::Disconnected(_)) => false,
                    }
                };
                mb.queued.fetch_sub(len, Ordering::AcqRel);
                if full {
                    let n = self.sh.stats.mailbox_full.fetch_add(1, Ordering::Relaxed);
                    if n.is_power_of_two() || n == 0 {
                        tracing::warn!(peer = %self.sh.peer, addr, dropped = n + 1, "straw: mailbox full; message dropped");
                    }
                } else {
                    tracing::warn!(peer = %self.sh.peer, addr, "straw: no mailbox; message dropped");
                }
                false
            }
            Err(why) => {
                tracing::warn!(peer = %self.sh.peer, why, len = frame.len(), "straw: malformed JSON message dropped");
                false
            }
        }
    }
}

/// Parses the seed's JSON envelope: an object with a string `addr` and any `msg`.
///
/// ```
/// use pore_straw::straw::parse_envelope;
/// let (addr, msg) = parse_envelope(br#"{"addr":"echo","msg":[1,2]}"#).unwrap();
/// assert_eq!(addr, "echo");
/// assert_eq!(msg, serde_json::json!([1, 2]));
/// assert!(parse_envelope(b"{\"msg\":1}").is_err());
/// ```
pub fn parse_envelope(frame: &[u8]) -> Result<(String, serde_json::Value), &'static str> {
    let v: serde_json::Value = serde_json::from_slice(frame).map_err(|_| "not JSON")?;
    let serde_json::Value::Object(mut obj) = v else {
        return Err("not an object");
    };
    let Some(serde_json::Value::String(addr)) = obj.remove("addr") else {
        return Err("no string addr");
    };
    let msg = obj.remove("msg").ok_or("no msg")?;
    Ok((addr, msg))
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

#[cfg(test)]
#[path = "straw_tests.rs"]
mod tests;
