//! A tiny in-memory loopback "hypervisor" for doc examples and first tests (`test-utils`).
//!
//! Several [`LoopbackDomain`]s share one [`Loopback`]; they grant, map and signal each other with
//! Xen's rules (only the grantee may map a grant; ending access while mapped is `Busy`; only the
//! domain a port was offered to may bind it; notifying a closed peer is `PeerGone`). It maps
//! only a whole grant in page order (anything else is `Unsupported`) and offers no unmap-notify
//! (`Unsupported`; a closed peer shows as `PeerGone` on its port). Everything
//! sits behind one mutex and one condition variable: simple and obviously correct, not fast.
//! The simulated backend (`pore-backend-sim`) is the real model backend.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::SharedAccess as _;
use crate::{
    CoreError, DomId, ErrorKind, EventChannel, Events, GrantRef, GrantedPages, Grants, MappedPages,
    Maps, NoStore, Port, SharedMemory, StoreAccess, UnmapNotify, WaitOutcome, PAGE_SIZE,
};

type Result<T> = core::result::Result<T, CoreError>;

const NO_UNMAP_NOTIFY: CoreError = CoreError::new(
    ErrorKind::Unsupported,
    "the loopback backend has no unmap-notify (a closed peer shows as PeerGone on its port)",
);

/// The loopback hypervisor: create domains on it with [`Loopback::domain`].
#[derive(Clone, Default)]
pub struct Loopback {
    world: Arc<World>,
}

#[derive(Default)]
struct World {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    next_ref: u32,
    grants: HashMap<(DomId, GrantRef), GrantEntry>,
    ports: HashMap<(DomId, Port), PortEntry>,
    next_port: HashMap<DomId, u32>,
    revoke_later: usize,
}

struct GrantEntry {
    block: Arc<PageBlock>,
    page: usize,
    grantee: DomId,
    mappings: usize,
    deferred: bool,
}

struct PortEntry {
    offered_to: DomId,
    remote: Option<(DomId, Port)>,
    pending: bool,
    peer_closed: bool,
}

/// Page-aligned zeroed memory shared by the granter and its mappers.
struct PageBlock {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the block is plain heap memory only accessed atomically through `SharedView`s.
unsafe impl Send for PageBlock {}
// SAFETY: as above.
unsafe impl Sync for PageBlock {}

impl PageBlock {
    fn new(pages: usize) -> Result<Self> {
        let layout = pages
            .checked_mul(PAGE_SIZE)
            .and_then(|len| Layout::from_size_align(len, PAGE_SIZE).ok())
            .ok_or(CoreError::new(
                ErrorKind::InvalidInput,
                "page count too large",
            ))?;
        // SAFETY: `layout` has a non-zero size (pages >= 1 is checked by callers).
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(CoreError::new(
            ErrorKind::ResourceExhausted,
            "allocating loopback pages",
        ))?;
        Ok(PageBlock { ptr, layout })
    }
}

impl Drop for PageBlock {
    fn drop(&mut self) {
        // SAFETY: `ptr` was returned by `alloc_zeroed(layout)` and is freed exactly once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// What a loopback world still holds; all zero once everyone cleaned up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outstanding {
    /// Grant entries not yet ended (including deferred ones).
    pub grants: usize,
    /// Active mappings.
    pub mappings: usize,
    /// Open ports.
    pub ports: usize,
    /// Grants whose revocation was deferred because the peer still mapped them.
    pub revoke_later: usize,
}

impl Loopback {
    /// A fresh world with no domains.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle acting as domain `id`.
    pub fn domain(&self, id: DomId) -> LoopbackDomain {
        LoopbackDomain {
            world: self.world.clone(),
            id,
        }
    }

