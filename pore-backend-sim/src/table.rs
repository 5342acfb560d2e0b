//! The shared event table: the simulator's `shared_info`.
//!
//! One memfd, mapped by the hypervisor and by every domain (thread or process), holds
//!
//! * one 64-byte slot per domain: a count of sleeping waiters and a futex word (`wake_gen`)
//!   bumped to wake them;
//! * one 128-byte slot per event channel: a closed word per end, the slot's generation and
//!   whether it is bound on one cache line, a pending word per end on the next.
//!
//! Signalling is the doorbell of `docs/perf.md`: the notifier sets the peer's pending word,
//! fences, and makes a syscall (`futex` wake) only if a thread of the peer domain sleeps. A
//! waiter registers as sleeping, fences, re-checks, then sleeps on the futex with a timeout.
//! The futex word lives in a `MAP_SHARED` memfd, so the same code wakes threads and processes.
//! A futex (not a bare eventfd) is what lets several threads of one domain sleep at once
//! without lost wake-ups: the kernel compares the word before sleeping.
//!
//! The table is shared with every simulated domain, so a hostile domain *process* could scribble
//! on other domains' words: the simulator models Xen's rules for well-behaved callers and
//! misbehaving peers' protocol data, not a memory-isolation boundary between processes.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pore_core::{DomId, PAGE_SIZE};
use rustix::thread::futex;

use crate::sys::mmap::{memfd, Mmap};

/// Domain ids the simulator hands out are below this.
pub(crate) const MAX_DOMAINS: usize = 1024;
/// Event channels alive at once, across all domains.
pub(crate) const MAX_CHANNELS: usize = 16 * 1024;
const SLOT: usize = 64;
/// A channel slot spans two cache lines: the read-mostly words (generation, bound, closed) on
/// the first, the pending words on the second, so a notify or a wait pulls over only the line
/// the other side actually wrote.
const CHAN_SLOT: usize = 2 * SLOT;
const CHAN_BASE: usize = MAX_DOMAINS * SLOT;
const TABLE_PAGES: usize = (MAX_DOMAINS * SLOT + MAX_CHANNELS * CHAN_SLOT) / PAGE_SIZE;

// Words of a domain slot.
const D_SLEEPERS: usize = 0;
const D_WAKE_GEN: usize = 1;

// Words of a channel slot.
const C_CLOSED: usize = 0; // + side
const C_GEN: usize = 2;
const C_BOUND: usize = 3;
const C_PENDING: usize = SLOT / 4; // + side, on the second cache line

// Values of a closed word: open, closed with the peer told (`PeerGone`), closed silently (Xen:
// the peer's port just turns unbound).
const OPEN: u32 = 0;
const CLOSED_REPORTED: u32 = 1;
const CLOSED_SILENT: u32 = 2;

/// Sleeps longer than this rely on the ticker instead of a kernel timer (see [`Table::sleep`]).
const UNTIMED_OVER: Duration = Duration::from_secs(1);
/// The ticker's period.
const TICK: Duration = Duration::from_millis(100);

/// One thread per process nudging the sleepers of every live table each [`TICK`].
mod ticker {
    use std::sync::{Arc, Mutex, OnceLock, Weak};

    use super::{Table, TICK};

    static TABLES: Mutex<Vec<Weak<Table>>> = Mutex::new(Vec::new());
    static RUNNING: OnceLock<bool> = OnceLock::new();

    /// Adds `table` to the ticker's list, starting the ticker if needed: `false` if it could
    /// not start (sleeps then always use a kernel timer).
    pub(super) fn register(table: &Arc<Table>) -> bool {
        let running = *RUNNING.get_or_init(|| {
            std::thread::Builder::new()
                .name("pore-sim-ticker".into())
                .spawn(run)
                .map_err(|e| tracing::warn!(error = %e, "the sim ticker did not start"))
                .is_ok()
        });
        if running {
            let mut tables = TABLES.lock().unwrap_or_else(|p| p.into_inner());
            tables.retain(|t| t.strong_count() > 0);
            tables.push(Arc::downgrade(table));
        }
        running
    }

