#![doc = include_str!("../README.md")]
//!
//! ## Xen's rules, enforced
//! * **Domains** have domids; 0 is dom0 (the hypervisor's own, privileged, never dies).
//! * **Grants**: a domain grants fresh zeroed pages to one peer; only that peer may map them
//!   (`PermissionDenied` otherwise, `NotFound` for refs that do not exist). Ending access while
//!   the peer still maps them fails with `Busy`; dropping the handle then defers the revocation
//!   to a revoke-later list (XSA-396), reported by [`Hypervisor::outstanding`]. Every page
//!   lives in a memfd sealed against shrinking and growing before any domain sees it, and only
//!   such sealed memfds are ever mapped: a hostile domain process cannot truncate pages under
//!   its peer or the hypervisor (which would be SIGBUS, not an error).
//! * **Event channels**: allocate unbound for a peer, bind interdomain (only the domain it was
//!   offered to may bind), notify, close. A closed or dead peer is reported as `PeerGone` by
//!   default ([`PeerClose::Reported`], a simulator affordance); with
//!   [`Hypervisor::set_peer_close`]`(`[`PeerClose::Silent`]`)` the remote port is left unbound
//!   but open as on Xen, and nothing reports the close. Closing twice, notifying a closed port:
//!   `Closed`; notifying a port never bound: `NotFound`. Waits consume the event and re-arm the
//!   port; spurious wake-ups are allowed (D6).
//! * **Unmap-notify** (D8): clear a byte and/or signal a port when a grant or mapping goes away,
//!   including when its domain dies.
//! * **Domain death**: dropping a [`SimDomain`] (or its thread panicking, or its process exiting
//!   or being killed) releases its mappings, grants and ports; peers see it.
//! * **Several processes of one domain**: a handle or process can *join* a live domain
//!   ([`Hypervisor::join_domain`], [`SimDomain::join`], [`DomainCommand::join`]) and holds its
//!   grants, mappings and ports as its own, as a process of a real guest does through its own
//!   gntdev, gntalloc and evtchn files. When it goes, only its resources are released and its
//!   unmap notifications fire; the domain and its xenstore nodes stay. Its peers learn of it
//!   only through the data path (the unmap-notify byte and event, and in the default
//!   [`PeerClose::Reported`] mode its port closing), D8.
//! * **The store**: each domain has a xenstore page and a store port for dom0 ([`store`]);
//!   with the `xenstored` feature (default), pore-xenstore's server is a [`StoreService`]:
//!   the toolstack introduces every domain to it and releases it when the domain dies.
//!
//! Errors are [`SimError`] values classified by [`pore_core::Error::kind`]; no misuse a caller
//! or a peer can cause panics (only [`Hypervisor::assert_cleaned_up`], a test assertion, does).
//!
//! ## No syscall while the peer is awake
//! A notify sets the peer's pending word, fences, and calls `futex` wake only if a thread of
//! the peer domain is asleep; a waiter registers as sleeping, fences, re-checks, then sleeps on
//! the futex with a timeout (the doorbell of `docs/perf.md`). The futex word and the pending
//! words live in one memfd shared by all domains, threads and processes alike.
//!
//! Sleeps with more than a second left arm no kernel timer (the timer is most of what a timed
//! wake-up costs beyond a raw eventfd): one background thread per process (the *ticker*)
//! nudges sleeping domains every 100 ms so they re-check their deadline, and the last second
//! is slept with a precise timer. Other background threads: the broker's (acceptor plus one
//! per domain process) and, once [`pore_core::Events::readiness_fd`] is asked for, one
//! readiness watcher per domain.
//!
//! ## Two modes
//! In one process, as in the example above, [`Hypervisor::new`] and
//! [`Hypervisor::create_domain`].
//! For domains as processes, [`Hypervisor::start`] also runs the broker on a unix socket;
//! children spawned with [`Hypervisor::domain_command`] connect with [`SimDomain::connect`]
//! (see [`process`] and `TESTING.md`).
//!
//! ## Inside the crate
//! Each module uses only modules after it in this list, so the import graph is a DAG: the root
//! (`Hypervisor`); `store` (the xenstored seam); the handles `shared`, `pages` (grants,
//! mappings, store page), `channel`, `domain`, `ctx` (a domain's way to the hypervisor: direct,
//! or through the `broker`); `broker`; `hv` (the hypervisor's records and rules, a submodule
//! per concern); `readiness`; `process`; `table` (the shared event table); `proto`; `env`;
//! `sys`; `error`. `unsafe` is only in `sys::mmap` (memfd pages, `mmap`) and `shared`
//! (`SharedMemory` for the handles that own a mapping), with a `SAFETY` comment on each block.
//!
//! Citations in this crate's comments and docs: `Dn` is decision *n* of the repository's
//! `docs/decisions.md`; `docs/...` paths are relative to the repository's root.