    /// What is still allocated, for leak checks in tests.
    pub fn outstanding(&self) -> Outstanding {
        let st = self.world.lock();
        Outstanding {
            grants: st.grants.len(),
            mappings: st.grants.values().map(|g| g.mappings).sum(),
            ports: st.ports.len(),
            revoke_later: st.revoke_later,
        }
    }
}

impl World {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps inconsistent (every update is a
        // single insert/remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One domain of a [`Loopback`] world; implements every backend trait.
#[derive(Clone)]
pub struct LoopbackDomain {
    world: Arc<World>,
    id: DomId,
}

impl LoopbackDomain {
    /// This domain's id.
    pub fn id(&self) -> DomId {
        self.id
    }
}

/// Pages granted by a loopback domain.
pub struct LoopbackGrant {
    world: Arc<World>,
    owner: DomId,
    refs: Vec<GrantRef>,
    block: Arc<PageBlock>,
    ended: bool,
}

// SAFETY: the block is stable (heap, never moved) and valid for `refs.len()` pages while the
// `Arc` lives; it is only accessed atomically.
unsafe impl SharedMemory for LoopbackGrant {
    fn as_ptr(&self) -> NonNull<u8> {
        self.block.ptr
    }
    fn len(&self) -> usize {
        self.block.layout.size()
    }
}

impl LoopbackGrant {
    fn try_end(&mut self) -> Result<()> {
        let world = self.world.clone();
        let mut st = world.lock();
        self.end_locked(&mut st)
    }

    /// Ends access with the world locked: the caller may act on a `Busy` under the same lock
    /// (a mapping released in between would otherwise leave the entries deferred for ever).
    fn end_locked(&mut self, st: &mut State) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        let mapped = self.refs.iter().any(|r| {
            st.grants
                .get(&(self.owner, *r))
                .is_some_and(|g| g.mappings > 0)
        });
        if mapped {
            return Err(CoreError::new(
                ErrorKind::Busy,
                "ending access to pages the peer still maps",
            ));
        }
        for r in &self.refs {
            if st
                .grants
                .remove(&(self.owner, *r))
                .is_some_and(|g| g.deferred)
            {
                st.revoke_later -= 1;
            }
        }
        self.ended = true;
        Ok(())
    }
}

impl GrantedPages for LoopbackGrant {
    type Error = CoreError;
    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }
    /// Not offered ([`ErrorKind::Unsupported`]): a loopback peer learns of a close from its
    /// port ([`ErrorKind::PeerGone`]).
    fn set_unmap_notify(&mut self, _notify: UnmapNotify) -> Result<()> {
        Err(NO_UNMAP_NOTIFY)
    }
    fn end_access(mut self) -> Result<()> {
        self.try_end()
    }
}

impl Drop for LoopbackGrant {
    fn drop(&mut self) {
        let world = self.world.clone();
        let mut st = world.lock();
        if self.end_locked(&mut st).is_err() {
            // Deferred (D7): the entries stay until the last mapping goes, then vanish. Still
            // under the lock that saw the mapping, so its release cannot slip in between.
            for r in &self.refs {
                if let Some(g) = st.grants.get_mut(&(self.owner, *r)) {
                    if !g.deferred {
                        g.deferred = true;
                        st.revoke_later += 1;
                    }
                }
            }
        }
    }
}

/// A loopback mapping of a peer's pages.
pub struct LoopbackMapping {
    world: Arc<World>,
    granter: DomId,
    refs: Vec<GrantRef>,
    block: Arc<PageBlock>,
    unmapped: bool,
}

// SAFETY: as for `LoopbackGrant`: the `Arc` keeps the block alive and in place.
unsafe impl SharedMemory for LoopbackMapping {
    fn as_ptr(&self) -> NonNull<u8> {
        self.block.ptr
    }
    fn len(&self) -> usize {
        self.block.layout.size()
    }
}

impl LoopbackMapping {
    fn release(&mut self) {
        if self.unmapped {
            return;
        }
        self.unmapped = true;
        let mut st = self.world.lock();
        for r in &self.refs {
            let key = (self.granter, *r);
            let mut gone = false;
            if let Some(g) = st.grants.get_mut(&key) {
                g.mappings = g.mappings.saturating_sub(1);
                gone = g.deferred && g.mappings == 0;
            }
            if gone {
                st.grants.remove(&key);
                st.revoke_later -= 1;
            }
        }
    }
}

impl MappedPages for LoopbackMapping {
    type Error = CoreError;
    /// Not offered ([`ErrorKind::Unsupported`]), as for [`LoopbackGrant`].
    fn set_unmap_notify(&mut self, _notify: UnmapNotify) -> Result<()> {
        Err(NO_UNMAP_NOTIFY)
    }
    fn unmap(mut self) -> Result<()> {
        self.release();
        Ok(())
    }
}

impl Drop for LoopbackMapping {
    fn drop(&mut self) {
        self.release();
    }
}

/// A loopback event channel end.
pub struct LoopbackChannel {
    world: Arc<World>,
    key: (DomId, Port),
    closed: bool,
}

impl LoopbackChannel {
    fn take_pending(&self, st: &mut State) -> Result<Option<bool>> {
        let e = st.ports.get_mut(&self.key).ok_or(CoreError::new(
            ErrorKind::Closed,
            "waiting on a closed port",
        ))?;
        if e.pending {
            e.pending = false;
            return Ok(Some(true));
        }
        if e.peer_closed {
            return Err(CoreError::new(
                ErrorKind::PeerGone,
                "the peer closed its port",
            ));
        }
        Ok(None)
    }

