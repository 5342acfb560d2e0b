//! Spinning before sleeping, adaptively: the one spin policy of pore's blocking paths.
//!
//! A blocking call that finds the ring empty (or full) spins a little before it asks the peer
//! for an event and sleeps: a peer running on another CPU usually answers within
//! microseconds, and then neither side pays an event or a sleep. A spin only helps while the
//! peer runs meanwhile; when it shares our CPU (or its vCPU is descheduled) every spin is time
//! taken from it. So a spin yields the CPU between rounds of polling (with `std`: a peer on our
//! CPU runs at once; alone on it, the yield returns at once), and each waiting side keeps a
//! [`SpinBudget`], in the manner of adaptive mutexes: [`FAILURES_TO_HALVE`] spins in a row
//! that run out halve the next one, down to none (a lone miss while streaming costs little; a
//! peer that cannot run while we spin makes every spin miss); a sleep that the peer ended
//! within the maximum shows that a spin of twice that would have saved it, and raises the
//! budget to that. With `std`, a machine with one CPU online never spins.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use core::time::Duration;

use crate::wait::Clock;

/// The shortest spin worth trying (below it, a budget drops to none).
const MIN_SPIN_NS: u64 = 1_000;

/// Polls between two clock reads (and, with `std`, two yields) while spinning.
const POLLS_PER_ROUND: u32 = 64;

/// Spins in a row that must run out before the budget halves.
pub const FAILURES_TO_HALVE: u32 = 8;

/// How long the next spin of one waiting side may last, adapted to how the peer answers.
/// Starts at the maximum it is given. Shared by reference (`&self`) between threads.
#[derive(Debug)]
pub struct SpinBudget {
    ns: AtomicU64,
    misses: AtomicU32,
}

impl SpinBudget {
    /// A budget starting at `max`.
    pub fn new(max: Duration) -> Self {
        SpinBudget {
            ns: AtomicU64::new(nanos(max)),
            misses: AtomicU32::new(0),
        }
    }

    /// The current budget (before the cap of [`next`](SpinBudget::next)).
    pub fn current(&self) -> Duration {
        Duration::from_nanos(self.ns.load(Ordering::Relaxed))
    }

    /// The next spin, at most `max`: zero means sleep at once.
    pub fn next(&self, max: Duration) -> Duration {
        if max.is_zero() || !spin_worthwhile() {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.ns.load(Ordering::Relaxed).min(nanos(max)))
    }

    /// A sleep ended after `slept` because the peer answered: a spin of twice that would have
    /// caught it, so allow that much (up to `max`) if the budget is lower.
    pub fn slept(&self, slept: Duration, max: Duration) {
        let max = nanos(max);
        let want = nanos(slept).saturating_mul(2).max(MIN_SPIN_NS);
        if want <= max && self.ns.load(Ordering::Relaxed) < want {
            self.ns.store(want, Ordering::Relaxed);
        }
    }

    /// The spin ended in readiness.
    pub fn succeeded(&self) {
        self.misses.store(0, Ordering::Relaxed);
    }

    /// The spin ran out: after [`FAILURES_TO_HALVE`] in a row, half as long next time, none
    /// below the shortest.
    pub fn failed(&self) {
        if self.misses.fetch_add(1, Ordering::Relaxed) + 1 < FAILURES_TO_HALVE {
            return;
        }
        self.misses.store(0, Ordering::Relaxed);
        let half = self.ns.load(Ordering::Relaxed) / 2;
        self.ns
            .store(if half < MIN_SPIN_NS { 0 } else { half }, Ordering::Relaxed);
    }

