//! Shared helpers for the pore benches (see `benches/`): a fixed-window two-thread streaming
//! harness, thread pinning, a frame parser for the rings that do not frame by themselves, and
//! table printing.

pub mod libxs;
pub mod sched;
pub mod xsd;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Pins the calling thread to `cpu` (best effort: ignored if the CPU does not exist).
pub fn pin(cpu: usize) {
    if std::env::var_os("PORE_BENCH_NO_PIN").is_some() {
        return;
    }
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("pin to CPU {cpu}: {e}");
    }
    if std::env::var_os("PORE_BENCH_DEBUG").is_some() {
        eprintln!("thread on CPU {:?}", rustix::thread::sched_getcpu());
    }
}

/// Number of CPUs we may run on, as seen by the first call (before any pinning: a pinned
/// thread, and every thread it spawns, sees only its own CPU).
pub fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The sending half of a contender.
pub trait Tx: Send {
    /// Tries to move (the rest of) `frame` (4-byte big-endian length + payload) into the ring;
    /// `true` once the whole frame is in. `payload` is `frame[4..]`, for contenders that frame
    /// by themselves.
    fn try_send(&mut self, frame: &[u8], payload: &[u8]) -> bool;
    /// Publishes anything staged (as far as the ring has room; never blocks).
    fn flush(&mut self) {}
    /// Publishes everything staged, waiting for room if need be (the consumer is running).
    fn finish(&mut self) {
        self.flush();
    }
}

/// The receiving half of a contender.
pub trait Rx: Send {
    /// Tries to complete the next frame into `buf`; `true` when one completed.
    fn try_recv(&mut self, buf: &mut [u8]) -> bool;
    /// Releases anything read but not released.
    fn flush(&mut self) {}
}

/// One measurement: messages moved in `secs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Messages received.
    pub msgs: u64,
    /// Wall-clock seconds from start to the consumer's last message.
    pub secs: f64,
    /// The larger of the two threads' CPU times over the run, in seconds.
    pub cpu_secs: f64,
}

impl Sample {
    /// Messages per second of the busier thread's CPU time. Both threads busy-poll, so on an idle
    /// machine this equals the wall-clock rate; on a shared, loaded machine it leaves out the
    /// time a thread was preempted by other processes (which otherwise dominates: a preempted
    /// consumer stalls the producer for a whole time slice).
    pub fn rate(&self) -> f64 {
        if self.cpu_secs > 0.0 {
            self.msgs as f64 / self.cpu_secs
        } else {
            0.0
        }
    }