    fn shut(&mut self) -> Result<()> {
        if self.closed {
            return Err(CoreError::new(ErrorKind::Closed, "closing a port twice"));
        }
        self.closed = true;
        let mut st = self.world.lock();
        if let Some(e) = st.ports.remove(&self.key) {
            if let Some(remote) = e.remote {
                if let Some(r) = st.ports.get_mut(&remote) {
                    r.peer_closed = true;
                }
            }
        }
        self.world.wake.notify_all();
        Ok(())
    }
}

impl EventChannel for LoopbackChannel {
    type Error = CoreError;

    fn port(&self) -> Port {
        self.key.1
    }

    fn notify(&self) -> Result<()> {
        let mut st = self.world.lock();
        let e = st
            .ports
            .get(&self.key)
            .ok_or(CoreError::new(ErrorKind::Closed, "notify on a closed port"))?;
        if e.peer_closed {
            return Err(CoreError::new(
                ErrorKind::PeerGone,
                "the peer closed its port",
            ));
        }
        let remote = e.remote.ok_or(CoreError::new(
            ErrorKind::NotFound,
            "notify on an unbound port",
        ))?;
        if let Some(r) = st.ports.get_mut(&remote) {
            r.pending = true;
        }
        self.world.wake.notify_all();
        Ok(())
    }

    fn try_wait(&self) -> Result<bool> {
        let mut st = self.world.lock();
        Ok(self.take_pending(&mut st)?.unwrap_or(false))
    }

    fn wait(&self, timeout: Duration) -> Result<WaitOutcome> {
        let deadline = Instant::now() + timeout;
        let mut st = self.world.lock();
        loop {
            if self.take_pending(&mut st)?.is_some() {
                return Ok(WaitOutcome::Event);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(WaitOutcome::Timeout);
            }
            st = self
                .world
                .wake
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn close(mut self) -> Result<()> {
        self.shut()
    }
}

impl Drop for LoopbackChannel {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.shut();
        }
    }
}

impl LoopbackDomain {
    fn new_port(&self, st: &mut State, entry: PortEntry) -> Port {
        let next = st.next_port.entry(self.id).or_insert(1);
        let port = Port(*next);
        *next += 1;
        st.ports.insert((self.id, port), entry);
        port
    }

    fn channel(&self, port: Port) -> LoopbackChannel {
        LoopbackChannel {
            world: self.world.clone(),
            key: (self.id, port),
            closed: false,
        }
    }
}

impl Events for LoopbackDomain {
    type Error = CoreError;
    type Channel = LoopbackChannel;

