//! The readiness watcher of a domain ([`pore_core::Events::readiness_fd`]): a thread that
//! turns the domain's futex wake-ups into eventfd readiness for poll loops.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use pore_core::DomId;
use rustix::thread::futex;

use crate::table::Table;

/// The readiness watcher of a domain: turns its futex wake-ups into eventfd readiness.
pub(crate) struct Readiness {
    pub(crate) efd: Arc<OwnedFd>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) thread: Mutex<Option<JoinHandle<()>>>,
}

impl Readiness {
    /// Starts watching domain `dom` of `table`.
    pub(crate) fn start(table: &Arc<Table>, dom: DomId) -> std::io::Result<Readiness> {
        let efd = Arc::new(rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?);
        let stop = Arc::new(AtomicBool::new(false));
        let (table, efd2, stop2) = (table.clone(), efd.clone(), stop.clone());
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