#![cfg(target_os = "linux")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod broker;
mod channel;
mod ctx;
mod domain;
mod env;
mod error;
mod hv;
mod pages;
pub mod process;
mod proto;
mod readiness;
mod shared;
pub mod store;
mod sys;
mod table;

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pore_core::DomId;

pub use channel::{ChannelReadiness, SimChannel};
pub use domain::SimDomain;
pub use env::{JOIN_ENV, NAME_ENV, SOCKET_ENV};
pub use error::{Result, SimError};
pub use hv::{Outstanding, PeerClose};
pub use pages::{SimGrant, SimMapping, SimStorePage};
pub use process::{DomainCommand, DomainProcess};
pub use store::{StoreLink, StoreService};

/// How many wake-up syscalls (`futex` wakes) this process has made for simulated event
/// channels so far, all hypervisors together: a probe for tests that the doorbell makes no
/// syscall while the peer is awake (notifying a domain none of whose threads sleeps costs
/// none).
pub fn wake_syscalls() -> u64 {
    table::WAKE_SYSCALLS.load(std::sync::atomic::Ordering::Relaxed)
}

/// A simulated Xen: creates domains, runs the broker for domain processes, keeps the accounts.
///
/// Dropping it stops the broker (domain processes then lose their connection and die); domains
/// in this process keep working until their handles drop.
#[derive(Debug)]
pub struct Hypervisor {
    hv: Arc<hv::Hv>,
    broker: Option<broker::Broker>,
    #[cfg(feature = "xenstored")]
    xenstored: Option<pore_xenstore::server::Server>,
}

impl Hypervisor {
    /// A hypervisor for domains in this process only (no broker).
    pub fn new() -> Result<Hypervisor> {
        Ok(Hypervisor {
            hv: hv::Hv::new(true)?,
            broker: None,
            #[cfg(feature = "xenstored")]
            xenstored: None,
        })
    }

    /// A hypervisor with its broker running as threads of this process, exporting the socket
    /// path in `PORE_SIM_SOCKET` for domain processes (D19).
    ///
    /// Setting an environment variable races with other threads reading the environment
    /// through libc; tests that run in parallel should prefer [`Hypervisor::start_unexported`]
    /// and spawn children with [`Hypervisor::domain_command`], which passes the path itself.
    pub fn start() -> Result<Hypervisor> {
        let hv = Self::start_unexported()?;
        if let Some(path) = hv.socket_path() {
            std::env::set_var(SOCKET_ENV, path);
        }
        Ok(hv)
    }

    /// Like [`Hypervisor::start`], without touching the environment.
    pub fn start_unexported() -> Result<Hypervisor> {
        Self::start_at(None)
    }

    /// Runs the broker on the socket at `path` (or a fresh temporary path) and, with the
    /// `xenstored` feature (on by default), the embedded xenstored as the toolstack's store
    /// service (D19): every domain then gets `/local/domain/<id>` and a store ring to it.
    pub fn start_at(path: Option<&Path>) -> Result<Hypervisor> {
        let hv = hv::Hv::new(false)?;
        let broker = broker::Broker::start(hv.clone(), path)?;
        let hypervisor = Hypervisor {
            hv,
            broker: Some(broker),
            #[cfg(feature = "xenstored")]
            xenstored: Some(pore_xenstore::server::Server::new(
                pore_xenstore::server::Config::default(),
                None,
            )),
        };
        #[cfg(feature = "xenstored")]
        if let Some(server) = &hypervisor.xenstored {
            hypervisor.set_store_service(Arc::new(server.clone()));
        }
        Ok(hypervisor)
    }

    /// The embedded xenstored started by [`Hypervisor::start`] (serve it to dom0 tools with
    /// `listen_unix`). `None` for [`Hypervisor::new`].
    #[cfg(feature = "xenstored")]
    pub fn xenstored(&self) -> Option<&pore_xenstore::server::Server> {
        self.xenstored.as_ref()
    }

    /// The broker's socket, if it runs.
    pub fn socket_path(&self) -> Option<&Path> {
        self.broker.as_ref().map(|b| b.path())
    }

    /// Creates a domain in this process. Dropping the returned handle kills the domain.
    pub fn create_domain(&self, name: &str) -> Result<SimDomain> {
        let id = self.hv.create_domain(name)?;
        Ok(SimDomain::new(
            ctx::DomCtx::local(id, self.hv.clone()),
            true,
        ))
    }

