//! A complete pore backend in one file, to copy as the start of yours.
//!
//! `MemXen` is an in-memory "hypervisor": two domains of one process share pages and event
//! channels through a mutex-guarded `World`. It implements pore-core's four capabilities
//! (`Events`, `Grants`, `Maps`, `StoreAccess`) following the checklist of "Writing a backend"
//! in pore-core's docs; `main` opens a pore active in one domain and passive in the other and
//! exchanges events and bytes. A failed check exits non-zero.
//!
//! It uses pore-core's ready-made `CoreError` as its error type; a backend with richer errors
//! brings its own type implementing `pore_core::Error` (see that trait's docs).

use std::collections::HashMap;
use std::process::ExitCode;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pore_core::ErrorKind::{
    self, Busy, Closed, InvalidInput, NotFound, PeerGone, PermissionDenied, Unsupported,
};
use pore_core::{
    CoreError, DomId, Error, EventChannel, Events, GrantRef, GrantedPages, Grants, MappedPages,
    Maps, NoStore, Pore, Port, SharedAccess, SharedMemory, StoreAccess, UnmapNotify, WaitOutcome,
    PAGE_SIZE,
};

type Result<T> = std::result::Result<T, CoreError>;

fn err<T>(kind: ErrorKind, what: &'static str) -> Result<T> {
    Err(CoreError::new(kind, what))
}

/// One page: page-aligned, and atomics only, so it is never plain data behind a reference.
#[repr(C, align(4096))]
struct Page([AtomicU64; PAGE_SIZE / 8]);

/// Pages shared by a granter's handle and its peer's mappings; `R` is the rest of the handle.
pub struct Pages<R> {
    block: Arc<[Page]>,
    rest: R,
}

// SAFETY: `block` is a heap allocation that the `Arc` keeps alive and in place while `self`
// lives (moving the handle moves only the pointer); it is valid for `len()` bytes, made of
// atomics only, and nothing takes a reference to plain data in it. `Page` is 4096-aligned.
unsafe impl<R: Send + Sync> SharedMemory for Pages<R> {
    fn as_ptr(&self) -> NonNull<u8> {
        NonNull::from(&*self.block).cast()
    }
    fn len(&self) -> usize {
        self.block.len() * PAGE_SIZE
    }
}

/// The world both domains live in: grant and port tables, and a bell for waiters.
#[derive(Default)]
pub struct World {
    state: Mutex<State>,
    bell: Condvar,
}

#[derive(Default)]
struct State {
    next: u32,
    grants: HashMap<(DomId, GrantRef), Grant>,
    ports: HashMap<(DomId, Port), PortState>,
}

struct Grant {
    to: DomId,
    block: Arc<[Page]>,
    page: usize,
    maps: usize,
    deferred: bool, // on the revoke-later list: ended while mapped, gone at the last unmap
}

struct PortState {
    to: DomId,
    peer: Option<(DomId, Port)>,
    pending: bool,
    peer_closed: bool,
}

impl World {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn domain(self: &Arc<Self>, id: DomId) -> MemXen {
        MemXen {
            world: self.clone(),
            id,
        }
    }
}

/// One domain of a [`World`]: the backend.
pub struct MemXen {
    world: Arc<World>,
    id: DomId,
}

/// An event channel end; dropping it closes the port.
pub struct Channel {
    world: Arc<World>,
    key: (DomId, Port),
}

impl Channel {
    /// Consumes a pending event (`true`); with no mask here, that is also the re-arm.
    fn take(&self, st: &mut State) -> Result<bool> {
        let Some(p) = st.ports.get_mut(&self.key) else {
            return err(Closed, "port closed");
        };
        if std::mem::take(&mut p.pending) {
            return Ok(true); // an event sent before the peer closed is delivered first
        }
        if p.peer_closed {
            return err(PeerGone, "the peer closed its port");
        }
        Ok(false)
    }
}

