//! A simulated domain and its handles: the backend a driver under test uses.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pore_core::{
    CoreError, DomId, ErrorKind, EventChannel, Events, GrantRef, GrantedPages, Grants, MappedPages,
    Maps, Port, SharedMemory, StoreAccess, UnmapNotify, WaitOutcome,
};
use rustix::thread::futex;

use crate::error::{Result, SimError};
use crate::hv::{CtxId, Hv, DOMAIN_CTX};
use crate::proto::{self, Op, Reply, Request, NONE};
use crate::sys::mmap::Mmap;
use crate::sys::socket;
use crate::table::{EndRef, EndState, Table};

/// How long a domain process waits for the broker to answer one request.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// How a domain reaches the hypervisor.
enum Transport {
    /// A thread of the hypervisor's own process.
    Local(Arc<Hv>),
    /// A process talking to the broker.
    Remote { sock: OwnedFd, buf: Mutex<Vec<u8>> },
}

/// What every handle made from one [`SimDomain`] shares: one resource context of a domain.
pub(crate) struct DomCtx {
    id: DomId,
    /// Which context of the domain this is ([`DOMAIN_CTX`] for its creator and dom0 handles).
    context: CtxId,
    transport: Transport,
    table: Arc<Table>,
    dead: AtomicBool,
    readiness: OnceLock<Readiness>,
}

impl std::fmt::Debug for DomCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomCtx")
            .field("id", &self.id)
            .field("context", &self.context)
            .finish()
    }
}

impl DomCtx {
    /// The creator context of a domain of this process (or a dom0 handle).
    pub(crate) fn local(id: DomId, hv: Arc<Hv>) -> Arc<DomCtx> {
        Self::local_context(id, DOMAIN_CTX, hv)
    }

    /// Context `context` of domain `id`, in this process.
    pub(crate) fn local_context(id: DomId, context: CtxId, hv: Arc<Hv>) -> Arc<DomCtx> {
        let table = hv.table.clone();
        Arc::new(DomCtx {
            id,
            context,
            transport: Transport::Local(hv),
            table,
            dead: AtomicBool::new(false),
            readiness: OnceLock::new(),
        })
    }

    /// A context of this process reached through the broker at `path`, which `first` (a
    /// hello or a join) asks for.
    fn remote(path: &Path, first: &Request) -> Result<Arc<DomCtx>> {
        let sock = socket::connect(path).map_err(SimError::os("connecting to the sim broker"))?;
        let mut buf = Vec::new();
        let reply = exchange(sock.as_fd(), &mut buf, first)?;
        let (&[id, context], Some(table_fd)) =
            (reply.words.as_slice(), reply.fds.into_iter().next())
        else {
            return Err(SimError::refused(
                ErrorKind::Protocol,
                "the broker's welcome lacks a domid, a context or the event table",
            ));
        };
        let id = u16::try_from(id).map_err(|_| {
            SimError::refused(ErrorKind::Protocol, "the broker sent a domid out of range")
        })?;
        let table = Table::from_fd(table_fd).map_err(SimError::os("mapping the event table"))?;
        tracing::debug!(domid = id, context, "connected to the sim broker");
        Ok(Arc::new(DomCtx {
            id: DomId(id),
            context,
            transport: Transport::Remote {
                sock,
                buf: Mutex::new(buf),
            },
            table: table.into_shared(),
            dead: AtomicBool::new(false),
            readiness: OnceLock::new(),
        }))
    }

    fn call(&self, op: Op, args: &[u32]) -> Result<Reply> {
        if self.dead.load(Ordering::Acquire) {
            return Err(SimError::refused(ErrorKind::Closed, "the domain is dead"));
        }
        let req = Request::new(op, args);
        match &self.transport {
            Transport::Local(hv) => hv.handle(self.id, self.context, &req),
            Transport::Remote { sock, buf } => {
                let mut buf = buf.lock().unwrap_or_else(|p| p.into_inner());
                exchange(sock.as_fd(), &mut buf, &req)
            }
        }
    }

    fn die(&self) {
        if self.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        match &self.transport {
            Transport::Local(hv) => hv.context_ended(self.id, self.context),
            Transport::Remote { sock, .. } => socket::shutdown(sock.as_fd()),
        }
    }
}

