//! Guest rings served by the server's event loop (D25): each guest's link carries a
//! readiness handle, here one socket pair for every guest (as one event device is for a
//! daemon's ports), rung by the guests' channel after each notification. Checks that such
//! guests get no thread of their own, answer requests, that a hostile guest and one that
//! never reads its replies are cut off or held back without touching the others, and that
//! release and shutdown end a guest's link.
//!
//! Every guest of this file is served by the loop: the thread counts below count the
//! per-guest threads of every server of the test binary.
#![cfg(feature = "std")]

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pore_core::loopback::{Loopback, LoopbackDomain};
use pore_core::{
    CoreError, DomId, Error as _, EventChannel, Events, Maps, Pore, Port, SharedAccess, WaitOutcome,
};
use pore_ring::xenstore::{
    ERROR, REQ, REQ_CONS, REQ_PROD, RSP_PROD, XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX,
    XENSTORE_RING_SIZE,
};
use pore_xenstore::server::{Config, GuestLink, GuestReadiness, Server};
use pore_xenstore::transport::RingTransport;
use pore_xenstore::{Client, Request};

const WAIT: Duration = Duration::from_secs(10);

/// One readiness handle for every guest of a test: a socket pair, rung by the guests'
/// channels.
struct Ready {
    tx: UnixStream,
    rx: UnixStream,
}

impl Ready {
    fn new() -> Arc<Self> {
        let (tx, rx) = UnixStream::pair().unwrap();
        tx.set_nonblocking(true).unwrap();
        rx.set_nonblocking(true).unwrap();
        Arc::new(Ready { tx, rx })
    }

    /// Makes the descriptor readable (a full pair is readable already).
    fn ring(&self) {
        let _ = (&self.tx).write(&[1]);
    }
}

impl GuestReadiness for Ready {
    fn fd(&self) -> BorrowedFd<'_> {
        self.rx.as_fd()
    }
    fn acknowledge(&self) {
        let mut b = [0u8; 256];
        while matches!((&self.rx).read(&mut b), Ok(n) if n > 0) {}
    }
}

/// The guest's channel: its pore's, ringing the server's readiness after each notification.
struct Ringing {
    pore: Arc<Pore<LoopbackDomain>>,
    ready: Arc<Ready>,
}

impl EventChannel for Ringing {
    type Error = CoreError;
    fn port(&self) -> Port {
        self.pore.channel().port()
    }
    fn notify(&self) -> Result<(), CoreError> {
        self.pore.channel().notify()?;
        self.ready.ring();
        Ok(())
    }
    fn try_wait(&self) -> Result<bool, CoreError> {
        self.pore.channel().try_wait()
    }
    fn wait(&self, timeout: Duration) -> Result<WaitOutcome, CoreError> {
        self.pore.channel().wait(timeout)
    }
    fn close(self) -> Result<(), CoreError> {
        Ok(())
    }
}

/// Gives guest `id` a store page and channel and introduces it with `ready` as its link's
/// readiness; returns the guest's side of the page.
fn introduce(
    xen: &Loopback,
    server: &Server,
    ready: &Arc<Ready>,
    id: u16,
    name: &str,
) -> Arc<Pore<LoopbackDomain>> {
    let (dom0, g) = (xen.domain(DomId(0)), xen.domain(DomId(id)));
    let page = Pore::open_active(&g, DomId(0), 1).unwrap();
    let info = page.info();
    let mapping = dom0.map(DomId(id), &info.refs).unwrap();
    let channel = dom0.bind_interdomain(DomId(id), info.port).unwrap();
    let link = GuestLink::from_pore(mapping, channel)
        .unwrap()
        .with_readiness(ready.clone());
    server.introduce_domain(DomId(id), name, link).unwrap();
    Arc::new(page)
}

fn client(page: &Arc<Pore<LoopbackDomain>>, ready: &Arc<Ready>) -> Client {
    let channel = Ringing {
        pore: page.clone(),
        ready: ready.clone(),
    };
    // A long poll interval: the guest relies on the server's notifications.
    let transport = RingTransport::new(page.clone(), channel).with_poll_interval(WAIT);
    let config = pore_xenstore::Config {
        timeout: WAIT,
        ..pore_xenstore::Config::default()
    };
    Client::with_transport(Box::new(transport), config).unwrap()
}

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with(prefix))
        .count()
}

/// Guest side: writes what fits of `bytes` into the request ring; returns how much.
fn push(page: &Pore<LoopbackDomain>, bytes: &[u8]) -> usize {
    let cons = page.load_u32(REQ_CONS, Ordering::Acquire);
    let prod = page.load_u32(REQ_PROD, Ordering::Relaxed);
    let free = XENSTORE_RING_SIZE - prod.wrapping_sub(cons) as usize;
    let n = free.min(bytes.len());
    for (i, b) in bytes[..n].iter().enumerate() {
        let at = (prod as usize + i) % XENSTORE_RING_SIZE;
        page.write_bytes(REQ + at, std::slice::from_ref(b));
    }
    page.store_u32(REQ_PROD, prod.wrapping_add(n as u32), Ordering::Release);
    n
}

