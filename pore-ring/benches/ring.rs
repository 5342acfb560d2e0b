//! Criterion benches of the straw rings: framed messages from one thread to another through a
//! v2 ring and a LING ring, each put on a pair of pores of pore-core's loopback backend (two
//! domains: one grants the pages and allocates the event channel, the other maps and binds),
//! as a real straw is. Both sides block on their event channels when the ring is full or
//! empty (spin 20 µs, then sleep), so a side descheduled by a busy machine costs time, not a
//! wrong result.
//!
//! - Sizes: 16 B, 256 B, 4 KiB and 64 KiB payloads (each with its 4-byte length prefix).
//! - Rings of equal bytes per direction: LING's 8 pages (16376 bytes each way) and a v2 ring
//!   of 16 KiB each way.
//! - `per message`: each frame is published (and the peer notified if it asked) on its own;
//!   `batched`: frames are gathered by a coalescing writer and published 64 at a time, and the
//!   reader releases space 64 frames at a time.
//!
//! Time is per message, throughput in payload bytes. By default the time is wall-clock, from the
//! producer's first send to the consumer's last frame. With `PORE_BENCH_CPU_TIME=1` it is the CPU
//! time of the busier of the two threads instead: on a shared machine, where the threads are
//! preempted by other processes, that is the ring's own cost (time spent asleep on the event
//! channel does not count then, so compare such figures only with each other). `cargo bench -p pore-ring` measures (about a minute); `cargo test -p
//! pore-ring --benches` runs each case once as a smoke test. The comparative harness in the
//! workspace's `benches/` runs other rings in the same run and prints ratios.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use pore_core::loopback::{Loopback, LoopbackChannel};
use pore_core::{DomId, Pore};
use pore_ring::frame::{FrameReader, FrameWriter, Progress, Received};
use pore_ring::ling::{LingRing, LING_PAGES};
use pore_ring::prelude::*;
use pore_ring::v2::{V2Geometry, V2Ring};
use pore_ring::wait::{notify_if, Clock, Waiter};

const SIZES: [usize; 4] = [16, 256, 4096, 65536];
/// Frames per commit (writer) and per release (reader) in batched mode.
const BATCH: usize = 64;
/// Bytes per direction of the v2 ring: LING's 16376, rounded to a power of two.
const V2_BYTES: usize = 16 * 1024;
const SPIN: Duration = Duration::from_micros(20);
/// No wait in a bench takes this long unless something is broken.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
struct Instants(Instant);

impl Clock for Instants {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

fn waiter() -> Waiter<Instants> {
    Waiter::new(Instants(Instant::now()), SPIN)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    PerMessage,
    Batched,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::PerMessage => "per message",
            Mode::Batched => "batched",
        }
    }
}

/// Sends `count` frames of `payload`, blocking on `chan` while the ring is full.
fn produce<W>(tx: &mut W, chan: &LoopbackChannel, payload: &[u8], count: u64, mode: Mode)
where
    W: RingWriter<Error = pore_ring::RingError>,
{
    let w = waiter();
    let mut fw = match mode {
        Mode::PerMessage => FrameWriter::new(payload.len()),
        Mode::Batched => FrameWriter::coalescing(payload.len()),
    };
    // Publishes everything accepted so far, waiting for room if the stash does not fit.
    let commit_all = |fw: &mut FrameWriter, tx: &mut W| loop {
        let all = fw.commit(tx).expect("commit");
        notify_if(tx.take_notify(), chan).expect("notify");
        if all {
            break;
        }
        w.wait_writable(tx, chan, TIMEOUT).expect("room in time");
    };
    let mut staged = 0;
    for _ in 0..count {
        loop {
            let done = match mode {
                Mode::PerMessage => {
                    let p = fw.send(tx, payload).expect("send");
                    notify_if(tx.take_notify(), chan).expect("notify");
                    p == Progress::Done
                }
                Mode::Batched => fw.send_deferred(tx, payload).expect("send") == Progress::Done,
            };
            if done {
                break;
            }
            if mode == Mode::Batched {
                commit_all(&mut fw, tx);
                staged = 0;
            }
            w.wait_writable(tx, chan, TIMEOUT).expect("room in time");
        }
        staged += 1;
        if mode == Mode::Batched && staged == BATCH {
            commit_all(&mut fw, tx);
            staged = 0;
        }
    }
    commit_all(&mut fw, tx);
}

