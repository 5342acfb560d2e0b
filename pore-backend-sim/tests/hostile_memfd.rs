//! A hostile domain process attacks the memfds the simulator hands it (its grant pages, its
//! store page, the event table): it tries to shrink and grow every one of them. A memfd that
//! shrank under a peer's (or the hypervisor's) mapping would turn the next touch of those pages
//! into SIGBUS and kill the simulated hypervisor. The memfds are sealed, so every attempt
//! fails and everyone else keeps working.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pore_backend_sim::process::{self, run_child_role};
use pore_backend_sim::{Hypervisor, StoreLink, StoreService};
use pore_core::{
    DomId, EventChannel, Events, GrantRef, MappedPages, Maps, SharedAccess, SharedMemory,
    WaitOutcome, PAGE_SIZE,
};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

const WAIT: Duration = Duration::from_secs(10);
const PAGES: usize = 2;
/// The granter's "live" byte, cleared by its unmap-notify (through the hypervisor's short
/// mapping of the page) when its grant goes away.
const LIVE: usize = 64;
const TEST: &str = "a_hostile_process_cannot_truncate_its_memfds_under_its_peers";

fn child(role: &str, args: &[String]) -> i32 {
    let result = match role {
        "hostile" => hostile_role(args),
        other => Err(format!("unknown role {other}")),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("domain process role {role} failed: {e}");
            1
        }
    }
}

/// Tries to grow `fd` by a page, then to shrink it to nothing (left so: the pages are gone for
/// every mapping); returns the two outcomes (`ok` or the errno).
fn attack(fd: BorrowedFd<'_>) -> (String, String) {
    let outcome = |r: rustix::io::Result<()>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) if e == rustix::io::Errno::PERM => "EPERM".to_string(),
        Err(e) => format!("errno{}", e.raw_os_error()),
    };
    let len = rustix::fs::fstat(fd).map_or(0, |s| s.st_size as u64);
    let grow = outcome(rustix::fs::ftruncate(fd, len + PAGE_SIZE as u64));
    let shrink = outcome(rustix::fs::ftruncate(fd, 0));
    (shrink, grow)
}

/// A hostile domain process does not use `SimDomain` (which keeps no descriptor once it has
/// mapped the pages): it speaks the broker's wire protocol itself and keeps every descriptor
/// it is sent. Message: `[op or status: u32][n: u32][n words][tail]`, little endian.
struct Raw {
    sock: OwnedFd,
}

const HELLO: u32 = 1;
const GRANT: u32 = 2;
const GRANT_NOTIFY: u32 = 3;
const OPEN_STORE: u32 = 11;
const NONE: u32 = u32::MAX;

impl Raw {
    fn connect() -> Result<Raw, String> {
        let path = std::env::var_os(pore_backend_sim::SOCKET_ENV).ok_or("no socket")?;
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| e.to_string())?;
        let addr = SocketAddrUnix::new(std::path::Path::new(&path)).map_err(|e| e.to_string())?;
        rustix::net::connect(&sock, &addr).map_err(|e| e.to_string())?;
        Ok(Raw { sock })
    }

    /// One request (with `fds` attached) and its reply's words and descriptors.
    fn call(
        &self,
        op: u32,
        args: &[u32],
        tail: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Vec<u32>, Vec<OwnedFd>), String> {
        let mut msg = Vec::new();
        msg.extend_from_slice(&op.to_le_bytes());
        msg.extend_from_slice(&(args.len() as u32).to_le_bytes());
        for a in args {
            msg.extend_from_slice(&a.to_le_bytes());
        }
        msg.extend_from_slice(tail);
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err("ancillary buffer too small".into());
        }
        rustix::net::sendmsg(
            &self.sock,
            &[IoSlice::new(&msg)],
            &mut control,
            SendFlags::empty(),
        )
        .map_err(|e| e.to_string())?;
        let mut ready = [PollFd::new(&self.sock, PollFlags::IN)];
        let timeout = Timespec {
            tv_sec: WAIT.as_secs() as i64,
            tv_nsec: 0,
        };
        if rustix::event::poll(&mut ready, Some(&timeout)).map_err(|e| e.to_string())? == 0 {
            return Err(format!("no reply to request {op}"));
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &self.sock,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| e.to_string())?;
        let mut received = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                received.extend(rights);
            }
        }
        let words: Vec<u32> = buf[..got.bytes]
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        match words.as_slice() {
            [0, n, rest @ ..] if rest.len() >= *n as usize => {
                Ok((rest[..*n as usize].to_vec(), received))
            }
            _ => Err(format!("request {op} refused: {words:?}")),
        }
    }
}

