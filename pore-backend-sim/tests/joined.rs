//! Several contexts of one domain (D8): a handle that joined a live domain holds its grants,
//! mappings and ports as its own, as a second process of a real guest does through its own
//! gntdev, gntalloc and evtchn files. Its end releases only those, fires its unmap
//! notifications, and leaves the domain, its other contexts and its xenstore nodes alone.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pore_backend_sim::{Hypervisor, Outstanding, SimDomain, StoreLink, StoreService};
use pore_core::{
    DomId, Error, ErrorKind, EventChannel, GrantedPages, Grants, Pore, SharedAccess, SharedMemory,
    StoreAccess, UnmapNotify, WaitOutcome, PAGE_SIZE,
};

const SEC: Duration = Duration::from_secs(5);
/// A live byte, cleared by unmap-notify when its holder goes away.
const LIVE: usize = 64;

/// Records which domains the toolstack introduced and released (a released domain loses its
/// xenstore nodes in a real store service).
#[derive(Default)]
struct RecordingStore {
    introduced: Mutex<Vec<DomId>>,
    released: Mutex<Vec<DomId>>,
}

impl StoreService for RecordingStore {
    fn domain_introduced(&self, link: StoreLink) {
        self.introduced.lock().unwrap().push(link.domid);
    }
    fn domain_released(&self, domid: DomId) {
        self.released.lock().unwrap().push(domid);
    }
}

fn counts(o: Outstanding) -> (usize, usize, usize, usize) {
    (o.grants, o.mappings, o.ports, o.revoke_later)
}

fn live_notify(pore: &Pore<SimDomain>) -> UnmapNotify {
    UnmapNotify {
        clear_byte: Some(LIVE),
        send_event: Some(pore.info().port),
    }
}

#[test]
fn a_dropped_joined_handle_releases_exactly_its_own_resources() {
    let hv = Hypervisor::new().unwrap();
    let store = Arc::new(RecordingStore::default());
    hv.set_store_service(store.clone());
    let a = hv.create_domain("a").unwrap();
    let b = hv.create_domain("b").unwrap();
    let a2 = hv.join_domain(a.id()).unwrap();
    assert_eq!(a2.id(), a.id());
    assert!(a2.is_joined() && !a.is_joined());
    assert_eq!(hv.joined_contexts(a.id()), 1);
    assert_eq!(*store.introduced.lock().unwrap(), vec![a.id(), b.id()]);

    // The creator context of `a`: a pore granted to `b`.
    let ax = Pore::open_active(&a, b.id(), 2).unwrap();
    let bx = Pore::open_passive(&b, a.id(), &ax.info().refs, ax.info().port).unwrap();
    let creator_only = hv.outstanding_of(a.id());
    assert_eq!(counts(creator_only), (2, 0, 1, 0));

    // The joined context: pages granted to `b` (gntalloc notify) and pages of `b` it maps
    // (gntdev notify), each with a live byte and an event armed.
    let mut ay = Pore::open_active(&a2, b.id(), 3).unwrap();
    ay.store_u8(LIVE, 1, Ordering::Release);
    ay.set_unmap_notify(live_notify(&ay)).unwrap();
    let by = Pore::open_passive(&b, a.id(), &ay.info().refs, ay.info().port).unwrap();
    let bz = Pore::open_active(&b, a.id(), 1).unwrap();
    let mut az = Pore::open_passive(&a2, b.id(), &bz.info().refs, bz.info().port).unwrap();
    az.store_u8(LIVE, 1, Ordering::Release);
    az.set_unmap_notify(live_notify(&az)).unwrap();
    assert_eq!(counts(hv.outstanding_of(a.id())), (2 + 3, 1, 1 + 2, 0));
    assert_eq!(by.load_u8(LIVE, Ordering::Acquire), 1);
    assert_eq!(bz.load_u8(LIVE, Ordering::Acquire), 1);

    // The joined handle goes while its pores are open: as its process dying would.
    drop(a2);
    assert!(hv.is_alive(a.id()));
    assert_eq!(hv.joined_contexts(a.id()), 0);
    // Both unmap notifications fired: bytes cleared, an event before the port closed.
    for peer in [&by, &bz] {
        assert_eq!(peer.load_u8(LIVE, Ordering::Acquire), 0);
        assert_eq!(peer.channel().wait(SEC).unwrap(), WaitOutcome::Event);
        assert!(peer.channel().wait(SEC).unwrap_err().is_peer_gone());
        assert!(peer.notify().unwrap_err().is_peer_gone());
    }
    // What `b` still maps of the joined context's grants waits on the revoke-later list; the
    // rest of the joined context is gone, the creator's pore untouched.
    assert_eq!(counts(hv.outstanding_of(a.id())), (2 + 3, 0, 1, 3));
    by.close().unwrap();
    assert_eq!(hv.outstanding_of(a.id()), creator_only);
    // The joined handles' pores fail as closed now; dropping them is harmless.
    assert_eq!(ay.notify().unwrap_err().kind(), ErrorKind::Closed);
    drop((ay, az));
    assert_eq!(hv.outstanding_of(a.id()), creator_only);

    // The creator's pore still works both ways.
    ax.store_u32(0, 7, Ordering::Release);
    ax.notify().unwrap();
    assert_eq!(bx.channel().wait(SEC).unwrap(), WaitOutcome::Event);
    assert_eq!(bx.load_u32(0, Ordering::Acquire), 7);
    bx.notify().unwrap();
    assert_eq!(ax.channel().wait(SEC).unwrap(), WaitOutcome::Event);
    // The domain was never released to the store service (its xenstore nodes stay).
    assert!(store.released.lock().unwrap().is_empty());

    bz.close().unwrap();
    bx.close().unwrap();
    ax.close().unwrap();
    hv.assert_cleaned_up();
    let id = a.id();
    drop(a);
    assert_eq!(*store.released.lock().unwrap(), vec![id]);
}