    fn alloc_unbound(&self, remote: DomId) -> Result<LoopbackChannel> {
        let mut st = self.world.lock();
        let port = self.new_port(
            &mut st,
            PortEntry {
                offered_to: remote,
                remote: None,
                pending: false,
                peer_closed: false,
            },
        );
        Ok(self.channel(port))
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<LoopbackChannel> {
        let mut st = self.world.lock();
        match st.ports.get(&(remote, remote_port)) {
            Some(e) if e.offered_to == self.id && e.remote.is_none() => {}
            Some(_) => {
                return Err(CoreError::new(
                    ErrorKind::PermissionDenied,
                    "binding a port not offered to this domain",
                ))
            }
            None => {
                return Err(CoreError::new(
                    ErrorKind::NotFound,
                    "binding a port that does not exist",
                ))
            }
        }
        let port = self.new_port(
            &mut st,
            PortEntry {
                offered_to: remote,
                remote: Some((remote, remote_port)),
                pending: false,
                peer_closed: false,
            },
        );
        if let Some(e) = st.ports.get_mut(&(remote, remote_port)) {
            e.remote = Some((self.id, port));
        }
        Ok(self.channel(port))
    }

    fn select(
        &self,
        channels: &[&LoopbackChannel],
        timeout: Duration,
        fired: &mut Vec<usize>,
    ) -> Result<()> {
        fired.clear();
        let deadline = Instant::now() + timeout;
        let mut st = self.world.lock();
        loop {
            // A channel's error is reported only when none fired: a consumed event is never
            // dropped for another channel's error.
            let mut failed = None;
            for (i, ch) in channels.iter().enumerate() {
                match ch.take_pending(&mut st) {
                    Ok(Some(_)) => fired.push(i),
                    Ok(None) => {}
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            if !fired.is_empty() {
                return Ok(());
            }
            if let Some(e) = failed {
                return Err(e);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            st = self
                .world
                .wake
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Grants for LoopbackDomain {
    type Error = CoreError;
    type Granted = LoopbackGrant;

    fn grant(&self, remote: DomId, pages: usize) -> Result<LoopbackGrant> {
        if pages == 0 {
            return Err(CoreError::new(
                ErrorKind::InvalidInput,
                "granting zero pages",
            ));
        }
        let block = Arc::new(PageBlock::new(pages)?);
        let mut st = self.world.lock();
        let mut refs = Vec::with_capacity(pages);
        for page in 0..pages {
            st.next_ref += 1;
            let r = GrantRef(st.next_ref);
            st.grants.insert(
                (self.id, r),
                GrantEntry {
                    block: block.clone(),
                    page,
                    grantee: remote,
                    mappings: 0,
                    deferred: false,
                },
            );
            refs.push(r);
        }
        Ok(LoopbackGrant {
            world: self.world.clone(),
            owner: self.id,
            refs,
            block,
            ended: false,
        })
    }
}

impl Maps for LoopbackDomain {
    type Error = CoreError;
    type Mapped = LoopbackMapping;

    fn map(&self, remote: DomId, refs: &[GrantRef]) -> Result<LoopbackMapping> {
        let mut st = self.world.lock();
        let mut block: Option<Arc<PageBlock>> = None;
        for (i, r) in refs.iter().enumerate() {
            let g = st
                .grants
                .get(&(remote, *r))
                .filter(|g| !g.deferred)
                .ok_or(CoreError::new(
                    ErrorKind::NotFound,
                    "mapping a grant that does not exist",
                ))?;
            if g.grantee != self.id {
                return Err(CoreError::new(
                    ErrorKind::PermissionDenied,
                    "mapping a grant made to another domain",
                ));
            }
            let first = block.get_or_insert_with(|| g.block.clone());
            if !Arc::ptr_eq(first, &g.block) || g.page != i {
                return Err(CoreError::new(
                    ErrorKind::Unsupported,
                    "loopback maps only one whole grant, in page order",
                ));
            }
        }
        let block = block.ok_or(CoreError::new(
            ErrorKind::InvalidInput,
            "mapping zero pages",
        ))?;
        if block.layout.size() != refs.len() * PAGE_SIZE {
            return Err(CoreError::new(
                ErrorKind::Unsupported,
                "loopback maps only one whole grant, in page order",
            ));
        }
        for r in refs {
            if let Some(g) = st.grants.get_mut(&(remote, *r)) {
                g.mappings += 1;
            }
        }
        Ok(LoopbackMapping {
            world: self.world.clone(),
            granter: remote,
            refs: refs.to_vec(),
            block,
            unmapped: false,
        })
    }
}

impl StoreAccess for LoopbackDomain {
    type StorePage = NoStore;

    fn open_store(&self) -> Result<(NoStore, LoopbackChannel)> {
        Err(CoreError::new(
            ErrorKind::Unsupported,
            "the loopback backend has no xenstore",
        ))
    }
}

impl core::fmt::Debug for LoopbackChannel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LoopbackChannel")
            .field("domain", &self.key.0)
            .field("port", &self.key.1)
            .finish()
    }
}

impl core::fmt::Debug for LoopbackMapping {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LoopbackMapping")
            .field("granter", &self.granter)
            .field("refs", &self.refs)
            .finish()
    }
}

impl core::fmt::Debug for LoopbackGrant {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LoopbackGrant")
            .field("owner", &self.owner)
            .field("refs", &self.refs)
            .finish()
    }
}

impl core::fmt::Debug for LoopbackDomain {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LoopbackDomain")
            .field("id", &self.id)
            .finish()
    }
}

/// A region of loopback shared memory with guard bytes of a known pattern on each side: hand
/// [`GuardedRegion::view`] to code that faces a hostile peer (a ring, a decoder), then
/// [`GuardedRegion::assert_guards`] proves it never wrote outside the region.
///
/// ```
/// use core::sync::atomic::Ordering;
/// use pore_core::loopback::GuardedRegion;
/// use pore_core::SharedAccess;
///
/// let region = GuardedRegion::new(100);
/// region.view().write_bytes(0, &[1; 100]);
/// region.assert_guards(); // writes inside the region leave the guards alone
/// ```
pub struct GuardedRegion {
    grant: LoopbackGrant,
    len: usize,
}

impl GuardedRegion {
    /// Guard bytes before and after the region.
    pub const GUARD: usize = 512;
    const PATTERN: u8 = 0x5a;

    /// A zeroed region of `len` bytes between two guards.
    ///
    /// # Panics
    ///
    /// If the loopback allocation fails (a test helper: out of memory ends the test).
    pub fn new(len: usize) -> Self {
        let pages = (len + 2 * Self::GUARD).div_ceil(PAGE_SIZE);
        let grant = Loopback::new()
            .domain(DomId(1))
            .grant(DomId(2), pages.max(1))
            .expect("loopback grant");
        let region = GuardedRegion { grant, len };
        let all = region.grant.view();
        for i in (0..Self::GUARD).chain(Self::GUARD + len..all.len()) {
            all.store_u8(i, Self::PATTERN, core::sync::atomic::Ordering::Relaxed);
        }
        region
    }

    /// The region between the guards.
    pub fn view(&self) -> crate::SharedView<'_> {
        self.grant
            .view()
            .subview(Self::GUARD, self.len)
            .expect("the region fits its pages")
    }

    /// The offset of the first guard byte that changed, if any.
    pub fn damaged_guard(&self) -> Option<usize> {
        let all = self.grant.view();
        (0..Self::GUARD)
            .chain(Self::GUARD + self.len..all.len())
            .find(|&i| all.load_u8(i, core::sync::atomic::Ordering::Relaxed) != Self::PATTERN)
    }

    /// Panics if a guard byte changed (something wrote outside the region).
    pub fn assert_guards(&self) {
        if let Some(i) = self.damaged_guard() {
            panic!("write outside the region: guard byte {i} changed");
        }
    }
}

impl core::fmt::Debug for GuardedRegion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GuardedRegion")
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, Pore, SharedAccess};