impl Drop for DomCtx {
    fn drop(&mut self) {
        if let Some(r) = self.readiness.get() {
            r.stop.store(true, Ordering::Release);
            self.table.wake(self.id);
        }
        if let Some(r) = self.readiness.take() {
            if let Some(t) = r.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = t.join();
            }
        }
    }
}

fn socket_from_env() -> Result<std::ffi::OsString> {
    std::env::var_os(crate::SOCKET_ENV).ok_or_else(|| {
        SimError::refused(
            ErrorKind::NotFound,
            "PORE_SIM_SOCKET is not set: no simulated hypervisor to connect to",
        )
    })
}

/// One request/response exchange with the broker.
fn exchange(sock: BorrowedFd<'_>, buf: &mut Vec<u8>, req: &Request) -> Result<Reply> {
    proto::encode_request(req, buf);
    socket::send(sock, buf, &[]).map_err(SimError::os("sending to the sim broker"))?;
    if !socket::readable(sock, BROKER_TIMEOUT)
        .map_err(SimError::os("waiting for the sim broker"))?
    {
        return Err(SimError::refused(
            ErrorKind::TimedOut,
            "the sim broker did not answer",
        ));
    }
    match socket::recv(sock, buf).map_err(SimError::os("receiving from the sim broker"))? {
        Some(fds) => proto::decode_reply(buf, fds),
        None => Err(SimError::refused(
            ErrorKind::Closed,
            "the sim broker closed the connection",
        )),
    }
}

fn end_from(words: &[u32]) -> Result<(u32, EndRef)> {
    match words {
        [port, slot, side, gen, ..] if *side <= 1 => Ok((
            *port,
            EndRef {
                slot: *slot,
                side: *side,
                gen: *gen,
            },
        )),
        _ => Err(SimError::refused(
            ErrorKind::Protocol,
            "malformed port reply",
        )),
    }
}

/// A simulated domain: implements every pore-core backend trait ([`pore_core::Backend`]).
///
/// Made by [`crate::Hypervisor::create_domain`] (a domain in this process) or
/// [`SimDomain::connect`] (this process is the domain). **Dropping the handle kills the
/// domain**: its mappings are released and its grants ended or deferred, their unmap
/// notifications fire, then its ports close (peers see `PeerGone`, or nothing under
/// [`crate::PeerClose::Silent`], as on Xen). Handles made from it (channels, pages)
/// stay memory-safe afterwards; their operations fail with [`ErrorKind::Closed`].
///
/// A handle can also *join* a live domain ([`crate::Hypervisor::join_domain`],
/// [`SimDomain::join`], or [`SimDomain::connect`] in a process spawned with
/// [`crate::DomainCommand::join`]): it is then one more process of that domain, with grants,
/// mappings and ports of its own, as a process on real Xen has its own gntdev, gntalloc and
/// evtchn files. Dropping a joined handle (or the joined process exiting or being killed)
/// releases only what it holds, firing its unmap notifications; the domain, its other
/// contexts and its xenstore nodes stay. When the domain dies, its joined handles' operations
/// fail with [`ErrorKind::Closed`]. The store ring has one driver, the domain's creator: a
/// joined handle's [`StoreAccess::open_store`] is refused ([`ErrorKind::Unsupported`]; Linux
/// multiplexes its processes in the xenbus driver, the sim does not), so it reaches xenstored
/// through its socket.
#[derive(Debug)]
pub struct SimDomain {
    ctx: Arc<DomCtx>,
    /// Whether dropping this handle ends its context: kills the domain for its creator,
    /// releases its own resources for a joined handle; nothing for dom0 handles.
    ends_context: bool,
}

impl SimDomain {
    pub(crate) fn new(ctx: Arc<DomCtx>, ends_context: bool) -> Self {
        SimDomain { ctx, ends_context }
    }

    /// Connects this process to the broker whose socket `PORE_SIM_SOCKET` names (see
    /// [`crate::Hypervisor::start`]): as a new domain named by `PORE_SIM_NAME` (default
    /// `"domain"`), or, if `PORE_SIM_JOIN` holds a domid (a process spawned with
    /// [`crate::DomainCommand::join`]), as one more process of that live domain
    /// ([`SimDomain::join`]).
    pub fn connect() -> Result<SimDomain> {
        let path = socket_from_env()?;
        if let Some(join) = std::env::var_os(crate::JOIN_ENV) {
            let dom = join
                .to_str()
                .and_then(|d| d.trim().parse::<u16>().ok())
                .ok_or_else(|| {
                    SimError::refused(
                        ErrorKind::InvalidInput,
                        "PORE_SIM_JOIN does not hold a domain id",
                    )
                })?;
            return Self::join_to(Path::new(&path), DomId(dom));
        }
        let name = std::env::var(crate::NAME_ENV).unwrap_or_else(|_| "domain".into());
        Self::connect_to(Path::new(&path), &name)
    }