    /// Another handle of the live domain `dom`, as a second process of it would be: what it
    /// grants, maps and binds is its own and only it may end, unmap or close it. Dropping it
    /// (or its thread panicking) releases only that, firing its unmap notifications; the
    /// domain, its other handles' resources and its xenstore nodes stay. `NotFound` if `dom`
    /// is not alive; dom0 cannot be joined (`PermissionDenied`, use [`Hypervisor::dom0`]).
    pub fn join_domain(&self, dom: DomId) -> Result<SimDomain> {
        let ctx = self.hv.join_domain(dom)?;
        Ok(SimDomain::new(
            ctx::DomCtx::local_context(dom, ctx, self.hv.clone()),
            true,
        ))
    }

    /// Chooses what the remote end of an event channel learns when a port closes, from now on
    /// (ports closed earlier keep what they were told): [`PeerClose::Reported`] (the default,
    /// `PeerGone`) or [`PeerClose::Silent`] (Xen's behaviour: nothing). It covers every domain
    /// of this hypervisor, in this process or in a domain process reached through the broker;
    /// set it before the test's domains start for a run that is faithful throughout.
    pub fn set_peer_close(&self, mode: PeerClose) {
        self.hv.set_peer_close(mode);
    }

    /// The current [`PeerClose`] mode (see [`Hypervisor::set_peer_close`]).
    pub fn peer_close(&self) -> PeerClose {
        self.hv.peer_close()
    }

    /// How many handles or processes that joined `dom` are still there (a killed joined
    /// process counts until the broker has noticed and released what it held).
    pub fn joined_contexts(&self, dom: DomId) -> usize {
        self.hv.joined_contexts(dom)
    }

    /// A handle acting as dom0 (the privileged domain). Dropping it kills nothing.
    pub fn dom0(&self) -> SimDomain {
        SimDomain::new(ctx::DomCtx::local(DomId::DOM0, self.hv.clone()), false)
    }

    /// Creates a domain and runs `f` on a new thread with it; the domain dies when `f` returns
    /// or panics.
    pub fn spawn_domain<T, F>(&self, name: &str, f: F) -> Result<JoinHandle<T>>
    where
        T: Send + 'static,
        F: FnOnce(SimDomain) -> T + Send + 'static,
    {
        let dom = self.create_domain(name)?;
        std::thread::Builder::new()
            .name(format!("pore-sim-dom{}", dom.id()))
            .spawn(move || f(dom))
            .map_err(SimError::os("starting a domain thread"))
    }

    /// How to spawn a domain process running `role` (see [`process`]). Needs the broker
    /// ([`Hypervisor::start`]).
    pub fn domain_command(&self, role: &str) -> Result<DomainCommand> {
        let path = self.socket_path().ok_or_else(|| {
            SimError::refused(
                pore_core::ErrorKind::Unsupported,
                "domain processes need the broker: use Hypervisor::start",
            )
        })?;
        DomainCommand::new(path.to_path_buf(), role)
    }

    /// Installs the xenstored of the simulation (see [`store`]); every live domain is
    /// introduced to it at once, later ones when they are created.
    pub fn set_store_service(&self, service: Arc<dyn StoreService>) {
        self.hv
            .set_service(Some(Arc::new(store::ServiceHook::new(service))));
    }

    /// Live domains, dom0 included, with their names.
    pub fn domains(&self) -> Vec<(DomId, String)> {
        self.hv.domains()
    }

    /// Whether `dom` is alive.
    pub fn is_alive(&self, dom: DomId) -> bool {
        self.hv.is_alive(dom)
    }

    /// Waits up to `timeout` for `dom` to die (e.g. a killed process to be noticed).
    pub fn wait_dead(&self, dom: DomId, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.hv.is_alive(dom) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// What is still held, all domains together.
    pub fn outstanding(&self) -> Outstanding {
        self.hv.outstanding(None)
    }

    /// What `dom` still holds (its grants, its mappings, its ports), all its contexts
    /// together.
    pub fn outstanding_of(&self, dom: DomId) -> Outstanding {
        self.hv.outstanding(Some(dom))
    }

    /// Test assertion: panics, listing what leaked, unless no grant, mapping, deferred
    /// revocation or port is outstanding.
    #[track_caller]
    pub fn assert_cleaned_up(&self) {
        let out = self.outstanding();
        assert!(out.is_clean(), "simulated hypervisor still holds {out:?}");
    }
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        // Stop the broker first: its connection threads reap their domains.
        self.broker.take();
        // The service may hold dom0 channels that refer back to the hypervisor.
        self.hv.set_service(None);
        #[cfg(feature = "xenstored")]
        if let Some(server) = self.xenstored.take() {
            server.shutdown();
        }
    }
}