/// Becomes a domain, grants pages to `args[0]` (live byte set, cleared by unmap-notify), takes
/// its store page, reports `dom=<id> refs=<r,..>`; on `attack`, tries to shrink and grow every
/// memfd it was sent and reports `memfds=<n> shrunk=<n> grown=<n> <details>` before anything
/// else; then writes to its grant and store page and reports `still working`; exits on `exit`.
fn hostile_role(args: &[String]) -> Result<(), String> {
    let peer: u32 = args[0].parse().map_err(|e| format!("{e}"))?;
    let raw = Raw::connect()?;
    let (welcome, mut held) = raw.call(HELLO, &[], b"hostile", &[])?;
    let dom = *welcome.first().ok_or("no domid")?;
    let (granted, fds) = raw.call(GRANT, &[peer, PAGES as u32], &[], &[])?;
    held.extend(fds);
    let (&handle, refs) = granted.split_first().ok_or("no grant handle")?;
    // Descriptors of our own making (an unsealed memfd, a pipe) sent along: the request is
    // refused, and the broker lives on.
    let own = rustix::fs::memfd_create("hostile-own", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| e.to_string())?;
    rustix::fs::ftruncate(&own, PAGE_SIZE as u64).map_err(|e| e.to_string())?;
    let (pipe_r, _pipe_w) = rustix::pipe::pipe().map_err(|e| e.to_string())?;
    let notify = [handle, LIVE as u32, NONE];
    let smuggled = raw.call(GRANT_NOTIFY, &notify, &[], &[own.as_fd(), pipe_r.as_fd()]);
    match smuggled {
        Err(e) if e.starts_with("request 3 refused") => {}
        other => return Err(format!("a request carrying descriptors: {other:?}")),
    }
    raw.call(GRANT_NOTIFY, &notify, &[], &[])?;
    let (_, fds) = raw.call(OPEN_STORE, &[], &[], &[])?;
    held.extend(fds);
    let [table, grant, store] = held.as_slice() else {
        return Err(format!("expected 3 descriptors, got {}", held.len()));
    };
    let put = |fd: &OwnedFd, offset: usize, bytes: &[u8]| {
        rustix::io::pwrite(fd, bytes, offset as u64).map_err(|e| e.to_string())
    };
    put(grant, LIVE, &[1])?;
    put(grant, 0, &7u32.to_le_bytes())?;
    let refs: Vec<String> = refs.iter().map(|r| r.to_string()).collect();
    process::report(&format!("dom={dom} refs={}", refs.join(",")));

    if process::listen(WAIT).map_err(|e| e.to_string())? != "attack" {
        return Err("expected attack".into());
    }
    let (mut shrunk, mut grown) = (0, 0);
    let mut details = Vec::new();
    for (name, fd) in [("table", table), ("grant", grant), ("store", store)] {
        let (shrink, grow) = attack(fd.as_fd());
        shrunk += usize::from(shrink == "ok");
        grown += usize::from(grow == "ok");
        details.push(format!("{name}:shrink={shrink},grow={grow}"));
    }
    process::report(&format!(
        "memfds={} shrunk={shrunk} grown={grown} {}",
        held.len(),
        details.join(" ")
    ));
    // Carry on through the same descriptors (a write to a shrunk memfd would grow it back).
    if shrunk == 0 {
        put(grant, 0, &8u32.to_le_bytes())?;
        put(store, 0, b"ping")?;
    }
    process::report("still working");
    if process::listen(WAIT).map_err(|e| e.to_string())? != "exit" {
        return Err("expected exit".into());
    }
    // Exiting kills the domain: the hypervisor ends the grant the peer still maps (deferred)
    // and clears the live byte through its own short mapping of the page.
    Ok(())
}