/// `select`, which `wait` shares: `fired` gets every channel whose event was consumed; an
/// error only when none fired (a consumed event is never lost); empty on timeout.
fn wait_any(world: &World, chans: &[&Channel], t: Duration, fired: &mut Vec<usize>) -> Result<()> {
    fired.clear();
    let deadline = Instant::now() + t;
    let mut st = world.lock();
    loop {
        let mut failed = None;
        for (i, ch) in chans.iter().enumerate() {
            match ch.take(&mut st) {
                Ok(true) => fired.push(i),
                Ok(false) => {}
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match failed {
            _ if !fired.is_empty() => return Ok(()),
            Some(e) => return Err(e),
            None if left.is_zero() => return Ok(()),
            None => {
                st = world
                    .bell
                    .wait_timeout(st, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        }
    }
}

impl EventChannel for Channel {
    type Error = CoreError;
    fn port(&self) -> Port {
        self.key.1
    }
    fn notify(&self) -> Result<()> {
        let mut st = self.world.lock();
        let peer = match st.ports.get(&self.key) {
            None => return err(Closed, "notify on a closed port"),
            Some(p) if p.peer_closed => return err(PeerGone, "the peer closed its port"),
            Some(p) => p.peer,
        };
        let Some(p) = peer.and_then(|k| st.ports.get_mut(&k)) else {
            return err(NotFound, "notify on an unbound port");
        };
        p.pending = true;
        self.world.bell.notify_all();
        Ok(())
    }
    fn try_wait(&self) -> Result<bool> {
        self.take(&mut self.world.lock())
    }
    fn wait(&self, timeout: Duration) -> Result<WaitOutcome> {
        let mut fired = Vec::new();
        wait_any(&self.world, &[self], timeout, &mut fired)?;
        Ok(fired
            .first()
            .map_or(WaitOutcome::Timeout, |_| WaitOutcome::Event))
    }
    fn close(self) -> Result<()> {
        Ok(()) // `Drop` closes; nothing here can fail
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let mut st = self.world.lock();
        let peer = st.ports.remove(&self.key).and_then(|p| p.peer);
        if let Some(p) = peer.and_then(|k| st.ports.get_mut(&k)) {
            p.peer_closed = true;
        }
        self.world.bell.notify_all();
    }
}

impl MemXen {
    fn open_port(&self, st: &mut State, to: DomId, peer: Option<(DomId, Port)>) -> Channel {
        st.next += 1;
        let key = (self.id, Port(st.next));
        let state = PortState {
            to,
            peer,
            pending: false,
            peer_closed: false,
        };
        st.ports.insert(key, state);
        Channel {
            world: self.world.clone(),
            key,
        }
    }
}

impl Events for MemXen {
    type Error = CoreError;
    type Channel = Channel;
    fn alloc_unbound(&self, remote: DomId) -> Result<Channel> {
        Ok(self.open_port(&mut self.world.lock(), remote, None))
    }
    fn bind_interdomain(&self, remote: DomId, port: Port) -> Result<Channel> {
        let mut st = self.world.lock();
        match st.ports.get(&(remote, port)) {
            Some(p) if p.to == self.id && p.peer.is_none() => {}
            Some(_) => return err(PermissionDenied, "the port is not offered to us"),
            None => return err(NotFound, "binding a port that does not exist"),
        }
        let ours = self.open_port(&mut st, remote, Some((remote, port)));
        if let Some(p) = st.ports.get_mut(&(remote, port)) {
            p.peer = Some(ours.key);
        }
        Ok(ours)
    }
    fn select(&self, chans: &[&Channel], t: Duration, fired: &mut Vec<usize>) -> Result<()> {
        if chans.iter().any(|c| c.key.0 != self.id) {
            return err(InvalidInput, "select over another domain's channel");
        }
        wait_any(&self.world, chans, t, fired)
    }
}

/// The granter's side of [`Pages`].
pub struct Granted {
    world: Arc<World>,
    keys: Vec<(DomId, GrantRef)>,
    refs: Vec<GrantRef>,
}

impl Granted {
    /// Ends access: `Busy` while the peer maps the pages, unless `defer` (then revoked later).
    fn end(&mut self, defer: bool) -> Result<()> {
        let mut st = self.world.lock();
        let mapped = self
            .keys
            .iter()
            .any(|k| st.grants.get(k).is_some_and(|g| g.maps > 0));
        if mapped && !defer {
            return err(Busy, "the peer still maps the pages");
        }
        for k in self.keys.drain(..) {
            match st.grants.get_mut(&k) {
                Some(g) if g.maps > 0 => g.deferred = true, // never freed under the peer
                _ => drop(st.grants.remove(&k)),
            }
        }
        Ok(())
    }
}

impl Drop for Granted {
    fn drop(&mut self) {
        let _ = self.end(true); // a no-op after `end_access` (no keys left)
    }
}

const NO_NOTIFY: &str = "no unmap-notify in memory (a closed peer's port reports PeerGone)";

impl GrantedPages for Pages<Granted> {
    type Error = CoreError;
    fn refs(&self) -> &[GrantRef] {
        &self.rest.refs
    }
    fn set_unmap_notify(&mut self, _: UnmapNotify) -> Result<()> {
        err(Unsupported, NO_NOTIFY)
    }
    fn end_access(mut self) -> Result<()> {
        self.rest.end(false) // on `Busy`, dropping `self` defers the pages
    }
}

impl Grants for MemXen {
    type Error = CoreError;
    type Granted = Pages<Granted>;
    fn grant(&self, to: DomId, pages: usize) -> Result<Pages<Granted>> {
        if pages == 0 || pages > 1024 {
            return err(InvalidInput, "granting no pages or too many");
        }
        // Fresh zeroed pages: recycled ones would show the peer their old contents.
        let zeroed = || Page([const { AtomicU64::new(0) }; PAGE_SIZE / 8]);
        let block: Arc<[Page]> = (0..pages).map(|_| zeroed()).collect();
        let mut st = self.world.lock();
        let mut keys = Vec::with_capacity(pages);
        for page in 0..pages {
            st.next += 1;
            let (key, block) = ((self.id, GrantRef(st.next)), block.clone());
            let grant = Grant {
                to,
                block,
                page,
                maps: 0,
                deferred: false,
            };
            st.grants.insert(key, grant);
            keys.push(key);
        }
        let refs = keys.iter().map(|k| k.1).collect();
        let rest = Granted {
            world: self.world.clone(),
            keys,
            refs,
        };
        Ok(Pages { block, rest })
    }
}

/// The mapper's side of [`Pages`]; dropping it unmaps.
pub struct Mapped {
    world: Arc<World>,
    keys: Vec<(DomId, GrantRef)>,
}

impl Drop for Mapped {
    fn drop(&mut self) {
        let mut st = self.world.lock();
        for k in &self.keys {
            let Some(g) = st.grants.get_mut(k) else {
                continue;
            };
            g.maps = g.maps.saturating_sub(1);
            if g.deferred && g.maps == 0 {
                st.grants.remove(k); // the last unmap revokes a deferred grant
            }
        }
    }
}

impl MappedPages for Pages<Mapped> {
    type Error = CoreError;
    fn set_unmap_notify(&mut self, _: UnmapNotify) -> Result<()> {
        err(Unsupported, NO_NOTIFY)
    }
    fn unmap(self) -> Result<()> {
        Ok(()) // `Drop` unmaps; nothing here can fail
    }
}

impl Maps for MemXen {
    type Error = CoreError;
    type Mapped = Pages<Mapped>;
    fn map(&self, from: DomId, refs: &[GrantRef]) -> Result<Pages<Mapped>> {
        let keys: Vec<_> = refs.iter().map(|r| (from, *r)).collect();
        let mut st = self.world.lock();
        let mut first: Option<Arc<[Page]>> = None;
        for (i, k) in keys.iter().enumerate() {
            let Some(g) = st.grants.get(k).filter(|g| !g.deferred) else {
                return err(NotFound, "mapping a grant that does not exist");
            };
            if g.to != self.id {
                return err(PermissionDenied, "mapping a grant made to another domain");
            }
            // One process cannot rearrange its memory: only a whole grant, in page order, is
            // contiguous. Anything else is refused, never mapped in part.
            let block = first.get_or_insert_with(|| g.block.clone());
            if g.page != i || !Arc::ptr_eq(block, &g.block) || block.len() != refs.len() {
                return err(Unsupported, "maps only a whole grant, in page order");
            }
        }
        let Some(block) = first else {
            return err(InvalidInput, "mapping no pages");
        };
        for k in &keys {
            st.grants.get_mut(k).into_iter().for_each(|g| g.maps += 1);
        }
        let rest = Mapped {
            world: self.world.clone(),
            keys,
        };
        Ok(Pages { block, rest })
    }
}

impl StoreAccess for MemXen {
    type StorePage = NoStore;
    fn open_store(&self) -> Result<(NoStore, Channel)> {
        err(Unsupported, "this backend has no xenstore")
    }
}

fn run() -> Result<()> {
    let world = Arc::new(World::default());
    let (a, b) = (world.domain(DomId(1)), world.domain(DomId(2)));

    // Domain 1 grants two pages and offers a port; the refs and port would travel by xenstore.
    let active = Pore::open_active(&a, DomId(2), 2)?;
    let info = active.info();
    let passive = Pore::open_passive(&b, DomId(1), &info.refs, info.port)?;

    // Active -> passive: a length and bytes in page 0, then a notify.
    active.write_bytes(4, b"hello, pore");
    active.store_u32(0, 11, Ordering::Release);
    active.poke()?;
    assert_eq!(
        passive.channel().wait(Duration::from_secs(5))?,
        WaitOutcome::Event
    );
    assert!(
        !passive.channel().try_wait()?,
        "the wait consumed the event"
    );
    let len = passive.load_u32(0, Ordering::Acquire) as usize; // read once, then validated
    assert!(len <= 64, "a length the peer wrote is checked before use");
    let mut got = vec![0; len];
    passive.read_bytes(4, &mut got);
    assert_eq!(got, b"hello, pore");

    // Passive -> active, in page 1, waited for with `select`.
    passive.write_bytes(PAGE_SIZE, b"ack");
    passive.poke()?;
    let mut fired = Vec::new();
    a.select(&[active.channel()], Duration::from_secs(5), &mut fired)?;
    assert_eq!(fired, [0]);
    let mut ack = [0; 3];
    active.read_bytes(PAGE_SIZE, &mut ack);
    assert_eq!(&ack, b"ack");

    // Closing while the peer maps the pages: `Busy`, and the grant is revoked later.
    assert_eq!(active.close().map_err(|e| e.kind()), Err(Busy));
    assert!(passive.poke().is_err_and(|e| e.is_peer_gone()));
    passive.close()?;
    let st = world.lock();
    assert!(st.grants.is_empty() && st.ports.is_empty(), "all released");
    println!(
        "custom_backend: ok ({} bytes one way, {} back)",
        len,
        ack.len()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("custom_backend failed: {e}");
            ExitCode::FAILURE
        }
    }
}
