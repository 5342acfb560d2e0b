//! The strawman handshake and close protocol as a sans-IO state machine (D10).
//!
//! One [`StrawMachine`] follows one straw through its whole life: the handshake (the seed's
//! `do_open` on the opener side, `knock_knock` on the listener side), the connected phase
//! (watching the peer's state), and the close chart (D17). It never blocks and never reads a
//! clock: the driver
//!
//! 1. takes [`Action`]s from [`StrawMachine::poll_action`] and performs them (a xenstore
//!    operation, opening or closing the pore), feeding each result back with
//!    [`StrawMachine::handle`];
//! 2. feeds watch events of the machine's [`StrawMachine::token`] as [`Input::Watch`];
//! 3. calls [`StrawMachine::poll_action`] again no later than [`StrawMachine::deadline`], with
//!    the current time, so that timeouts fire.
//!
//! Time is a [`Duration`] since any fixed origin the driver chooses (a monotonic clock).
//!
//! Roles: the **opener** maps the listener's pages (a passive pore); the **listener** grants
//! them (an active pore). With the empty endpoint name, keys, paths, transactions and states are
//! exactly the seed's, so the machine talks to a LING domain.
//!
//! # The protocol, step by step
//!
//! Opener `A` → listener `B` (`SD` = `B`'s straw top + `/<A ident>`, `WD` = `A`'s warts top +
//! `/<B ident>`; see [`StrawPaths`]):
//!
//! 1. `A` reads `WD` (exists: [`HandshakeError::Exists`]) and `B`'s straw top (absent:
//!    [`HandshakeError::PeerNotFound`]); removes a stale `SD`; `mkdir SD` (fails:
//!    `PeerNotFound`); narrows `SD` to `n<A> b<B>` (D18, best effort).
//! 2. `A`, one transaction: `mkdir WD`, narrow it to `n<A> r<B>`, `WD/straw = SD`,
//!    `WD/state = 2`, `WD/format`, `WD/straw-layouts = "ling v2"` (D15), with
//!    [`HandshakeConfig::polling`] `WD/straw-polling = 1` (D26), `SD/warts = WD` (the knock).
//!    `A` watches `SD` and waits for `SD/state = 3`.
//! 3. `B`, woken by its watch on its straw top, checks that `SD/warts` is exactly `WD`, writes
//!    `SD/state = 1` (narrowed to `n<B> r<A>` in the same transaction), watches `WD`, waits for
//!    `WD/state = 2`, reads `WD/format` and `WD/straw-layouts` (and, when it asks for polling
//!    and chose v2, `WD/straw-polling`), opens the pore actively, and in one transaction writes
//!    `SD/ring-ref-1..8` + `SD/event-channel` (LING) or `SD/straw-layout = v2`,
//!    `SD/ring-pages`, `SD/ring-ref` + `SD/event-channel` (v2), `SD/straw-polling = 1` when
//!    both sides asked for polling (v2 only), then `SD/format` and `SD/state = 3`, each node
//!    narrowed to the pair.
//! 4. `A` reads and validates those keys (`SD/straw-polling` only if it asked: polling
//!    when it reads `1`), opens the pore passively, writes `WD/state = 4`, and
//!    waits for `SD/state = 4`; `B` waits for `WD/state = 4`, then writes `SD/state = 4`.
//! 5. Connected: each watches the other's directory. A state that leaves 4 ends the straw (5 or
//!    6: closed by the peer; gone or garbage: lost). Half-close: a side that will send nothing
//!    more writes `straw-eof = 1` in its own directory after its out-ring drained (a key LING
//!    neither writes nor reads).
//! 6. Close (D17, the seed's chart): the granting side writes 5, waits (bounded) for the
//!    mapping side's 6, ends access, writes 6; the mapping side writes 5 (not in the seed's
//!    chart: it tells the peer that the close is graceful before our port goes), unmaps,
//!    writes 6 and waits (bounded) for the peer's 6. A directory that disappears counts as
//!    Closed. Each side finally removes its own directory and its watch.
//!
//! Where we add to the seed (all ignored by a LING peer): the `format` key is always written
//! (D16); the layout keys (D15); the polling keys (D26); the permission narrowing (D18); the
//! existence reads of step 1 and the removal of a stale `SD`; `straw-eof`; the mapping side's 5
//! on close.
//!
//! ```
//! use core::time::Duration;
//! use pore_core::DomId;
//! use pore_straw::handshake::{Action, HandshakeConfig, StrawMachine};
//! use pore_straw::ops::StoreOp;
//! use pore_straw::Endpoint;
//!
//! let me = Endpoint::seed(DomId(1));
//! let mut m = StrawMachine::open(HandshakeConfig::default(), me, Endpoint::seed(DomId(2)), Duration::ZERO);
//! // First the opener checks that it has no straw to domain 2 yet.
//! match m.poll_action(Duration::ZERO) {
//!     Some(Action::Store(StoreOp::Read { path })) => {
//!         assert_eq!(path, "/local/domain/1/data/warts/2")
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use pore_core::{CoreError, DomId, ErrorKind, GrantRef, Port};