    fn run() {
        loop {
            std::thread::sleep(TICK);
            let live: Vec<Arc<Table>> = {
                let mut tables = TABLES.lock().unwrap_or_else(|p| p.into_inner());
                tables.retain(|t| t.strong_count() > 0);
                tables.iter().filter_map(Weak::upgrade).collect()
            };
            for table in live {
                table.tick();
            }
        }
    }
}

/// Futex wake syscalls made by this process (see [`crate::wake_syscalls`]).
pub(crate) static WAKE_SYSCALLS: AtomicU64 = AtomicU64::new(0);

/// Which end of a channel: the allocator of the unbound port (0) or the binder (1).
pub(crate) type Side = u32;

/// What a channel end sees when it looks at its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndState {
    /// An event was pending (and was consumed if asked).
    Fired,
    /// Nothing pending; the peer is there (or not bound yet).
    Idle,
    /// Nothing pending and the peer closed its end (or died), reported
    /// ([`crate::PeerClose::Reported`]).
    PeerGone,
    /// Nothing pending and the peer closed its end (or died) silently
    /// ([`crate::PeerClose::Silent`]): our port is unbound but open; sends are dropped.
    Unbound,
    /// Our own end was closed by the hypervisor (our domain died) or the slot was reused.
    Closed,
}

/// The mapped event table.
pub(crate) struct Table {
    fd: OwnedFd,
    map: Mmap,
    /// Whether this process's ticker nudges the table's sleepers (see [`Table::sleep`]).
    ticked: AtomicBool,
    /// Threads of *this* process in an untimed sleep, per domain. Kept in private memory: the
    /// sleeper counts in the shared table can be zeroed by a hostile domain process, which must
    /// not be able to keep our ticker from nudging our own sleepers.
    local_sleepers: Box<[AtomicU32]>,
    /// Futex flags: `PRIVATE` when every waker and waiter lives in this process and uses this
    /// mapping (no broker), which spares the kernel the shared-mapping key lookup on every wait
    /// and wake; empty (process-shared) otherwise.
    flags: futex::Flags,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("map", &self.map).finish()
    }
}

/// A channel end's address in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EndRef {
    pub slot: u32,
    pub side: Side,
    pub gen: u32,
}

impl Table {
    /// A fresh, zeroed table; `process_local` when no other process will ever map it.
    pub(crate) fn create(process_local: bool) -> io::Result<Table> {
        let fd = memfd("pore-sim-events", TABLE_PAGES)?;
        let mut table = Self::from_fd(fd)?;
        if process_local {
            table.flags = futex::Flags::PRIVATE;
        }
        Ok(table)
    }

    /// Maps a table received from the broker (shared with other processes).
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Table> {
        let map = Mmap::map_fd(fd.as_fd(), 0, TABLE_PAGES)?;
        Ok(Table {
            fd,
            map,
            ticked: AtomicBool::new(false),
            local_sleepers: (0..MAX_DOMAINS).map(|_| AtomicU32::new(0)).collect(),
            flags: futex::Flags::empty(),
        })
    }

    /// Shares the table and hands it to this process's ticker (see [`Table::sleep`]).
    pub(crate) fn into_shared(self) -> Arc<Table> {
        let table = Arc::new(self);
        if ticker::register(&table) {
            table.ticked.store(true, Ordering::Release);
        }
        table
    }

    /// One tick: nudges every domain with a thread of this process in an untimed sleep (counted
    /// in private memory), so that untimed sleeps re-check
    /// their deadline. Bumps no wake word (a readiness watcher sees no event).
    fn tick(&self) {
        for d in 0..MAX_DOMAINS {
            let dom = DomId(d as u16);
            if self.local_sleepers[d].load(Ordering::Relaxed) != 0 {
                let _ = futex::wake(self.dom(dom, D_WAKE_GEN), self.flags, i32::MAX as u32);
            }
        }
    }

    /// The futex flags every waiter and waker of this table uses.
    pub(crate) fn futex_flags(&self) -> futex::Flags {
        self.flags
    }

