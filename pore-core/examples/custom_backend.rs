//! A complete pore backend in one file, to copy as the start of yours.
//!
//! `MemXen` is an in-memory "hypervisor": domains of one process share pages and event channels
//! through a mutex-guarded `World`. It has pore-core's four capabilities (`Events`, `Grants`,
//! `Maps`, `StoreAccess`), written to the checklist of "Writing a backend" in pore-core's docs;
//! `main` opens a pore between two domains and exchanges events and bytes, exiting non-zero if a
//! check fails. Its error type is pore-core's ready-made `CoreError`; a backend with richer
//! errors brings its own type implementing `pore_core::Error` (see that trait's docs).

use std::collections::HashMap;
use std::process::ExitCode;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};
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

/// The pages of one grant, with its consecutive refs.
struct Grant {
    owner: DomId,
    to: DomId,
    refs: Vec<GrantRef>,
    pages: Box<[Page]>,
    maps: AtomicUsize,
}

/// One handle type for both sides of a grant: the granter's, and each mapping of it.
pub struct Pages {
    grant: Arc<Grant>,
    world: Arc<World>,
    mapping: bool,
}

// SAFETY: the pages are a heap block that the `Arc` keeps alive and in place while `self`
// lives (moving the handle moves only the pointer); it is valid for `len()` bytes, made of
// atomics only, and nothing takes a reference to plain data in it. `Page` is 4096-aligned.
unsafe impl SharedMemory for Pages {
    fn as_ptr(&self) -> NonNull<u8> {
        NonNull::from(&*self.grant.pages).cast()
    }
    fn len(&self) -> usize {
        self.grant.pages.len() * PAGE_SIZE
    }
}

/// The world the domains live in: grant and port tables, and a bell for waiters.
#[derive(Default)]
pub struct World {
    state: Mutex<State>,
    bell: Condvar,
}