    /// Spins for up to the next spin (at most `max`, never past `deadline` on `clock`) until
    /// `ready` says what we wait for is there: `Ok(true)` if it did. `give_up` is asked once per
    /// round (e.g. "was the channel closed meanwhile?"); `true` ends the spin as a miss.
    /// Updates the budget with the outcome.
    ///
    /// # Errors
    ///
    /// The first error of `ready`.
    pub fn spin_until<C: Clock + ?Sized, E>(
        &self,
        clock: &C,
        max: Duration,
        deadline: Duration,
        mut ready: impl FnMut() -> Result<bool, E>,
        mut give_up: impl FnMut() -> bool,
    ) -> Result<bool, E> {
        let spin = self.next(max);
        if spin.is_zero() {
            return Ok(false);
        }
        let end = clock.now().saturating_add(spin).min(deadline);
        loop {
            for _ in 0..POLLS_PER_ROUND {
                if ready()? {
                    self.succeeded();
                    return Ok(true);
                }
                core::hint::spin_loop();
            }
            if clock.now() >= end || give_up() {
                self.failed();
                return Ok(false);
            }
            // A peer that shares our CPU runs now rather than after our spin (with nothing
            // else runnable here this returns at once).
            #[cfg(feature = "std")]
            std::thread::yield_now();
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whether spinning can help at all: only with more than one CPU online to run the peer
/// meanwhile (the machine's, not this thread's affinity: a peer pinned elsewhere still runs).
/// Without `std` the caller decides (a zero maximum never spins).
fn spin_worthwhile() -> bool {
    #[cfg(feature = "std")]
    {
        static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *CPUS.get_or_init(|| {
            std::fs::read_to_string("/sys/devices/system/cpu/online")
                .ok()
                .and_then(|s| online_cpus(&s))
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        }) > 1
    }
    #[cfg(not(feature = "std"))]
    {
        true
    }
}

/// Counts the CPUs of a Linux CPU list such as `0-3,6,8-9` (`None` if malformed).
#[cfg(any(feature = "std", test))]
fn online_cpus(list: &str) -> Option<usize> {
    list.trim().split(',').try_fold(0usize, |n, part| {
        let count = match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
        n.checked_add(count)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_cpu_lists_are_counted() {
        assert_eq!(online_cpus("0\n"), Some(1));
        assert_eq!(online_cpus("0-1\n"), Some(2));
        assert_eq!(online_cpus("0-3,6,8-9"), Some(7));
        assert_eq!(online_cpus(""), None);
        assert_eq!(online_cpus("3-1"), None);
        assert_eq!(online_cpus("0-x"), None);
    }

    #[test]
    fn the_budget_halves_on_misses_in_a_row_and_follows_short_sleeps() {
        let max = Duration::from_micros(20);
        let b = SpinBudget::new(max);
        assert_eq!(b.current(), max);
        // Misses between successes do not count.
        for _ in 0..3 * FAILURES_TO_HALVE {
            b.failed();
            b.succeeded();
        }
        assert_eq!(b.current(), max);
        for want in [10_000, 5_000, 2_500, 1_250, 0] {
            for _ in 0..FAILURES_TO_HALVE - 1 {
                b.failed();
                assert_ne!(b.current(), Duration::from_nanos(want));
            }
            b.failed();
            assert_eq!(b.current(), Duration::from_nanos(want));
        }
        if spin_worthwhile() {
            assert_eq!(b.next(max), Duration::ZERO);
        }
        // A sleep the peer ended after 3 µs: a 6 µs spin would have caught it.
        b.slept(Duration::from_micros(3), max);
        assert_eq!(b.current(), Duration::from_micros(6));
        // A shorter sleep never lowers it; one longer than half the maximum is no evidence.
        b.slept(Duration::from_micros(1), max);
        assert_eq!(b.current(), Duration::from_micros(6));
        b.slept(Duration::from_micros(15), max);
        assert_eq!(b.current(), Duration::from_micros(6));
        b.slept(Duration::from_micros(10), max);
        assert_eq!(b.current(), max);
        if spin_worthwhile() {
            assert_eq!(b.next(max), max);
            assert_eq!(b.next(Duration::from_micros(5)), Duration::from_micros(5));
        }
        assert_eq!(b.next(Duration::ZERO), Duration::ZERO);
    }
}