    /// Messages per wall-clock second.
    pub fn wall_rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.msgs as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Streams frames of `size` payload bytes from `tx` (this thread, CPU 0) to `rx` (a thread on
/// CPU 1) for `window`, and measures.
pub fn stream(tx: &mut dyn Tx, rx: &mut dyn Rx, size: usize, window: Duration) -> Sample {
    let mut frame = vec![0xabu8; 4 + size];
    frame[..4].copy_from_slice(&(size as u32).to_be_bytes());
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(u64::MAX);
    let barrier = Barrier::new(2);
    let cpus = cpus();
    std::thread::scope(|s| {
        let (stop, sent, barrier) = (&stop, &sent, &barrier);
        let consumer = s.spawn(move || {
            if cpus > 1 {
                pin(1);
            }
            let mut buf = vec![0u8; size.max(1)];
            barrier.wait();
            let start = Instant::now();
            let cpu0 = thread_cpu_time();
            let mut got = 0u64;
            let mut idle = 0u32;
            loop {
                if rx.try_recv(&mut buf) {
                    got += 1;
                    idle = 0;
                    if got & 63 != 0 {
                        continue;
                    }
                } else {
                    rx.flush();
                    backoff(&mut idle);
                    if idle == 0 && start.elapsed() > window + Duration::from_secs(10) {
                        panic!(
                            "consumer stalled: {got} of {} frames",
                            sent.load(Ordering::Relaxed)
                        );
                    }
                }
                if got == sent.load(Ordering::Acquire) {
                    break;
                }
            }
            rx.flush();
            Sample {
                msgs: got,
                secs: start.elapsed().as_secs_f64(),
                cpu_secs: (thread_cpu_time() - cpu0).as_secs_f64(),
            }
        });
        pin(0);
        barrier.wait();
        let cpu0 = thread_cpu_time();
        let payload_start = 4;
        let mut n = 0u64;
        let mut idle = 0u32;
        let end = Instant::now() + window;
        loop {
            if tx.try_send(&frame, &frame[payload_start..]) {
                n += 1;
                idle = 0;
                if n & 63 == 0 && (stop.load(Ordering::Relaxed) || Instant::now() >= end) {
                    break;
                }
            } else {
                tx.flush();
                backoff(&mut idle);
                if idle == 0 && Instant::now() >= end + Duration::from_secs(5) {
                    panic!("stalled");
                }
            }
        }
        tx.finish();
        let tx_cpu = (thread_cpu_time() - cpu0).as_secs_f64();
        sent.store(n, Ordering::Release);
        stop.store(true, Ordering::Relaxed);
        let mut sample = consumer.join().expect("consumer");
        sample.cpu_secs = sample.cpu_secs.max(tx_cpu);
        sample
    })
}

/// This thread's CPU time (does not advance while the thread is preempted).
pub fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Same-thread cost: sends bursts of up to 64 frames of `size` bytes, then receives them, on this
/// thread, for `window` of *thread CPU time* (no cross-core traffic, and preemption by other
/// processes on a shared machine does not count). A contender that batches publishes once per
/// burst (`flush`). Returns messages per CPU-second.
pub fn same_thread(tx: &mut dyn Tx, rx: &mut dyn Rx, size: usize, window: Duration) -> f64 {
    let mut frame = vec![0xabu8; 4 + size];
    frame[..4].copy_from_slice(&(size as u32).to_be_bytes());
    let mut buf = vec![0u8; size.max(1)];
    let start = thread_cpu_time();
    let mut n = 0u64;
    while thread_cpu_time() - start < window {
        for _ in 0..16 {
            let mut sent = 0u64;
            let mut got = 0u64;
            while sent < 64 {
                if tx.try_send(&frame, &frame[4..]) {
                    sent += 1;
                } else {
                    // Full: publish and make room.
                    tx.flush();
                    while rx.try_recv(&mut buf) {
                        got += 1;
                    }
                    rx.flush();
                }
            }
            tx.flush();
            while got < sent {
                if rx.try_recv(&mut buf) {
                    got += 1;
                } else {
                    rx.flush();
                    tx.flush();
                }
            }
            rx.flush();
            n += got;
        }
    }
    n as f64 / (thread_cpu_time() - start).as_secs_f64()
}

/// Busy-poll back-off shared by every contender: spin, and after many empty polls yield the
/// CPU (the machine may be shared; a spinning thread must not starve its peer).
#[inline]
fn backoff(idle: &mut u32) {
    *idle += 1;
    if *idle >= 4096 {
        *idle = 0;
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// Incremental parser of length-prefixed frames over a ring's readable bytes given as two
/// slices (the contiguous part and the wrapped part).
#[derive(Debug, Default)]
pub struct FrameParse {
    hdr: [u8; 4],
    hdr_got: usize,
    len: usize,
    body_got: usize,
}

fn copy_out(a: &[u8], b: &[u8], from: usize, dst: &mut [u8]) {
    let n = dst.len();
    if from + n <= a.len() {
        dst.copy_from_slice(&a[from..from + n]);
    } else if from >= a.len() {
        let f = from - a.len();
        dst.copy_from_slice(&b[f..f + n]);
    } else {
        let k = a.len() - from;
        dst[..k].copy_from_slice(&a[from..]);
        dst[k..].copy_from_slice(&b[..n - k]);
    }
}

impl FrameParse {
    /// Consumes what it can of one frame from `a ++ b` into `buf`; returns (bytes consumed,
    /// frame completed).
    pub fn feed(&mut self, a: &[u8], b: &[u8], buf: &mut [u8]) -> (usize, bool) {
        let total = a.len() + b.len();
        let mut used = 0;
        if self.hdr_got < 4 {
            let k = (4 - self.hdr_got).min(total);
            copy_out(a, b, 0, &mut self.hdr[self.hdr_got..self.hdr_got + k]);
            used += k;
            self.hdr_got += k;
            if self.hdr_got < 4 {
                return (used, false);
            }
            self.len = u32::from_be_bytes(self.hdr) as usize;
            self.body_got = 0;
        }
        let k = (self.len - self.body_got).min(total - used);
        copy_out(a, b, used, &mut buf[self.body_got..self.body_got + k]);
        used += k;
        self.body_got += k;
        if self.body_got == self.len {
            self.hdr_got = 0;
            (used, true)
        } else {
            (used, false)
        }
    }
}

/// Median of the rates of `samples` (messages per second).
pub fn median_rate(samples: &mut [f64]) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    if samples.is_empty() {
        0.0
    } else {
        samples[samples.len() / 2]
    }
}

/// Formats a rate as "M msg/s · GB/s" for `size`-byte payloads.
pub fn cell(rate: f64, size: usize) -> String {
    format!("{:.2} · {:.2}", rate / 1e6, rate * size as f64 / 1e9)
}

/// Zeroed pages from an anonymous shared `mmap`: memory outside every Rust allocation, like a
/// backend's mapping of a peer's pages, for benches that want pore-core's foreign-memory path.
pub struct MmapPages {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    foreign: bool,
}

impl MmapPages {
    /// `len` bytes (rounded up to pages by the kernel); `foreign` chooses what
    /// [`pore_core::SharedMemory::is_foreign`] says, so the same kind of memory can be measured
    /// with either copy.
    pub fn new(len: usize, foreign: bool) -> Self {
        use rustix::mm::{mmap_anonymous, MapFlags, ProtFlags};
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing; nothing
        // else refers to it.
        let ptr = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
            )
        }
        .expect("mmap");
        MmapPages {
            ptr: std::ptr::NonNull::new(ptr.cast()).expect("mmap is non-null"),
            len,
            foreign,
        }
    }
}

impl Drop for MmapPages {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; views borrow `self`, so none outlives it.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: an owned `mmap` region, valid for `len` bytes until drop, at an address that does
// not move with the handle; outside every Rust allocation and touched only through pore-core's
// views, so `is_foreign` may say so.
unsafe impl pore_core::SharedMemory for MmapPages {
    fn as_ptr(&self) -> std::ptr::NonNull<u8> {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
    fn is_foreign(&self) -> bool {
        self.foreign
    }
}

// SAFETY: the region is only reached through pore-core's views, whose accesses are atomic or
// volatile; the handle itself is just an address and a length.
unsafe impl Send for MmapPages {}
// SAFETY: as for `Send`.
unsafe impl Sync for MmapPages {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_across_slices() {
        let mut p = FrameParse::default();
        let mut buf = [0u8; 8];
        let bytes = [0u8, 0, 0, 3, 7, 8, 9, 0, 0];
        assert_eq!(p.feed(&bytes[..2], &bytes[2..5], &mut buf), (5, false));
        assert_eq!(p.feed(&bytes[5..6], &bytes[6..7], &mut buf), (2, true));
        assert_eq!(&buf[..3], &[7, 8, 9]);
        assert_eq!(p.feed(&bytes[7..], &[], &mut buf), (2, false));
    }

