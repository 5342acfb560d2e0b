//! Scheduling policy of a benched daemon: `SCHED_BATCH` makes its threads not preempt the
//! task that woke them (see the xenstored bench's `PORE_BENCH_XSD_BATCH`).

/// Puts every thread of process `pid` under `SCHED_BATCH` (nice unchanged); returns the
/// number of threads changed.
pub fn batch(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut n = 0;
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler reads `param`, a live local, and changes only the
        // scheduling of thread `tid`.
        if unsafe { libc::sched_setscheduler(tid, libc::SCHED_BATCH, &param) } == 0 {
            n += 1;
        }
    }
    n
}