use crate::endpoint::{Endpoint, StrawPaths};
use crate::ops::{Access, Perm, StoreError, StoreOp, StoreReply};
use crate::parse::{self, Format, ParseError, PeerFormat, XenbusState, MAX_VALUE_LEN};

mod machine;

pub use self::machine::StrawMachine;

/// The number of pages of the LING layout (`NUM_STRAW_REFS`).
pub const LING_PAGES: usize = 8;

/// Settings of the handshake and close protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// How long a handshake may take (D9: 10 s).
    pub handshake_timeout: Duration,
    /// How long the close protocol may wait for the peer (D9: 5 s).
    pub close_timeout: Duration,
    /// The format we write (D16).
    pub format: Format,
    /// `Some(n)`: offer (opener) or choose (listener) the v2 layout with `n` data pages per
    /// direction (a power of two). `None`: LING only.
    pub v2_pages: Option<u32>,
    /// The largest `ring-pages` an opener accepts from a listener.
    pub max_v2_pages: u32,
    /// Ask for polling mode (D26): both sides busy-poll their rings, with no wake flags and
    /// no events, so a message costs no cross-core round trip and no fence. Used only with
    /// the v2 layout and only when the peer asks too (`straw-polling = 1` from both sides);
    /// otherwise, and with any peer that does not know the key (LING, an older pore), the
    /// straw uses wake flags as usual. [`Connection::polling`] tells the outcome. A polling
    /// straw's blocking calls spin, then sleep briefly in a loop (see
    /// `StrawConfig::poll_sleep`): worth it only when both sides have CPUs to spare.
    ///
    /// ```
    /// use pore_straw::HandshakeConfig;
    /// let cfg = HandshakeConfig { polling: true, ..HandshakeConfig::default() };
    /// assert_eq!(cfg.v2_pages, Some(16)); // polling needs the v2 layout
    /// ```
    pub polling: bool,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            format: Format::Json,
            v2_pages: Some(16),
            max_v2_pages: 256,
            polling: false,
        }
    }
}

/// Which side of the handshake a machine plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Called `open(peer)`: writes the knock, maps the listener's pages (passive pore).
    Opener,
    /// Was knocked: grants pages and allocates the port (active pore).
    Listener,
}

/// The ring layout of a straw (D15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// The seed's 8 pages, bit-exact with LING.
    Ling,
    /// Our v2 layout: one control page plus `ring_pages` data pages per direction.
    V2 {
        /// Data pages per direction (a power of two).
        ring_pages: u32,
    },
}

