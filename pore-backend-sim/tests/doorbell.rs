//! The doorbell makes no syscall while the peer is awake (docs/perf.md). Alone in its test
//! binary, because the probe counts the whole process's wake-ups.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pore_backend_sim::{wake_syscalls, Hypervisor};
use pore_core::{EventChannel, Events, WaitOutcome};

#[test]
fn notifying_an_awake_peer_makes_no_syscall_and_a_sleeping_one_is_woken() {
    let hv = Hypervisor::new().unwrap();
    let (a, b) = (
        hv.create_domain("a").unwrap(),
        hv.create_domain("b").unwrap(),
    );
    let ca = a.alloc_unbound(b.id()).unwrap();
    let cb = b.bind_interdomain(a.id(), ca.port()).unwrap();

    // The peer is awake, polling: thousands of notifications, not one syscall.
    let before = wake_syscalls();
    let stop = AtomicBool::new(false);
    let consumed = std::thread::scope(|s| {
        let poller = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                if cb.try_wait().unwrap() {
                    n += 1;
                }
            }
            n + u64::from(cb.try_wait().unwrap())
        });
        for _ in 0..20_000 {
            ca.notify().unwrap();
        }
        stop.store(true, Ordering::Release);
        poller.join().unwrap()
    });
    assert!(consumed >= 1);
    assert_eq!(wake_syscalls(), before, "a notify woke an awake peer");

    // Notifying again while an event is already pending costs nothing either.
    ca.notify().unwrap();
    ca.notify().unwrap();
    assert_eq!(wake_syscalls(), before);
    assert!(cb.try_wait().unwrap());

    // A sleeping peer is woken, with one syscall (none if it had not yet gone to sleep).
    std::thread::scope(|s| {
        let sleeper = s.spawn(|| cb.wait(Duration::from_secs(5)).unwrap());
        std::thread::sleep(Duration::from_millis(50));
        ca.notify().unwrap();
        assert_eq!(sleeper.join().unwrap(), WaitOutcome::Event);
    });
    assert!(wake_syscalls() - before <= 1);
}