/// Waits (bounded) until `f` holds.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn guests_are_served_by_the_loop_without_a_thread_each() {
    let server = Server::new(Config::default(), None);
    let xen = Loopback::new();
    let ready = Ready::new();
    let guests: Vec<_> = (1..=200u16)
        .map(|id| introduce(&xen, &server, &ready, id, &format!("g{id}")))
        .collect();
    assert_eq!(threads_named("xsd-dom"), 0, "a thread per guest");
    // Every guest answers, interleaved: each writes, then each reads back.
    let clients: Vec<Client> = guests.iter().map(|g| client(g, &ready)).collect();
    for (i, c) in clients.iter().enumerate() {
        c.write("data/k", format!("v{i}").as_bytes()).unwrap();
    }
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(c.read("data/k").unwrap(), format!("v{i}").as_bytes());
        assert_eq!(c.read("name").unwrap(), format!("g{}", i + 1).as_bytes());
    }
    // A watch fired by another guest's write reaches its guest.
    let perms = ["n1".parse().unwrap(), "b2".parse().unwrap()];
    clients[0].set_perms("data/k", &perms).unwrap();
    let w = clients[0].watch("data/k").unwrap();
    w.next_event(WAIT).unwrap();
    clients[1].write("/local/domain/1/data/k", b"new").unwrap();
    assert_eq!(w.next_event(WAIT).unwrap().path, "data/k");
    assert_eq!(threads_named("xsd-dom"), 0, "a thread per guest");
    drop(w);
    drop(clients);
    server.shutdown();
}

#[test]
fn a_hostile_guest_is_cut_off_alone() {
    let server = Server::new(Config::default(), None);
    let xen = Loopback::new();
    let ready = Ready::new();
    let idx = introduce(&xen, &server, &ready, 7, "bad-index");
    let big = introduce(&xen, &server, &ready, 9, "too-big");
    let good_page = introduce(&xen, &server, &ready, 8, "good");
    let good = client(&good_page, &ready);
    good.write("data/k", b"1").unwrap();
    // One claims 5000 bytes of requests in a 1024-byte ring.
    idx.store_u32(REQ_PROD, 5000, Ordering::Release);
    idx.notify().unwrap();
    ready.ring();
    // The other announces a 5000-byte payload.
    let mut hdr = Vec::new();
    for v in [2u32, 1, 0, 5000] {
        hdr.extend_from_slice(&v.to_le_bytes());
    }
    assert_eq!(push(&big, &hdr), 16);
    big.notify().unwrap();
    ready.ring();
    wait_until("the server marks both pages", || {
        idx.load_u32(ERROR, Ordering::Acquire) != 0 && big.load_u32(ERROR, Ordering::Acquire) != 0
    });
    assert_eq!(
        idx.load_u32(ERROR, Ordering::Acquire),
        XENSTORE_ERROR_RINGIDX
    );
    assert_eq!(big.load_u32(ERROR, Ordering::Acquire), XENSTORE_ERROR_PROTO);
    // The good guest carries on.
    assert_eq!(good.read("data/k").unwrap(), b"1");
    good.write("data/k", b"2").unwrap();
    assert_eq!(good.read("name").unwrap(), b"good");
    server.shutdown();
}

#[test]
fn a_guest_that_never_reads_its_replies_is_not_read() {
    let server = Server::new(Config::default(), None);
    let xen = Loopback::new();
    let ready = Ready::new();
    let normal_page = introduce(&xen, &server, &ready, 3, "normal");
    let normal = client(&normal_page, &ready);
    normal.write("data/big", &[b'v'; 2000]).unwrap();
    let perms = ["n3".parse().unwrap(), "r4".parse().unwrap()];
    normal.set_perms("data/big", &perms).unwrap();
    let stalled = introduce(&xen, &server, &ready, 4, "stalled");
    let one = Request::Read("/local/domain/3/data/big")
        .encode(1, 0, 4096)
        .unwrap();
    // Keeps its request ring full and never consumes a reply, until the server took
    // nothing for 100 tries in a row or it took 1 MiB (each reply is 2 KB: a server that
    // read on would take it all).
    let (mut sent, mut partial, mut idle) = (0usize, 0usize, 0);
    while idle < 100 && sent < 1 << 20 {
        let n = push(&stalled, &one[partial..]);
        if n == 0 {
            idle += 1;
            std::thread::sleep(Duration::from_millis(1));
        } else {
            idle = 0;
            sent += n;
            partial = (partial + n) % one.len();
            stalled.notify().unwrap();
            ready.ring();
        }
    }
    let taken = stalled.load_u32(REQ_CONS, Ordering::Acquire) as usize;
    assert!(
        sent < 16 << 10,
        "the server took {taken} of {sent} bytes of requests"
    );
    assert!(
        stalled.load_u32(RSP_PROD, Ordering::Acquire) > 0,
        "some reply"
    );
    // The normal guest is not held up.
    assert_eq!(normal.read("data/big").unwrap().len(), 2000);
    assert_eq!(normal.read("name").unwrap(), b"normal");
    server.shutdown();
}

#[test]
fn release_and_shutdown_end_the_guests_links() {
    let server = Server::new(Config::default(), None);
    let xen = Loopback::new();
    let ready = Ready::new();
    let a = introduce(&xen, &server, &ready, 11, "a");
    let b = introduce(&xen, &server, &ready, 12, "b");
    let ca = client(&a, &ready);
    assert_eq!(ca.read("name").unwrap(), b"a");
    assert!(server.release_domain(DomId(11)));
    // The server's end of a's channel closes: its notifications fail.
    wait_until("a's link is dropped", || {
        a.channel().notify().is_err_and(|e| e.is_peer_gone())
    });
    drop(ca);
    let cb = client(&b, &ready);
    assert_eq!(cb.read("name").unwrap(), b"b");
    server.shutdown();
    drop(server);
    wait_until("b's link is dropped", || {
        b.channel().notify().is_err_and(|e| e.is_peer_gone())
    });
}