/// A pore the machine wants opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoreRequest {
    /// Grant pages to `peer` and allocate an unbound port (listener). For [`Layout::Ling`]
    /// reply with the 8 refs; for [`Layout::V2`] with the control page's ref first.
    Active {
        /// The peer domain.
        peer: DomId,
        /// The layout.
        layout: Layout,
    },
    /// Map the peer's pages and bind its port (opener).
    Passive {
        /// The peer domain.
        peer: DomId,
        /// The layout.
        layout: Layout,
        /// LING: the 8 ring refs; v2: the control page's ref.
        refs: Vec<GrantRef>,
        /// The peer's port.
        port: Port,
    },
}

/// What an active pore gives the handshake to publish (empty refs for a passive pore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoreGrant {
    /// LING: the 8 refs in page order; v2: the control page's ref (others are ignored).
    pub refs: Vec<GrantRef>,
    /// Our port.
    pub port: Port,
}

/// A straw that completed its handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The peer endpoint.
    pub peer: Endpoint,
    /// Our role.
    pub role: Role,
    /// The ring layout.
    pub layout: Layout,
    /// The negotiated format.
    pub format: Format,
    /// Both sides asked for polling mode and the layout is v2 (D26): the straw must put both
    /// ring halves in polling mode before it sends or receives anything.
    pub polling: bool,
}

/// How a straw ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// We closed it ([`Input::Close`]).
    Locally,
    /// The peer closed it (it wrote Closing or Closed).
    ByPeer,
}

/// The phase in which a timeout struck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The handshake.
    Handshake,
    /// The close protocol.
    Close,
}

/// Why a straw failed or ended abnormally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The opener already has a straw (a warts directory) to this peer.
    #[error("a straw to this peer already exists")]
    Exists,
    /// The peer endpoint has no straw directory (no such domain, or no manager there).
    #[error("peer endpoint not found")]
    PeerNotFound,
    /// A deadline passed.
    #[error("timed out during the {0:?}")]
    TimedOut(Stage),
    /// The peer's directory or state key disappeared.
    #[error("peer gone")]
    PeerGone,
    /// The peer closed or refused the straw during the handshake.
    #[error("the peer closed the straw during the handshake")]
    PeerClosed,
    /// A value the peer wrote is garbage.
    #[error("the peer wrote a bad {key}: {error}")]
    Protocol {
        /// The key.
        key: &'static str,
        /// What is wrong with it.
        error: ParseError,
    },
    /// The peer's state is not one the protocol allows at this point.
    #[error("unexpected peer state {0}")]
    UnexpectedState(XenbusState),
    /// A xenstore operation failed.
    #[error("xenstore {op} failed: {error}")]
    Store {
        /// The operation.
        op: &'static str,
        /// The error.
        #[source]
        error: StoreError,
    },
    /// Opening the pore failed (its kind; the manager reports the backend's error itself as
    /// `ManagerError::Pore`).
    #[error("opening the pore failed: {0}")]
    Pore(ErrorKind),
    /// The handshake was cancelled locally ([`Input::Close`] before it completed).
    #[error("cancelled")]
    Cancelled,
    /// The knock that woke the listener was gone or not addressed to it: nothing to do.
    #[error("the knock vanished")]
    Vanished,
    /// A generic layer failed (see [`CoreError`]).
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// The classification behind [`pore_core::Error::is_peer_gone`] and
/// [`pore_core::Error::is_retryable`]: a peer that vanished, closed or refused the straw is
/// gone ([`ErrorKind::PeerGone`]); a straw that already exists is [`ErrorKind::Busy`] (it may
/// be closed later); a store failure has the kind of its [`StoreError`].
impl pore_core::Error for HandshakeError {
    fn kind(&self) -> ErrorKind {
        match self {
            HandshakeError::Exists => ErrorKind::Busy,
            HandshakeError::PeerNotFound | HandshakeError::Vanished => ErrorKind::NotFound,
            HandshakeError::TimedOut(_) => ErrorKind::TimedOut,
            HandshakeError::PeerGone | HandshakeError::PeerClosed => ErrorKind::PeerGone,
            HandshakeError::Protocol { .. } | HandshakeError::UnexpectedState(_) => {
                ErrorKind::Protocol
            }
            HandshakeError::Store { error, .. } => error.kind(),
            HandshakeError::Pore(kind) => *kind,
            HandshakeError::Cancelled => ErrorKind::Closed,
            HandshakeError::Core(e) => e.kind(),
        }
    }
}