    #[test]
    fn guarded_region_detects_writes_outside() {
        let region = GuardedRegion::new(64);
        region.view().write_bytes(0, &[0xff; 64]);
        assert_eq!(region.damaged_guard(), None);
        // Write just past the region through the whole grant.
        region.grant.view().store_u8(
            GuardedRegion::GUARD + 64,
            0,
            core::sync::atomic::Ordering::Relaxed,
        );
        assert_eq!(region.damaged_guard(), Some(GuardedRegion::GUARD + 64));
    }
    use core::sync::atomic::Ordering;

    fn pair() -> (Loopback, LoopbackDomain, LoopbackDomain) {
        let xen = Loopback::new();
        let (a, b) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
        (xen, a, b)
    }

    #[test]
    fn pore_round_trip_both_ways_and_clean_up() {
        let (xen, a, b) = pair();
        let active = Pore::open_active(&a, DomId(2), 3).unwrap();
        let info = active.info();
        assert_eq!(info.refs.len(), 3);
        let passive = Pore::open_passive(&b, DomId(1), &info.refs, info.port).unwrap();
        assert_eq!(passive.len(), 3 * PAGE_SIZE);
        passive.write_bytes(PAGE_SIZE * 2 + 5, b"hello");
        passive.notify().unwrap();
        assert_eq!(
            active.channel().wait(Duration::from_secs(1)).unwrap(),
            WaitOutcome::Event
        );
        let mut got = [0u8; 5];
        active.read_bytes(PAGE_SIZE * 2 + 5, &mut got);
        assert_eq!(&got, b"hello");
        active.store_u32(0, 7, Ordering::Release);
        active.notify().unwrap();
        assert!(passive.channel().try_wait().unwrap());
        assert!(!passive.channel().try_wait().unwrap());
        assert_eq!(passive.load_u32(0, Ordering::Acquire), 7);
        passive.close().unwrap();
        active.close().unwrap();
        assert_eq!(xen.outstanding(), Outstanding::default());
    }