    /// Connects to the broker at `path` as a new domain called `name`.
    pub fn connect_to(path: &Path, name: &str) -> Result<SimDomain> {
        let mut hello = Request::new(Op::Hello, &[]);
        hello.tail = name.as_bytes().to_vec();
        Ok(SimDomain::new(DomCtx::remote(path, &hello)?, true))
    }

    /// Joins the live domain `dom` as one more process of it, through the broker whose socket
    /// `PORE_SIM_SOCKET` names. What this handle grants, maps and binds is its own: when it
    /// drops or this process dies, only that is released (its unmap notifications fire) and
    /// the domain lives on. Joining a domain that does not exist is `NotFound`; dom0 cannot be
    /// joined (`PermissionDenied`).
    pub fn join(dom: DomId) -> Result<SimDomain> {
        let path = socket_from_env()?;
        Self::join_to(Path::new(&path), dom)
    }

    /// As [`SimDomain::join`], through the broker at `path`.
    pub fn join_to(path: &Path, dom: DomId) -> Result<SimDomain> {
        let join = Request::new(Op::Join, &[u32::from(dom.0)]);
        Ok(SimDomain::new(DomCtx::remote(path, &join)?, true))
    }

    /// This domain's id.
    pub fn id(&self) -> DomId {
        self.ctx.id
    }

    /// Whether this handle joined a domain someone else created (see [`SimDomain::join`]).
    pub fn is_joined(&self) -> bool {
        self.ctx.context != DOMAIN_CTX
    }

    /// Drains the readiness eventfd (see [`Events::readiness_fd`]) after it polled readable.
    pub fn ack_readiness(&self) {
        if let Some(r) = self.ctx.readiness.get() {
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(&r.efd, &mut buf);
        }
    }

    fn channel(&self, words: &[u32], peer: DomId, persistent: bool) -> Result<SimChannel> {
        let (port, end) = end_from(words)?;
        Ok(SimChannel::new(
            self.ctx.clone(),
            port,
            end,
            peer,
            persistent,
        ))
    }
}

impl Drop for SimDomain {
    fn drop(&mut self) {
        if self.ends_context {
            if std::thread::panicking() {
                tracing::debug!(
                    dom = %self.ctx.id,
                    joined = self.is_joined(),
                    "domain thread panicked: its context ends"
                );
            }
            self.ctx.die();
        }
    }
}

/// The readiness watcher of a domain: turns its futex wake-ups into eventfd readiness.
struct Readiness {
    efd: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Readiness {
    fn start(ctx: &DomCtx) -> std::io::Result<Readiness> {
        let efd = Arc::new(rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?);
        let stop = Arc::new(AtomicBool::new(false));
        let (table, dom, efd2, stop2) = (ctx.table.clone(), ctx.id, efd.clone(), stop.clone());
        // From now on every new event for this domain bumps its wake word.
        table.watch(dom);
        let thread = std::thread::Builder::new()
            .name(format!("pore-sim-ready-{dom}"))
            .spawn(move || {
                let word = table.wake_gen(dom);
                let flags = table.futex_flags();
                let mut seen = word.load(Ordering::Acquire);
                let ts = futex::Timespec {
                    tv_sec: 0,
                    tv_nsec: 100_000_000,
                };
                while !stop2.load(Ordering::Acquire) {
                    let now = word.load(Ordering::Acquire);
                    if now != seen {
                        seen = now;
                        let _ = rustix::io::write(&*efd2, &1u64.to_ne_bytes());
                    } else {
                        let _ = futex::wait(word, flags, seen, Some(&ts));
                    }
                }
                table.unwatch(dom);
            })?;
        Ok(Readiness {
            efd,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }
}

/// One end of a simulated interdomain event channel.
pub struct SimChannel {
    ctx: Arc<DomCtx>,
    port: u32,
    end: EndRef,
    peer: DomId,
    persistent: bool,
    closed: bool,
}

impl std::fmt::Debug for SimChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimChannel")
            .field("domain", &self.ctx.id)
            .field("port", &self.port)
            .field("peer", &self.peer)
            .finish()
    }
}

impl SimChannel {
    pub(crate) fn new(
        ctx: Arc<DomCtx>,
        port: u32,
        end: EndRef,
        peer: DomId,
        persistent: bool,
    ) -> Self {
        SimChannel {
            ctx,
            port,
            end,
            peer,
            persistent,
            closed: false,
        }
    }