#[test]
fn the_creator_dying_takes_its_joined_contexts_with_the_domain() {
    let hv = Hypervisor::new().unwrap();
    let (a, b) = (
        hv.create_domain("a").unwrap(),
        hv.create_domain("b").unwrap(),
    );
    let a2 = hv.join_domain(a.id()).unwrap();
    let mut g = a2.grant(b.id(), 2).unwrap();
    g.set_unmap_notify(UnmapNotify {
        clear_byte: Some(PAGE_SIZE + 3),
        send_event: None,
    })
    .unwrap();
    g.view().store_u8(PAGE_SIZE + 3, 1, Ordering::Release);
    let ch = pore_core::Events::alloc_unbound(&a2, b.id()).unwrap();
    let ours = Pore::open_active(&a, b.id(), 1).unwrap();
    assert_eq!(counts(hv.outstanding_of(a.id())), (3, 0, 2, 0));
    let id = a.id();
    drop(a);
    assert!(!hv.is_alive(id));
    assert_eq!(hv.joined_contexts(id), 0);
    assert_eq!(g.view().load_u8(PAGE_SIZE + 3, Ordering::Acquire), 0);
    assert_eq!(hv.outstanding_of(id), Outstanding::default());
    // The joined handle lost its domain: everything it tries is refused as closed.
    assert_eq!(a2.grant(b.id(), 1).unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(ch.notify().unwrap_err().kind(), ErrorKind::Closed);
    drop((g, ch, ours, a2));
    hv.assert_cleaned_up();
    // A domain created later (even with the same domid) is not reached through the old handle.
    assert_eq!(hv.joined_contexts(id), 0);
}

#[test]
fn joining_needs_a_live_domain_other_than_dom0() {
    let hv = Hypervisor::start_unexported().unwrap();
    let a = hv.create_domain("a").unwrap();
    assert_eq!(
        hv.join_domain(DomId(77)).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        hv.join_domain(DomId::DOM0).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    // The same rules through the broker, and a join there is a context of the domain too.
    let path = hv.socket_path().unwrap().to_path_buf();
    assert_eq!(
        SimDomain::join_to(&path, DomId(77)).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        SimDomain::join_to(&path, DomId::DOM0).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    let remote = SimDomain::join_to(&path, a.id()).unwrap();
    assert_eq!(remote.id(), a.id());
    assert!(remote.is_joined());
    assert_eq!(hv.joined_contexts(a.id()), 1);
    // The store ring has one driver, the domain's creator: a second would corrupt it.
    assert_eq!(
        StoreAccess::open_store(&remote).unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    assert!(StoreAccess::open_store(&a).is_ok());
    let g = remote.grant(DomId::DOM0, 4).unwrap();
    assert_eq!(hv.outstanding_of(a.id()).grants, 4);
    drop(remote);
    // The broker notices the closed connection and releases the context's grant.
    let deadline = std::time::Instant::now() + SEC;
    while hv.joined_contexts(a.id()) != 0 {
        assert!(std::time::Instant::now() < deadline, "the join never ended");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(hv.is_alive(a.id()));
    let left = hv.outstanding_of(a.id());
    assert_eq!((left.domains, counts(left)), (1, (0, 0, 0, 0)));
    drop(g);
    hv.assert_cleaned_up();
}