    #[test]
    fn xen_rules_are_enforced() {
        let xen = Loopback::new();
        let (a, b, c) = (
            xen.domain(DomId(1)),
            xen.domain(DomId(2)),
            xen.domain(DomId(3)),
        );
        let active = Pore::open_active(&a, DomId(2), 1).unwrap();
        let info = active.info();
        // A third domain may neither map nor bind what was offered to domain 2.
        let err = Pore::open_passive(&c, DomId(1), &info.refs, info.port).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert_eq!(
            c.bind_interdomain(DomId(1), info.port).unwrap_err().kind(),
            ErrorKind::PermissionDenied
        );
        // Nonexistent refs and ports.
        assert_eq!(
            b.map(DomId(1), &[GrantRef(999)]).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            b.bind_interdomain(DomId(1), Port(999)).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            Pore::open_active(&a, DomId(2), 0).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        drop(active);
        assert_eq!(xen.outstanding(), Outstanding::default());
    }

    #[test]
    fn ending_access_while_mapped_is_busy_then_deferred() {
        let (xen, a, b) = pair();
        let active = Pore::open_active(&a, DomId(2), 2).unwrap();
        let info = active.info();
        let passive = Pore::open_passive(&b, DomId(1), &info.refs, info.port).unwrap();
        let err = active.close().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy);
        assert!(err.is_retryable());
        assert_eq!(xen.outstanding().revoke_later, 2);
        // The peer still sees its memory; notifying the closed peer reports it gone.
        passive.write_bytes(0, b"still mapped");
        assert!(passive.notify().unwrap_err().is_peer_gone());
        drop(passive);
        assert_eq!(xen.outstanding(), Outstanding::default());
    }

    #[test]
    fn select_reports_which_fired_and_times_out() {
        let (_xen, a, b) = pair();
        let p1 = Pore::open_active(&a, DomId(2), 1).unwrap();
        let p2 = Pore::open_active(&a, DomId(2), 1).unwrap();
        let q1 = Pore::open_passive(&b, DomId(1), &p1.info().refs, p1.info().port).unwrap();
        let q2 = Pore::open_passive(&b, DomId(1), &p2.info().refs, p2.info().port).unwrap();
        let mut fired = Vec::new();
        a.select(
            &[p1.channel(), p2.channel()],
            Duration::from_millis(10),
            &mut fired,
        )
        .unwrap();
        assert!(fired.is_empty());
        q2.notify().unwrap();
        a.select(
            &[p1.channel(), p2.channel()],
            Duration::from_secs(1),
            &mut fired,
        )
        .unwrap();
        assert_eq!(fired, vec![1]);
        let waiter = std::thread::spawn(move || {
            let mut fired = Vec::new();
            a.select(
                &[p1.channel(), p2.channel()],
                Duration::from_secs(5),
                &mut fired,
            )
            .unwrap();
            fired
        });
        std::thread::sleep(Duration::from_millis(20));
        q1.notify().unwrap();
        assert_eq!(waiter.join().unwrap(), vec![0]);
    }