/// Receives `count` frames of `len` bytes, blocking on `chan` while the ring is empty.
fn consume<R>(rx: &mut R, chan: &LoopbackChannel, len: usize, count: u64, mode: Mode)
where
    R: RingReader<Error = pore_ring::RingError>,
{
    let w = waiter();
    let mut fr = FrameReader::new(len);
    let mut buf = vec![0u8; len];
    let mut got = 0;
    let mut unreleased = 0;
    let release = |rx: &mut R| {
        rx.release().expect("release");
        notify_if(rx.take_notify(), chan).expect("notify");
    };
    while got < count {
        let frame = match mode {
            Mode::PerMessage => {
                let f = fr.recv(rx, &mut buf).expect("recv");
                notify_if(rx.take_notify(), chan).expect("notify");
                f
            }
            Mode::Batched => fr.recv_deferred(rx, &mut buf).expect("recv"),
        };
        match frame {
            Some(Received::Frame(n)) => {
                assert_eq!(n, len);
                got += 1;
                unreleased += 1;
                if mode == Mode::Batched && unreleased == BATCH {
                    release(rx);
                    unreleased = 0;
                }
            }
            Some(Received::Skipped(_)) => panic!("no frame is over the maximum"),
            None => {
                if mode == Mode::Batched {
                    release(rx);
                    unreleased = 0;
                }
                w.wait_readable(rx, chan, TIMEOUT).expect("data in time");
            }
        }
    }
    release(rx);
}

/// This thread's CPU time (it does not advance while the thread is preempted or asleep).
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn cpu_time_wanted() -> bool {
    std::env::var("PORE_BENCH_CPU_TIME").is_ok_and(|v| v == "1")
}

/// Time for `count` frames from the producer (this thread) to the consumer (another one): wall
/// clock, or the busier thread's CPU time (see the module docs).
#[allow(clippy::too_many_arguments)]
fn stream<W, R>(
    tx: &mut W,
    tx_chan: &LoopbackChannel,
    rx: &mut R,
    rx_chan: &LoopbackChannel,
    payload: &[u8],
    count: u64,
    mode: Mode,
) -> Duration
where
    W: RingWriter<Error = pore_ring::RingError>,
    R: RingReader<Error = pore_ring::RingError> + Send,
{
    let start_line = Barrier::new(2);
    std::thread::scope(|s| {
        let consumer = s.spawn(|| {
            start_line.wait();
            let cpu = thread_cpu_time();
            consume(rx, rx_chan, payload.len(), count, mode);
            thread_cpu_time() - cpu
        });
        start_line.wait();
        let (start, cpu) = (Instant::now(), thread_cpu_time());
        produce(tx, tx_chan, payload, count, mode);
        let producer_cpu = thread_cpu_time() - cpu;
        let consumer_cpu = consumer.join().expect("consumer");
        if cpu_time_wanted() {
            producer_cpu.max(consumer_cpu)
        } else {
            start.elapsed()
        }
    })
}

fn v2(c: &mut Criterion) {
    let xen = Loopback::new();
    let (d1, d2) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
    let geometry = V2Geometry::symmetric_bytes(V2_BYTES).expect("geometry");
    let active = Pore::open_active(&d1, DomId(2), geometry.pages()).expect("grant");
    let info = active.info();
    let passive = Pore::open_passive(&d2, DomId(1), &info.refs, info.port).expect("map");
    // The granting side writes to the mapping side.
    let (mut tx, _) = V2Ring::active(&active, geometry, &info.refs[1..])
        .expect("create")
        .split();
    let (_, mut rx) = V2Ring::passive(&passive).expect("attach").split();
    for mode in [Mode::PerMessage, Mode::Batched] {
        let mut group = c.benchmark_group(format!("v2 16 KiB, {}", mode.name()));
        group
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(2))
            .sample_size(20);
        for size in SIZES {
            let payload = vec![0x5a; size];
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_function(BenchmarkId::from_parameter(size), |b| {
                b.iter_custom(|n| {
                    let (tc, rc) = (active.channel(), passive.channel());
                    stream(&mut tx, tc, &mut rx, rc, &payload, n, mode)
                })
            });
        }
        group.finish();
    }
    passive.close().expect("unmap");
    active.close().expect("end access");
}

fn ling(c: &mut Criterion) {
    let xen = Loopback::new();
    let (d1, d2) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
    let active = Pore::open_active(&d1, DomId(2), LING_PAGES).expect("grant");
    let info = active.info();
    let passive = Pore::open_passive(&d2, DomId(1), &info.refs, info.port).expect("map");
    // The granting side writes `output`, which the mapping side reads.
    let (mut tx, _) = LingRing::active(&active).expect("active").split();
    let (_, mut rx) = LingRing::passive(&passive).expect("passive").split();
    for mode in [Mode::PerMessage, Mode::Batched] {
        let mut group = c.benchmark_group(format!("LING 8 pages, {}", mode.name()));
        group
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(2))
            .sample_size(20);
        for size in SIZES {
            let payload = vec![0xa5; size];
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_function(BenchmarkId::from_parameter(size), |b| {
                b.iter_custom(|n| {
                    let (tc, rc) = (active.channel(), passive.channel());
                    stream(&mut tx, tc, &mut rx, rc, &payload, n, mode)
                })
            });
        }
        group.finish();
    }
    passive.close().expect("unmap");
    active.close().expect("end access");
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    v2(&mut c);
    ling(&mut c);
    c.final_summary();
}