    /// The table's memfd (sent to domain processes).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        // Offsets below are computed from ids the hypervisor bounds (domid < MAX_DOMAINS,
        // slot < MAX_CHANNELS, word < 32), so they are in range and aligned by construction.
        self.map
            .u32_at(offset)
            .expect("event-table offset computed from bounded ids")
    }

    fn dom(&self, dom: DomId, w: usize) -> &AtomicU32 {
        self.word((dom.0 as usize % MAX_DOMAINS) * SLOT + w * 4)
    }

    fn chan(&self, slot: u32, w: usize) -> &AtomicU32 {
        self.word(CHAN_BASE + (slot as usize % MAX_CHANNELS) * CHAN_SLOT + w * 4)
    }

    /// Resets a channel slot for a new channel; returns its generation.
    pub(crate) fn init_slot(&self, slot: u32) -> u32 {
        for w in [C_PENDING, C_PENDING + 1, C_CLOSED, C_CLOSED + 1, C_BOUND] {
            self.chan(slot, w).store(0, Ordering::Relaxed);
        }
        self.chan(slot, C_GEN).fetch_add(1, Ordering::Release) + 1
    }

    /// Marks a slot bound (both ends exist).
    pub(crate) fn set_bound(&self, slot: u32) {
        self.chan(slot, C_BOUND).store(1, Ordering::Release);
    }

    /// Marks one end closed; `silent` when the other end must not be told (it then sees
    /// [`EndState::Unbound`] instead of [`EndState::PeerGone`]).
    pub(crate) fn set_closed(&self, slot: u32, side: Side, silent: bool) {
        let how = if silent {
            CLOSED_SILENT
        } else {
            CLOSED_REPORTED
        };
        self.chan(slot, C_CLOSED + side as usize)
            .store(how, Ordering::SeqCst);
    }

    /// Looks at (and with `consume`, takes) the pending event of an end.
    pub(crate) fn end_state(&self, end: EndRef, consume: bool) -> EndState {
        if self.chan(end.slot, C_GEN).load(Ordering::Acquire) != end.gen
            || self
                .chan(end.slot, C_CLOSED + end.side as usize)
                .load(Ordering::Acquire)
                != OPEN
        {
            return EndState::Closed;
        }
        let pending = self.chan(end.slot, C_PENDING + end.side as usize);
        // Reading before swapping keeps an idle poll from dirtying the peer's cache line.
        let fired = pending.load(Ordering::Acquire) != 0
            && (!consume || pending.swap(0, Ordering::Acquire) != 0);
        if fired {
            return EndState::Fired;
        }
        match self
            .chan(end.slot, C_CLOSED + (1 - end.side) as usize)
            .load(Ordering::Acquire)
        {
            OPEN => EndState::Idle,
            CLOSED_SILENT => EndState::Unbound,
            // CLOSED_REPORTED, or anything a hostile process wrote there.
            _ => EndState::PeerGone,
        }
    }

    /// Whether the other end of `end`'s channel closed silently ([`EndState::Unbound`]), whatever
    /// is pending for `end`.
    pub(crate) fn peer_closed_silently(&self, end: EndRef) -> bool {
        self.chan(end.slot, C_CLOSED + (1 - end.side) as usize)
            .load(Ordering::Acquire)
            == CLOSED_SILENT
    }

    /// Whether the slot still belongs to `end` and both ends are bound.
    pub(crate) fn is_bound(&self, end: EndRef) -> bool {
        self.chan(end.slot, C_BOUND).load(Ordering::Acquire) != 0
    }

    /// Raises the event on `side` of `slot`, waking `dom` only if one of its threads sleeps.
    pub(crate) fn kick(&self, slot: u32, side: Side, dom: DomId) {
        let pending = self.chan(slot, C_PENDING + side as usize);
        if pending.swap(1, Ordering::SeqCst) != 0 {
            // Already pending: whoever set it did the wake-up check for that event, and a waiter
            // arriving later re-checks the pending word before it sleeps.
            return;
        }
        // Set pending /before/ reading the sleeper count; the waiter registers /before/ it
        // re-checks pending. Our swap and load are SeqCst and the waiter's registration is a
        // SeqCst RMW followed by a SeqCst fence, so in the single total order either our swap
        // comes first (its re-check sees pending) or its registration does (we see it here).
        // No fence needed on this side: the notify path stays free of `mfence`.
        if self.dom(dom, D_SLEEPERS).load(Ordering::SeqCst) != 0 {
            self.wake(dom);
        }
    }

    /// Wakes every sleeping thread of `dom` (one syscall).
    pub(crate) fn wake(&self, dom: DomId) {
        WAKE_SYSCALLS.fetch_add(1, Ordering::Relaxed);
        let word = self.dom(dom, D_WAKE_GEN);
        word.fetch_add(1, Ordering::Release);
        if let Err(e) = futex::wake(word, self.flags, i32::MAX as u32) {
            tracing::warn!(error = %e, %dom, "futex wake failed");
        }
    }

    /// Sleeps as domain `dom` until woken, `left` elapses, or `ready()` already holds after
    /// registering. Spurious returns are allowed; callers re-check. Reads no clock: callers
    /// keep their deadline (a clock read costs ~60 ns on these VMs).
    ///
    /// A futex wait with a timeout arms and cancels a kernel hrtimer on every sleep, which is
    /// most of what a timed wake-up costs beyond a raw eventfd read (~0.4 µs of a ~3.7 µs round
    /// trip here). So a sleep with more than [`UNTIMED_OVER`] left sleeps without a timer and
    /// relies on this process's ticker, which nudges sleeping domains every [`TICK`]; the
    /// caller re-checks its deadline and sleeps the last stretch with a precise timer. Every
    /// wait stays bounded, to within a tick of its deadline at worst.
    pub(crate) fn sleep(&self, dom: DomId, left: Duration, ready: impl Fn() -> bool) {
        let gen = self.dom(dom, D_WAKE_GEN);
        let sleepers = self.dom(dom, D_SLEEPERS);
        let seen = gen.load(Ordering::Acquire);
        sleepers.fetch_add(1, Ordering::SeqCst);
        // Register /before/ re-checking, pairing with `kick`.
        fence(Ordering::SeqCst);
        if !ready() && !left.is_zero() {
            // EAGAIN (the word moved: a wake-up raced us), EINTR and ETIMEDOUT all just
            // return to the caller's re-check loop.
            if left > UNTIMED_OVER && self.ticked.load(Ordering::Relaxed) {
                let local = &self.local_sleepers[usize::from(dom.0) % MAX_DOMAINS];
                local.fetch_add(1, Ordering::SeqCst);
                let _ = futex::wait(gen, self.flags, seen, None);
                local.fetch_sub(1, Ordering::SeqCst);
            } else {
                let ts = futex::Timespec::try_from(left).unwrap_or(futex::Timespec {
                    tv_sec: i64::MAX,
                    tv_nsec: 0,
                });
                let _ = futex::wait(gen, self.flags, seen, Some(&ts));
            }
        }
        sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Registers a permanent sleeper for `dom` (a readiness watcher): from now on every new
    /// event for `dom` bumps its wake word. Undo with [`Table::unwatch`].
    pub(crate) fn watch(&self, dom: DomId) {
        self.dom(dom, D_SLEEPERS).fetch_add(1, Ordering::SeqCst);
    }

    /// Undoes [`Table::watch`].
    pub(crate) fn unwatch(&self, dom: DomId) {
        self.dom(dom, D_SLEEPERS).fetch_sub(1, Ordering::SeqCst);
    }

    /// The wake word of `dom`, to wait for changes of it (readiness watcher).
    pub(crate) fn wake_gen(&self, dom: DomId) -> &AtomicU32 {
        self.dom(dom, D_WAKE_GEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hostile domain process can write the shared table, e.g. zero our sleeper count. An
    /// untimed sleep must still be nudged by this process's ticker (its count is private).
    #[test]
    fn an_untimed_sleep_is_nudged_even_if_the_shared_sleeper_count_is_zeroed() {
        let table = Table::create(false).unwrap().into_shared();
        assert!(
            table.ticked.load(Ordering::Relaxed),
            "the ticker serves this table"
        );
        let dom = DomId(7);
        let (tx, rx) = std::sync::mpsc::channel();
        let t2 = table.clone();
        std::thread::spawn(move || {
            t2.sleep(dom, Duration::from_secs(60), || false);
            let _ = tx.send(());
        });
        // Let it fall asleep, then play the hostile peer.
        std::thread::sleep(TICK / 2);
        table.dom(dom, D_SLEEPERS).store(0, Ordering::SeqCst);
        rx.recv_timeout(TICK * 20)
            .expect("the sleeper was nudged by the ticker despite the zeroed shared count");
    }
}