    /// The domain at the other end (the one it was offered to, or bound to).
    pub fn peer(&self) -> DomId {
        self.peer
    }

    fn check(&self, consume: bool) -> Result<bool> {
        match self.ctx.table.end_state(self.end, consume) {
            EndState::Fired => Ok(true),
            // Silently unbound (PeerClose::Silent): nothing will ever fire, as on Xen.
            EndState::Idle | EndState::Unbound => Ok(false),
            EndState::PeerGone => Err(SimError::refused(
                ErrorKind::PeerGone,
                "the peer closed its port or died",
            )),
            EndState::Closed => Err(SimError::refused(
                ErrorKind::Closed,
                "the port was closed (its domain died)",
            )),
        }
    }

    fn ready(&self) -> bool {
        !matches!(
            self.ctx.table.end_state(self.end, false),
            EndState::Idle | EndState::Unbound
        )
    }

    fn shut(&mut self) -> Result<()> {
        if self.closed {
            return Err(SimError::refused(ErrorKind::Closed, "closing a port twice"));
        }
        self.closed = true;
        if self.persistent {
            return Ok(());
        }
        self.ctx.call(Op::Close, &[self.port]).map(drop)
    }
}

impl EventChannel for SimChannel {
    type Error = SimError;

    fn port(&self) -> Port {
        Port(self.port)
    }

    fn notify(&self) -> Result<()> {
        let t = &self.ctx.table;
        match t.end_state(self.end, false) {
            EndState::Closed => {
                return Err(SimError::refused(
                    ErrorKind::Closed,
                    "notify on a closed port",
                ))
            }
            EndState::PeerGone => {
                return Err(SimError::refused(
                    ErrorKind::PeerGone,
                    "the peer closed its port or died",
                ))
            }
            // The peer closed silently (PeerClose::Silent): Xen drops a send on an unbound
            // port and returns success.
            EndState::Unbound => return Ok(()),
            // An event may be pending for us while the peer is already gone: no kick into a
            // dead end (its domid may even be reused).
            EndState::Fired if t.peer_closed_silently(self.end) => return Ok(()),
            EndState::Fired | EndState::Idle => {}
        }
        if !t.is_bound(self.end) {
            return Err(SimError::refused(
                ErrorKind::NotFound,
                "notify on an unbound port",
            ));
        }
        t.kick(self.end.slot, 1 - self.end.side, self.peer);
        Ok(())
    }

    fn try_wait(&self) -> Result<bool> {
        self.check(true)
    }

    fn wait(&self, timeout: Duration) -> Result<WaitOutcome> {
        if self.check(true)? {
            return Ok(WaitOutcome::Event);
        }
        let start = Instant::now();
        let mut left = timeout;
        loop {
            self.ctx.table.sleep(self.ctx.id, left, || self.ready());
            if self.check(true)? {
                return Ok(WaitOutcome::Event);
            }
            left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(WaitOutcome::Timeout);
            }
        }
    }

    fn close(mut self) -> Result<()> {
        self.shut()
    }
}

impl Drop for SimChannel {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.shut();
        }
    }
}

impl Events for SimDomain {
    type Error = SimError;
    type Channel = SimChannel;