    #[test]
    fn wait_on_a_port_whose_peer_closed_reports_peer_gone() {
        let (_xen, a, b) = pair();
        let p = Pore::open_active(&a, DomId(2), 1).unwrap();
        let q = Pore::open_passive(&b, DomId(1), &p.info().refs, p.info().port).unwrap();
        q.close().unwrap();
        let err = p.channel().wait(Duration::from_secs(1)).unwrap_err();
        assert!(err.is_peer_gone());
    }

    #[test]
    fn select_reports_a_fired_channel_before_another_channels_error() {
        let (_xen, a, b) = pair();
        let p1 = Pore::open_active(&a, DomId(2), 1).unwrap();
        let p2 = Pore::open_active(&a, DomId(2), 1).unwrap();
        let q1 = Pore::open_passive(&b, DomId(1), &p1.info().refs, p1.info().port).unwrap();
        let q2 = Pore::open_passive(&b, DomId(1), &p2.info().refs, p2.info().port).unwrap();
        q2.notify().unwrap();
        q1.close().unwrap();
        let mut fired = Vec::new();
        let channels = [p1.channel(), p2.channel()];
        a.select(&channels, Duration::from_secs(1), &mut fired)
            .unwrap();
        assert_eq!(
            fired,
            vec![1],
            "the event of p2 is not lost to p1's closed peer"
        );
        let err = a
            .select(&channels, Duration::from_secs(1), &mut fired)
            .unwrap_err();
        assert!(err.is_peer_gone());
        assert!(fired.is_empty());
    }

    #[test]
    fn unmap_notify_is_refused_not_ignored() {
        let (_xen, a, b) = pair();
        let mut p = Pore::open_active(&a, DomId(2), 1).unwrap();
        let mut q = Pore::open_passive(&b, DomId(1), &p.info().refs, p.info().port).unwrap();
        let notify = UnmapNotify {
            clear_byte: Some(0),
            send_event: Some(p.info().port),
        };
        assert_eq!(
            p.set_unmap_notify(notify).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
        assert_eq!(
            q.set_unmap_notify(notify).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
    }

    /// The forwarding impls: one backend shared by reference and by `Arc` (across a thread).
    #[test]
    fn a_backend_is_shared_by_reference_and_by_arc() {
        fn is_backend<B: crate::Backend>(_: &B) {}
        let (xen, a, b) = pair();
        let by_ref: &LoopbackDomain = &a;
        is_backend(&by_ref);
        let shared = Arc::new(b);
        is_backend(&shared);

        let active: Pore<&LoopbackDomain> = Pore::open_active(&by_ref, DomId(2), 2).unwrap();
        let info = active.info();
        let remote = Arc::clone(&shared);
        let passive = std::thread::spawn(move || {
            let passive: Pore<Arc<LoopbackDomain>> =
                Pore::open_passive(&remote, DomId(1), &info.refs, info.port).unwrap();
            passive.write_bytes(PAGE_SIZE + 1, b"via arc");
            passive.notify().unwrap();
            passive
        })
        .join()
        .unwrap();
        assert_eq!(
            active.channel().wait(Duration::from_secs(5)).unwrap(),
            WaitOutcome::Event
        );
        let mut got = [0u8; 7];
        active.read_bytes(PAGE_SIZE + 1, &mut got);
        assert_eq!(&got, b"via arc");

        // `select` and `open_store` forward too.
        let mut fired = Vec::new();
        active.notify().unwrap();
        shared
            .select(&[passive.channel()], Duration::from_secs(5), &mut fired)
            .unwrap();
        assert_eq!(fired, vec![0]);
        assert_eq!(
            Pore::open_store(&shared).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
        // Granting and mapping directly through the shared handles.
        let g = Grants::grant(&by_ref, DomId(2), 1).unwrap();
        let m = Maps::map(&shared, DomId(1), g.refs()).unwrap();
        m.view().store_u32(8, 5, Ordering::Release);
        assert_eq!(g.view().load_u32(8, Ordering::Acquire), 5);
        drop((m, g));

        passive.close().unwrap();
        active.close().unwrap();
        assert_eq!(xen.outstanding(), Outstanding::default());
    }
}