/// Something the driver must do, or learn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Perform a xenstore operation; reply with [`Input::Store`].
    Store(StoreOp),
    /// Open the pore; reply with [`Input::PoreOpened`].
    OpenPore(PoreRequest),
    /// Stop using the ring and close the pore (end grant access / unmap, then unbind); reply
    /// with [`Input::PoreClosed`].
    ClosePore,
    /// The handshake completed: the pore from the last [`Action::OpenPore`] is now a straw.
    Connected(Connection),
    /// The peer will send nothing more (it wrote `straw-eof`): once its ring is empty, our
    /// receiving direction is at its end. The straw stays open for our sends.
    PeerFinished,
    /// The peer began a graceful close: what is in the ring is the last of its data; the pore
    /// closes soon ([`Action::ClosePore`]).
    PeerClosing,
    /// The machine is finished; nothing follows. Any pore was closed before this.
    Done(Result<Closed, HandshakeError>),
}

/// What the driver feeds the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The result of the last [`Action::Store`].
    Store(Result<StoreReply, StoreError>),
    /// The result of the last [`Action::OpenPore`].
    PoreOpened(Result<PoreGrant, ErrorKind>),
    /// The pore of the last [`Action::ClosePore`] is closed (failures were logged by the driver).
    PoreClosed,
    /// A watch event for [`StrawMachine::token`] fired.
    Watch,
    /// The local user wants the straw closed (after draining, D17), or the handshake cancelled.
    Close,
    /// The data path saw the peer die (its port closed, unmap-notify) while xenstore may still
    /// say Connected: a connected straw is lost ([`HandshakeError::PeerGone`]).
    PeerLost,
    /// We will send nothing more and the peer consumed everything we sent: tell the peer
    /// (half-close; writes `straw-eof = "1"` in our directory, a key LING ignores).
    Finish,
}

/// What a manager does at start for endpoint `me` (the seed's `init/1`): create the straw top
/// (everyone may write: perms `b<me>`) and the warts top (everyone may read: `r<me>`). The
/// manager then watches [`Endpoint::straw_top`] and hands knocks
/// ([`crate::endpoint::parse_knock`]) to [`StrawMachine::listen`].
///
/// ```
/// use pore_core::DomId;
/// use pore_straw::{handshake::setup_ops, Endpoint};
/// assert_eq!(setup_ops(&Endpoint::seed(DomId(1))).len(), 4);
/// ```
pub fn setup_ops(me: &Endpoint) -> Vec<StoreOp> {
    let straw = me.straw_top();
    let warts = me.warts_top();
    vec![
        StoreOp::Mkdir {
            path: straw.clone(),
        },
        StoreOp::SetPerms {
            path: straw,
            perms: vec![Perm::new(Access::Both, me.domid)],
            best_effort: false,
        },
        StoreOp::Mkdir {
            path: warts.clone(),
        },
        StoreOp::SetPerms {
            path: warts,
            perms: vec![Perm::new(Access::Read, me.domid)],
            best_effort: false,
        },
    ]
}

/// What a manager removes when it shuts down after closing its straws: both tops.
pub fn teardown_ops(me: &Endpoint) -> Vec<StoreOp> {
    vec![
        StoreOp::Rm {
            path: me.straw_top(),
        },
        StoreOp::Rm {
            path: me.warts_top(),
        },
    ]
}

#[cfg(test)]
mod tests;