    fn alloc_unbound(&self, remote: DomId) -> Result<SimChannel> {
        let r = self.ctx.call(Op::AllocUnbound, &[remote.0 as u32])?;
        self.channel(&r.words, remote, false)
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<SimChannel> {
        let r = self.ctx.call(Op::Bind, &[remote.0 as u32, remote_port.0])?;
        self.channel(&r.words, remote, false)
    }

    fn select(
        &self,
        channels: &[&SimChannel],
        timeout: Duration,
        fired: &mut Vec<usize>,
    ) -> Result<()> {
        fired.clear();
        if channels.iter().any(|c| c.ctx.id != self.ctx.id) {
            return Err(SimError::refused(
                ErrorKind::InvalidInput,
                "select over a channel of another domain",
            ));
        }
        let mut start = None;
        loop {
            let mut gone = None;
            for (i, ch) in channels.iter().enumerate() {
                match ch.check(true) {
                    Ok(true) => fired.push(i),
                    Ok(false) => {}
                    Err(e) => {
                        gone.get_or_insert(e);
                    }
                }
            }
            if !fired.is_empty() {
                return Ok(());
            }
            if let Some(e) = gone {
                return Err(e);
            }
            let start = *start.get_or_insert_with(Instant::now);
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(());
            }
            self.ctx
                .table
                .sleep(self.ctx.id, left, || channels.iter().any(|c| c.ready()));
        }
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        if self.ctx.readiness.get().is_none() {
            match Readiness::start(&self.ctx) {
                Ok(r) => {
                    if let Err(r) = self.ctx.readiness.set(r) {
                        // Another thread won the race: stop ours.
                        r.stop.store(true, Ordering::Release);
                        self.ctx.table.wake(self.ctx.id);
                        if let Some(t) = r.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
                            let _ = t.join();
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "starting the readiness watcher failed");
                    return None;
                }
            }
        }
        self.ctx.readiness.get().map(|r| r.efd.as_fd())
    }
}

fn notify_args(handle: u32, notify: UnmapNotify) -> [u32; 3] {
    [
        handle,
        notify
            .clear_byte
            .map_or(NONE, |b| u32::try_from(b).unwrap_or(NONE - 1)),
        notify.send_event.map_or(NONE, |p| p.0),
    ]
}

/// Pages this domain granted to a peer.
pub struct SimGrant {
    ctx: Arc<DomCtx>,
    handle: u32,
    refs: Vec<GrantRef>,
    map: Mmap,
    ended: bool,
}

impl std::fmt::Debug for SimGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimGrant")
            .field("domain", &self.ctx.id)
            .field("refs", &self.refs)
            .finish()
    }
}

// SAFETY: `map` is a mapping owned by this handle, stable until it drops; the simulator and the
// peer only touch it atomically, and this crate hands it out only as `SharedView`s.
unsafe impl SharedMemory for SimGrant {
    fn as_ptr(&self) -> NonNull<u8> {
        self.map.ptr()
    }
    fn len(&self) -> usize {
        self.map.len()
    }
}

impl GrantedPages for SimGrant {
    type Error = SimError;

    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }

    fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<()> {
        self.ctx
            .call(Op::GrantNotify, &notify_args(self.handle, notify))
            .map(drop)
    }

    fn end_access(mut self) -> Result<()> {
        self.ctx.call(Op::EndAccess, &[self.handle, 0])?;
        self.ended = true;
        Ok(())
    }
}

impl Drop for SimGrant {
    fn drop(&mut self) {
        if !self.ended {
            // Pages the peer still maps go to the hypervisor's revoke-later list (D7).
            let _ = self.ctx.call(Op::EndAccess, &[self.handle, 1]);
        }
    }
}

/// A peer's pages mapped into this domain.
pub struct SimMapping {
    ctx: Arc<DomCtx>,
    handle: u32,
    granter: DomId,
    map: Mmap,
    unmapped: bool,
}

impl std::fmt::Debug for SimMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimMapping")
            .field("domain", &self.ctx.id)
            .field("granter", &self.granter)
            .field("len", &self.map.len())
            .finish()
    }
}

// SAFETY: as for `SimGrant`: an owned, stable mapping only accessed atomically.
unsafe impl SharedMemory for SimMapping {
    fn as_ptr(&self) -> NonNull<u8> {
        self.map.ptr()
    }
    fn len(&self) -> usize {
        self.map.len()
    }
}

impl MappedPages for SimMapping {
    type Error = SimError;

    fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<()> {
        self.ctx
            .call(Op::MapNotify, &notify_args(self.handle, notify))
            .map(drop)
    }

    fn unmap(mut self) -> Result<()> {
        self.unmapped = true;
        self.ctx.call(Op::Unmap, &[self.handle]).map(drop)
    }
}

impl Drop for SimMapping {
    fn drop(&mut self) {
        if !self.unmapped {
            let _ = self.ctx.call(Op::Unmap, &[self.handle]);
        }
    }
}