#[derive(Default)]
struct State {
    next: u32,
    grants: HashMap<(DomId, GrantRef), Arc<Grant>>,
    ports: HashMap<(DomId, Port), PortState>,
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
        let mut failed = Ok(());
        for (i, ch) in chans.iter().enumerate() {
            match ch.take(&mut st) {
                Ok(true) => fired.push(i),
                Ok(false) => {}
                Err(e) => failed = failed.and(Err(e)),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if !fired.is_empty() || failed.is_err() || left.is_zero() {
            return if fired.is_empty() { failed } else { Ok(()) };
        }
        let slept = world.bell.wait_timeout(st, left);
        st = slept.unwrap_or_else(|p| p.into_inner()).0;
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
        let (key, pending, peer_closed) = ((self.id, Port(st.next)), false, false);
        st.ports.insert(
            key,
            PortState {
                to,
                peer,
                pending,
                peer_closed,
            },
        );
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

impl Pages {
    /// Ends access (idempotent): `Busy` while the peer maps the pages, unless `defer`.
    fn end(&mut self, defer: bool) -> Result<()> {
        let mut st = self.world.lock();
        if self.grant.maps.load(SeqCst) > 0 && !defer {
            return err(Busy, "the peer still maps the pages");
        }
        // The refs go now; pages the peer still maps live on in its mapping's `Arc` until the
        // last unmap (this backend's revoke-later list): never freed under the peer.
        for r in &self.grant.refs {
            st.grants.remove(&(self.grant.owner, *r));
        }
        Ok(())
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        if self.mapping {
            self.grant.maps.fetch_sub(1, SeqCst);
        } else {
            let _ = self.end(true);
        }
    }
}

const NO_NOTIFY: &str = "no unmap-notify in memory (a closed peer's port reports PeerGone)";

impl GrantedPages for Pages {
    type Error = CoreError;
    fn refs(&self) -> &[GrantRef] {
        &self.grant.refs
    }
    fn set_unmap_notify(&mut self, _: UnmapNotify) -> Result<()> {
        err(Unsupported, NO_NOTIFY) // refused, never accepted and ignored
    }
    fn end_access(mut self) -> Result<()> {
        self.end(false) // on `Busy`, dropping `self` defers the pages
    }
}

impl MappedPages for Pages {
    type Error = CoreError;
    fn set_unmap_notify(&mut self, _: UnmapNotify) -> Result<()> {
        err(Unsupported, NO_NOTIFY)
    }
    fn unmap(self) -> Result<()> {
        Ok(()) // `Drop` unmaps; nothing here can fail
    }
}

impl Grants for MemXen {
    type Error = CoreError;
    type Granted = Pages;
    fn grant(&self, to: DomId, pages: usize) -> Result<Pages> {
        let n = u32::try_from(pages).ok().filter(|n| (1..=1024).contains(n));
        let Some(n) = n else {
            return err(InvalidInput, "granting no pages or too many");
        };
        // Fresh zeroed pages: recycled ones would show the peer their old contents.
        let zeroed = |_| Page([const { AtomicU64::new(0) }; PAGE_SIZE / 8]);
        let pages = (0..n).map(zeroed).collect();
        let mut st = self.world.lock();
        let refs = (st.next + 1..=st.next + n).map(GrantRef).collect();
        st.next += n;
        let (owner, maps) = (self.id, AtomicUsize::new(0));
        let grant = Arc::new(Grant {
            owner,
            to,
            refs,
            pages,
            maps,
        });
        for r in &grant.refs {
            st.grants.insert((owner, *r), grant.clone());
        }
        let world = self.world.clone();
        Ok(Pages {
            grant,
            world,
            mapping: false,
        })
    }
}

impl Maps for MemXen {
    type Error = CoreError;
    type Mapped = Pages;
    fn map(&self, from: DomId, refs: &[GrantRef]) -> Result<Pages> {
        let st = self.world.lock();
        let Some(first) = refs.first() else {
            return err(InvalidInput, "mapping no pages");
        };
        let Some(grant) = st.grants.get(&(from, *first)) else {
            return err(NotFound, "mapping a grant that does not exist or was ended");
        };
        if grant.to != self.id {
            return err(PermissionDenied, "mapping a grant made to another domain");
        }
        // One process cannot rearrange its memory: only a whole grant in page order is
        // contiguous. Anything else is refused, never mapped in part.
        if refs != grant.refs {
            return err(Unsupported, "maps only a whole grant, in page order");
        }
        grant.maps.fetch_add(1, SeqCst);
        let (grant, world) = (grant.clone(), self.world.clone());
        Ok(Pages {
            grant,
            world,
            mapping: true,
        })
    }
}

impl StoreAccess for MemXen {
    type StorePage = NoStore;
    fn open_store(&self) -> Result<(NoStore, Channel)> {
        err(Unsupported, "this backend has no xenstore")
    }
}

const SECOND: Duration = Duration::from_secs(1);

fn run() -> Result<()> {
    let world = Arc::new(World::default());
    let domain = |id| MemXen {
        world: world.clone(),
        id,
    };
    let (a, b) = (domain(DomId(1)), domain(DomId(2)));

    // Domain 1 grants two pages and offers a port; the refs and port would travel by xenstore.
    let active = Pore::open_active(&a, DomId(2), 2)?;
    let info = active.info();
    let passive = Pore::open_passive(&b, DomId(1), &info.refs, info.port)?;

    // Active to passive: a length and bytes in page 0, then a notify.
    active.write_bytes(4, b"hello, pore");
    active.store_u32(0, 11, Release);
    active.notify()?;
    assert_eq!(passive.channel().wait(SECOND)?, WaitOutcome::Event);
    assert!(!passive.channel().try_wait()?, "the wait consumed it");
    let len = passive.load_u32(0, Acquire) as usize; // read once, then validated
    assert!(len <= 64, "a length the peer wrote is checked before use");
    let mut got = vec![0; len];
    passive.read_bytes(4, &mut got);
    assert_eq!(got, b"hello, pore");

    // Passive to active, in page 1, waited for with `select`.
    passive.write_bytes(PAGE_SIZE, b"ack");
    passive.notify()?;
    let mut fired = Vec::new();
    a.select(&[active.channel()], SECOND, &mut fired)?;
    assert_eq!(fired, [0]);
    let mut ack = [0; 3];
    active.read_bytes(PAGE_SIZE, &mut ack);
    assert_eq!(&ack, b"ack");

    // Closing while the peer maps the pages: `Busy`, and the pages are revoked later.
    assert_eq!(active.close().map_err(|e| e.kind()), Err(Busy));
    assert!(passive.notify().is_err_and(|e| e.is_peer_gone()));
    passive.write_bytes(8, b"still mapped"); // never freed under the peer
    passive.close()?;
    let st = world.lock();
    assert!(st.grants.is_empty() && st.ports.is_empty(), "all released");
    println!("custom_backend: ok");
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