    /// Cross-thread streaming (1 MiB, 256 laps of a 4 KiB ring) through a v2 ring on foreign
    /// `mmap` pages (the wide volatile copy, polling and wake-flag modes): every byte arrives in
    /// order, at every alignment the odd write sizes produce. This exercises, on this machine, the ordering between volatile
    /// body accesses and the index's release/acquire that `docs/volatile-copies.md` relies on.
    #[test]
    fn foreign_pages_stream_intact_across_threads() {
        use pore_core::SharedMemory;
        use pore_ring::prelude::*;
        use pore_ring::v2::{V2Geometry, V2Ring};
        const TOTAL: usize = 1 << 20;
        let byte = |i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8;
        for polling in [false, true] {
            let geo = V2Geometry::symmetric_bytes(4096).expect("geometry");
            let pages = MmapPages::new(geo.region_len(), true);
            let view = pages.view();
            assert!(view.is_foreign());
            let refs: Vec<pore_core::GrantRef> = (0..geo.data_pages() as u32)
                .map(pore_core::GrantRef)
                .collect();
            let mut a = V2Ring::active(view, geo, &refs).expect("active");
            let mut p = V2Ring::passive(view).expect("passive");
            a.set_polling(polling);
            p.set_polling(polling);
            let (mut tx, _) = a.split();
            let (_, mut rx) = p.split();
            std::thread::scope(|s| {
                s.spawn(move || {
                    let src: Vec<u8> = (0..TOTAL).map(byte).collect();
                    let (mut sent, mut step) = (0, 1);
                    while sent < TOTAL {
                        let end = (sent + step).min(TOTAL);
                        sent += tx.write(&src[sent..end]).expect("write");
                        step = step % 1500 + 37;
                    }
                });
                let mut buf = vec![0u8; 3000];
                let (mut got, mut step) = (0, 1);
                while got < TOTAL {
                    let n = rx.read(&mut buf[..step]).expect("read");
                    for (k, &b) in buf[..n].iter().enumerate() {
                        assert_eq!(b, byte(got + k), "byte {} (polling {polling})", got + k);
                    }
                    got += n;
                    step = step % 2900 + 53;
                }
            });
        }
    }
}