impl Grants for SimDomain {
    type Error = SimError;
    type Granted = SimGrant;

    fn grant(&self, remote: DomId, pages: usize) -> Result<SimGrant> {
        let count = u32::try_from(pages)
            .map_err(|_| CoreError::new(ErrorKind::InvalidInput, "page count too large"))?;
        let r = self.ctx.call(Op::Grant, &[remote.0 as u32, count])?;
        let malformed = || SimError::refused(ErrorKind::Protocol, "malformed grant reply");
        let (&handle, refs) = r.words.split_first().ok_or_else(malformed)?;
        let fd = r.fds.into_iter().next().ok_or_else(malformed)?;
        let map = match Mmap::map_fd(fd.as_fd(), 0, pages) {
            Ok(m) => m,
            Err(e) => {
                let _ = self.ctx.call(Op::EndAccess, &[handle, 1]);
                return Err(SimError::os("mapping granted pages")(e));
            }
        };
        Ok(SimGrant {
            ctx: self.ctx.clone(),
            handle,
            refs: refs.iter().map(|&r| GrantRef(r)).collect(),
            map,
            ended: false,
        })
    }
}

impl Maps for SimDomain {
    type Error = SimError;
    type Mapped = SimMapping;

    fn map(&self, remote: DomId, refs: &[GrantRef]) -> Result<SimMapping> {
        let mut args = Vec::with_capacity(refs.len() + 1);
        args.push(remote.0 as u32);
        args.extend(refs.iter().map(|r| r.0));
        let r = self.ctx.call(Op::Map, &args)?;
        let handle = *r.words.first().unwrap_or(&0);
        let release = |e: SimError| {
            let _ = self.ctx.call(Op::Unmap, &[handle]);
            e
        };
        let runs = parse_runs(&r.words, &r.fds).map_err(release)?;
        let map = Mmap::map_pages(&runs)
            .map_err(SimError::os("mapping granted pages"))
            .map_err(release)?;
        Ok(SimMapping {
            ctx: self.ctx.clone(),
            handle,
            granter: remote,
            map,
            unmapped: false,
        })
    }
}

fn parse_runs<'a>(
    words: &[u32],
    fds: &'a [OwnedFd],
) -> Result<Vec<(BorrowedFd<'a>, usize, usize)>> {
    let malformed = || SimError::refused(ErrorKind::Protocol, "malformed map reply");
    let n = *words.get(1).ok_or_else(malformed)? as usize;
    let body = words.get(2..).ok_or_else(malformed)?;
    if body.len() != n.checked_mul(3).ok_or_else(malformed)? {
        return Err(malformed());
    }
    body.chunks_exact(3)
        .map(|run| {
            let fd = fds.get(run[0] as usize).ok_or_else(malformed)?;
            Ok((fd.as_fd(), run[1] as usize, run[2] as usize))
        })
        .collect()
}

/// A domain's xenstore ring page (D7), as the domain or the store service sees it.
pub struct SimStorePage {
    map: Mmap,
}

impl std::fmt::Debug for SimStorePage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimStorePage").finish_non_exhaustive()
    }
}

impl SimStorePage {
    pub(crate) fn new(map: Mmap) -> Self {
        SimStorePage { map }
    }
}

// SAFETY: as for `SimGrant`: an owned, stable mapping only accessed atomically.
unsafe impl SharedMemory for SimStorePage {
    fn as_ptr(&self) -> NonNull<u8> {
        self.map.ptr()
    }
    fn len(&self) -> usize {
        self.map.len()
    }
}

impl StoreAccess for SimDomain {
    type StorePage = SimStorePage;

    fn open_store(&self) -> Result<(SimStorePage, SimChannel)> {
        let r = self.ctx.call(Op::OpenStore, &[])?;
        let fd = r
            .fds
            .first()
            .ok_or_else(|| SimError::refused(ErrorKind::Protocol, "malformed store reply"))?;
        let map = Mmap::map_fd(fd.as_fd(), 0, 1).map_err(SimError::os("mapping the store page"))?;
        let peer = DomId(*r.words.get(4).unwrap_or(&0) as u16);
        let channel = self.channel(&r.words, peer, true)?;
        Ok((SimStorePage::new(map), channel))
    }
}