/// Holds the store links the toolstack introduces (the hypervisor process's own mappings of
/// every domain's store page).
#[derive(Default)]
struct Links(Mutex<Vec<StoreLink>>);

impl StoreService for Links {
    fn domain_introduced(&self, link: StoreLink) {
        self.0.lock().unwrap().push(link);
    }
    fn domain_released(&self, _: DomId) {}
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn a_hostile_process_cannot_truncate_its_memfds_under_its_peers() {
    run_child_role(child);
    let hv = Hypervisor::start_unexported().unwrap();
    let links = Arc::new(Links::default());
    hv.set_store_service(links.clone());
    let peer = hv.create_domain("peer").unwrap();
    let mut hostile = hv
        .domain_command("hostile")
        .unwrap()
        .test(TEST)
        .arg(peer.id().0.to_string())
        .spawn()
        .unwrap();
    let hello = hostile.read_report(WAIT).unwrap();
    let dom = DomId(field(&hello, "dom").parse().unwrap());
    let refs: Vec<GrantRef> = field(&hello, "refs")
        .split(',')
        .map(|r| GrantRef(r.parse().unwrap()))
        .collect();
    let mapping = peer.map(dom, &refs).unwrap();
    let view = mapping.view();
    assert_eq!(view.load_u8(LIVE, Ordering::Acquire), 1);
    assert_eq!(view.load_u32(0, Ordering::Acquire), 7);

    hostile.tell("attack").unwrap();
    let outcome = hostile.read_report(WAIT).unwrap();
    assert_eq!(field(&outcome, "memfds"), "3", "{outcome}");
    assert_eq!(field(&outcome, "shrunk"), "0", "{outcome}");
    assert_eq!(field(&outcome, "grown"), "0", "{outcome}");
    assert_eq!(hostile.read_report(WAIT).unwrap(), "still working");

    // The peer's mapping is whole: every page can be touched (a shrunk memfd would SIGBUS).
    assert_eq!(view.load_u32(0, Ordering::Acquire), 8);
    view.store_u32((PAGES - 1) * PAGE_SIZE + 8, 5, Ordering::Release);
    assert_eq!(mapping.len(), PAGES * PAGE_SIZE);
    // So is the toolstack's mapping of the hostile domain's store page.
    {
        let links = links.0.lock().unwrap();
        let link = links.iter().find(|l| l.domid == dom).expect("introduced");
        let mut got = [0u8; 4];
        link.page.view().read_bytes(0, &mut got);
        assert_eq!(&got, b"ping");
    }
    // And the event table: an event channel between two other domains works.
    let other = hv.create_domain("other").unwrap();
    let a = peer.alloc_unbound(other.id()).unwrap();
    let b = other.bind_interdomain(peer.id(), a.port()).unwrap();
    b.notify().unwrap();
    assert_eq!(a.wait(WAIT).unwrap(), WaitOutcome::Event);

    // The hypervisor keeps working: when the process exits it reaps the domain, ending the
    // grant the peer still maps and clearing its live byte through its own mapping.
    hostile.tell("exit").unwrap();
    let status = hostile
        .wait_timeout(WAIT)
        .unwrap()
        .expect("the process exits");
    assert!(status.success(), "hostile process failed: {status}");
    assert!(hv.wait_dead(dom, WAIT));
    assert_eq!(view.load_u8(LIVE, Ordering::Acquire), 0);
    mapping.unmap().unwrap();
    a.close().unwrap();
    b.close().unwrap();
    drop(other);
    hv.assert_cleaned_up();
}
