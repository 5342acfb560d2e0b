//! Cross-thread streaming of length-prefixed frames: our v2 ring (per message and batched) and
//! LING ring against rtrb, ringbuf, bbqueue and crossbeam-channel, in the same run; events per
//! message with suppression; blocking mode against busy-polling.
//!
//! A custom `harness = false` main: each cell is the median of `PORE_BENCH_ROUNDS` windows of
//! `PORE_BENCH_WINDOW_MS`, contenders interleaved round by round; producer pinned to CPU 0,
//! consumer to CPU 1. Prints markdown tables with ratios. `cargo bench -p pore-benches --bench
//! rings` (add `-- --quick` for very short windows).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bbqueue::BBBuffer;
use pore_benches::{cell, median_rate, stream, FrameParse, MmapPages, Rx, Tx};
use pore_core::loopback::{Loopback, LoopbackChannel};
use pore_core::{
    DomId, EventChannel, Events, GrantRef, Grants, SharedAccess, SharedMemory, SharedView,
};
use pore_ring::frame::{FrameReader, FrameWriter, Progress, Received};
use pore_ring::ling::LingRing;
use pore_ring::prelude::*;
use pore_ring::v2::{V2Geometry, V2Ring};
use pore_ring::wait::{StdClock, Waiter};
use pore_ring::RingError;
use ringbuf::traits::{Consumer as _, Producer as _, Split as _};

const SIZES: [usize; 4] = [16, 256, 4096, 65536];
const CAPS: [usize; 2] = [32 * 1024, 1024 * 1024];
const BATCH: usize = 64;

// ---- our rings -------------------------------------------------------------------------------

struct OurTx<W: RingWriter<Error = RingError> + Send> {
    w: W,
    fw: FrameWriter,
    /// Publish the index after every frame, check for a sleeping peer only at commits.
    publish_each: bool,
    batch: usize,
    staged: usize,
    events: Option<&'static Counting>,
}

impl<W: RingWriter<Error = RingError> + Send> OurTx<W> {
    fn new(w: W, batch: usize) -> Self {
        OurTx {
            w,
            fw: FrameWriter::new(usize::MAX),
            publish_each: false,
            batch,
            staged: 0,
            events: None,
        }
    }
    fn commit(&mut self) {
        self.fw.commit(&mut self.w).expect("commit");
        self.staged = 0;
        if self.w.take_notify() {
            if let Some(chan) = self.events {
                chan.notify().expect("notify");
            }
        }
    }
}

impl<W: RingWriter<Error = RingError> + Send> Tx for OurTx<W> {
    #[inline]
    fn try_send(&mut self, _frame: &[u8], payload: &[u8]) -> bool {
        match self.fw.send_deferred(&mut self.w, payload).expect("send") {
            Progress::Done => {
                self.staged += 1;
                if self.staged >= self.batch {
                    self.commit();
                } else if self.publish_each {
                    self.w.publish().expect("publish");
                }
                true
            }
            Progress::Pending => {
                self.commit();
                false
            }
        }
    }
    fn flush(&mut self) {
        self.commit();
    }
    fn finish(&mut self) {
        self.commit();
        while self.fw.stashed() > 0 {
            std::hint::spin_loop();
            self.commit();
        }
    }
}

struct OurRx<R: RingReader<Error = RingError> + Send> {
    r: R,
    fr: FrameReader,
    /// Release after every frame, check for a waiting peer only at full releases.
    publish_each: bool,
    batch: usize,
    unreleased: usize,
    events: Option<&'static Counting>,
}

impl<R: RingReader<Error = RingError> + Send> OurRx<R> {
    fn new(r: R, batch: usize) -> Self {
        OurRx {
            r,
            fr: FrameReader::new(1 << 20),
            publish_each: false,
            batch,
            unreleased: 0,
            events: None,
        }
    }
    fn release(&mut self) {
        self.r.release().expect("release");
        self.unreleased = 0;
        if self.r.take_notify() {
            if let Some(chan) = self.events {
                chan.notify().expect("notify");
            }
        }
    }
}

impl<R: RingReader<Error = RingError> + Send> Rx for OurRx<R> {
    #[inline]
    fn try_recv(&mut self, buf: &mut [u8]) -> bool {
        match self.fr.recv_deferred(&mut self.r, buf).expect("recv") {
            Some(Received::Frame(_)) => {
                self.unreleased += 1;
                if self.unreleased >= self.batch {
                    self.release();
                } else if self.publish_each {
                    self.r.publish().expect("publish");
                }
                true
            }
            Some(Received::Skipped(_)) => unreachable!(),
            None => {
                self.release();
                false
            }
        }
    }
    fn flush(&mut self) {
        self.release();
    }
}

// ---- contenders ------------------------------------------------------------------------------

struct RtrbTx(rtrb::Producer<u8>, usize);
impl Tx for RtrbTx {
    #[inline]
    fn try_send(&mut self, frame: &[u8], _: &[u8]) -> bool {
        let (pushed, _) = self.0.push_partial_slice(&frame[self.1..]);
        self.1 += pushed.len();
        if self.1 == frame.len() {
            self.1 = 0;
            true
        } else {
            false
        }
    }
}
struct RtrbRx(rtrb::Consumer<u8>, FrameParse);
impl Rx for RtrbRx {
    #[inline]
    fn try_recv(&mut self, buf: &mut [u8]) -> bool {
        let slots = self.0.slots();
        if slots == 0 {
            return false;
        }
        let chunk = self.0.read_chunk(slots).expect("slots");
        let (a, b) = chunk.as_slices();
        let (n, done) = self.1.feed(a, b, buf);
        chunk.commit(n);
        done
    }
}

struct RingbufTx(ringbuf::HeapProd<u8>, usize);
impl Tx for RingbufTx {
    #[inline]
    fn try_send(&mut self, frame: &[u8], _: &[u8]) -> bool {
        self.1 += self.0.push_slice(&frame[self.1..]);
        if self.1 == frame.len() {
            self.1 = 0;
            true
        } else {
            false
        }
    }
}
struct RingbufRx(ringbuf::HeapCons<u8>, FrameParse);
impl Rx for RingbufRx {
    #[inline]
    fn try_recv(&mut self, buf: &mut [u8]) -> bool {
        let (n, done) = {
            let (a, b) = self.0.as_slices();
            if a.is_empty() {
                return false;
            }
            self.1.feed(a, b, buf)
        };
        self.0.skip(n);
        done
    }
}

struct BbqTx<const N: usize>(bbqueue::Producer<'static, N>, usize);
impl<const N: usize> Tx for BbqTx<N> {
    #[inline]
    fn try_send(&mut self, frame: &[u8], _: &[u8]) -> bool {
        let rest = &frame[self.1..];
        if let Ok(mut g) = self.0.grant_max_remaining(rest.len()) {
            let k = g.buf().len().min(rest.len());
            g.buf()[..k].copy_from_slice(&rest[..k]);
            g.commit(k);
            self.1 += k;
        }
        if self.1 == frame.len() {
            self.1 = 0;
            true
        } else {
            false
        }
    }
}
struct BbqRx<const N: usize>(bbqueue::Consumer<'static, N>, FrameParse);
impl<const N: usize> Rx for BbqRx<N> {
    #[inline]
    fn try_recv(&mut self, buf: &mut [u8]) -> bool {
        match self.0.split_read() {
            Ok(g) => {
                let (a, b) = g.bufs();
                let (n, done) = self.1.feed(a, b, buf);
                g.release(n);
                done
            }
            Err(_) => false,
        }
    }
}

struct CbTx(crossbeam_channel::Sender<Vec<u8>>, Option<Vec<u8>>);
impl Tx for CbTx {
    #[inline]
    fn try_send(&mut self, _: &[u8], payload: &[u8]) -> bool {
        let msg = self.1.take().unwrap_or_else(|| payload.to_vec());
        match self.0.try_send(msg) {
            Ok(()) => true,
            Err(e) => {
                self.1 = Some(e.into_inner());
                false
            }
        }
    }
}
struct CbRx(crossbeam_channel::Receiver<Vec<u8>>);
impl Rx for CbRx {
    #[inline]
    fn try_recv(&mut self, _buf: &mut [u8]) -> bool {
        self.0.try_recv().is_ok()
    }
}

// ---- running ---------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Who {
    V2,
    V2Publish,
    V2Batched,
    V2At16K,
    V2LockOr,
    V2Foreign,
    V2ForeignPublish,
    V2ForeignPoll,
    V2ForeignBatched,
    Ling,
    Rtrb,
    Ringbuf,
    Bbqueue,
    Crossbeam,
    Memcpy,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::V2 => "pore v2, index + wake-up check per message",
            Who::V2Publish => "pore v2, index per message, wake-up check per 64 / when idle",
            Who::V2Batched => "pore v2, batched (64 frames/commit, coalescing writer)",
            Who::V2At16K => "pore v2 at 16 KiB, per message",
            Who::V2LockOr => "experiment: v2 per message, full barrier = locked RMW on a local",
            Who::V2Foreign => {
                "pore v2 on foreign pages (wide copies), index + wake-up check per message"
            }
            Who::V2ForeignPublish => {
                "pore v2 on foreign pages, index per message, wake-up check per 64 / when idle"
            }
            Who::V2ForeignPoll => {
                "pore v2 on foreign pages, polling mode (no wake flags), per message"
            }
            Who::V2ForeignBatched => {
                "pore v2 on foreign pages, batched (64 frames/commit, coalescing writer)"
            }
            Who::Ling => "pore LING (16 376 B), per message",
            Who::Rtrb => "rtrb 0.3 (chunk/slice API)",
            Who::Ringbuf => "ringbuf 0.4",
            Who::Bbqueue => "bbqueue 0.5",
            Who::Crossbeam => "crossbeam-channel 0.5, Vec<u8>",
            Who::Memcpy => "memcpy, one thread (limit)",
        }
    }
}

/// Experiment: the same view, but its full barrier is a locked read-modify-write on a local
/// (`lock xadd`, as Linux's `smp_mb()` on x86-64 uses a locked op on the stack) instead of
/// `mfence`. On x86 a locked instruction orders stores before later loads like `mfence`; in the
/// Rust memory model it is not a fence, so this is a measurement only, never ring code.
#[derive(Clone, Copy)]
struct LockOrFence<'a>(SharedView<'a>);

impl SharedAccess for LockOrFence<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn load_u32(&self, o: usize, ord: Ordering) -> u32 {
        self.0.load_u32(o, ord)
    }
    fn store_u32(&self, o: usize, v: u32, ord: Ordering) {
        self.0.store_u32(o, v, ord)
    }
    fn load_u8(&self, o: usize, ord: Ordering) -> u8 {
        self.0.load_u8(o, ord)
    }
    fn store_u8(&self, o: usize, v: u8, ord: Ordering) {
        self.0.store_u8(o, v, ord)
    }
    fn swap_u8(&self, o: usize, v: u8, ord: Ordering) -> u8 {
        self.0.swap_u8(o, v, ord)
    }
    fn fetch_or_u8(&self, o: usize, v: u8, ord: Ordering) -> u8 {
        self.0.fetch_or_u8(o, v, ord)
    }
    fn read_bytes(&self, o: usize, dst: &mut [u8]) {
        self.0.read_bytes(o, dst)
    }
    fn write_bytes(&self, o: usize, src: &[u8]) {
        self.0.write_bytes(o, src)
    }
    fn fence(&self, _ord: Ordering) {
        let local = AtomicU64::new(0);
        std::hint::black_box(&local).fetch_add(0, Ordering::SeqCst);
    }
}

fn loopback_pages(pages: usize) -> pore_core::loopback::LoopbackGrant {
    Loopback::new()
        .domain(DomId(1))
        .grant(DomId(2), pages)
        .expect("grant")
}

fn v2_pair(
    view: SharedView<'_>,
    geo: V2Geometry,
) -> (V2Ring<SharedView<'_>>, V2Ring<SharedView<'_>>) {
    let refs: Vec<GrantRef> = (0..geo.data_pages() as u32).map(GrantRef).collect();
    let a = V2Ring::active(view, geo, &refs).expect("create");
    let p = V2Ring::passive(view).expect("attach");
    (a, p)
}

fn leak_bbq<const N: usize>() -> (BbqTx<N>, BbqRx<N>) {
    let bb: &'static BBBuffer<N> = Box::leak(Box::new(BBBuffer::new()));
    let (p, c) = bb.try_split().expect("split");
    (BbqTx(p, 0), BbqRx(c, FrameParse::default()))
}

fn memcpy_rate(size: usize, cap: usize, window: Duration) -> f64 {
    let src = vec![1u8; cap.max(size)];
    let mut dst = vec![0u8; cap.max(size)];
    let start = std::time::Instant::now();
    let mut n = 0u64;
    let mut off = 0;
    while start.elapsed() < window {
        for _ in 0..64 {
            if off + size > cap.max(size) {
                off = 0;
            }
            dst[off..off + size].copy_from_slice(&src[off..off + size]);
            std::hint::black_box(&mut dst);
            off += size;
            n += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The copy routines alone, one thread, 1 MiB working set: GB/s into shared memory
/// (`write_bytes`) or out of it (`read_bytes`), or `memcpy` between private buffers. `foreign`
/// picks the wide volatile copy, otherwise the atomic word copy; both on `mmap` pages.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum CopyHow {
    WordIn,
    WordOut,
    WideIn,
    WideOut,
    Memcpy,
}

const COPY_SET: usize = 1 << 20;

fn copy_rate(how: CopyHow, size: usize, window: Duration) -> f64 {
    let foreign = matches!(how, CopyHow::WideIn | CopyHow::WideOut);
    let pages = MmapPages::new(COPY_SET, foreign);
    let view = pages.view();
    let src = vec![0x5au8; COPY_SET];
    let mut dst = vec![1u8; COPY_SET];
    // Fault every page in before timing.
    view.write_bytes(0, &src);
    view.read_bytes(0, &mut dst);
    let start = std::time::Instant::now();
    let cpu0 = pore_benches::thread_cpu_time();
    let (mut bytes, mut off) = (0u64, 0usize);
    while start.elapsed() < window {
        for _ in 0..64 {
            if off + size > COPY_SET {
                off = 0;
            }
            match how {
                CopyHow::WordIn | CopyHow::WideIn => view.write_bytes(off, &src[off..off + size]),
                CopyHow::WordOut | CopyHow::WideOut => {
                    view.read_bytes(off, &mut dst[off..off + size])
                }
                CopyHow::Memcpy => dst[off..off + size].copy_from_slice(&src[off..off + size]),
            }
            std::hint::black_box(&mut dst);
            off += size;
            bytes += size as u64;
        }
    }
    // Per CPU second of this thread, like the streaming cells (the machine is shared).
    let cpu = (pore_benches::thread_cpu_time() - cpu0).as_secs_f64();
    bytes as f64 / cpu.max(1e-9) / 1e9
}

fn copies(rounds: usize, window: Duration) {
    const COPY_SIZES: [usize; 3] = [256, 4096, 65536];
    println!("## Copy routines alone (one thread, 1 MiB working set, `mmap` pages), GB/s, median of {rounds}\n");
    println!("| routine | 256 B | 4 KiB | 64 KiB |\n|---|---|---|---|");
    for (how, name) in [
        (
            CopyHow::WordIn,
            "word copy (relaxed atomic u64), into shared memory",
        ),
        (CopyHow::WordOut, "word copy, out of shared memory"),
        (
            CopyHow::WideIn,
            "volatile vector copy (foreign memory), into shared memory",
        ),
        (
            CopyHow::WideOut,
            "volatile vector copy, out of shared memory",
        ),
        (CopyHow::Memcpy, "memcpy (private to private, the ceiling)"),
    ] {
        let cells: Vec<String> = COPY_SIZES
            .iter()
            .map(|&s| {
                let mut v: Vec<f64> = (0..rounds).map(|_| copy_rate(how, s, window)).collect();
                format!("{:.1}", median_rate(&mut v))
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    println!();
}

fn run(who: Who, size: usize, cap: usize, window: Duration) -> f64 {
    run_mode(who, size, cap, window, false)
}

/// Streaming rates per wall-clock second instead of per CPU second (for blocking vs busy-poll,
/// where a sleeping thread uses no CPU).
static WALL_CLOCK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn drive(tx: &mut dyn Tx, rx: &mut dyn Rx, size: usize, window: Duration, same: bool) -> f64 {
    if same {
        pore_benches::same_thread(tx, rx, size, window)
    } else if WALL_CLOCK.load(Ordering::Relaxed) {
        stream(tx, rx, size, window).wall_rate()
    } else {
        stream(tx, rx, size, window).rate()
    }
}

fn run_mode(who: Who, size: usize, cap: usize, window: Duration, same: bool) -> f64 {
    match who {
        Who::V2 | Who::V2Batched | Who::V2At16K | Who::V2Publish => {
            let cap = if who == Who::V2At16K { 16384 } else { cap };
            let geo = V2Geometry::symmetric_bytes(cap).expect("geometry");
            let pages = loopback_pages(geo.pages());
            let (a, p) = v2_pair(pages.view(), geo);
            let batch = if matches!(who, Who::V2Batched | Who::V2Publish) {
                BATCH
            } else {
                1
            };
            let mut tx = OurTx::new(a.split().0, batch);
            let mut rx = OurRx::new(p.split().1, batch);
            tx.publish_each = who == Who::V2Publish;
            if who == Who::V2Batched {
                // Small frames gathered privately and copied into the ring 256 bytes at a time.
                tx.fw = FrameWriter::coalescing(usize::MAX);
            }
            rx.publish_each = who == Who::V2Publish;
            drive(&mut tx, &mut rx, size, window, same)
        }
        Who::V2Foreign | Who::V2ForeignPublish | Who::V2ForeignPoll | Who::V2ForeignBatched => {
            let geo = V2Geometry::symmetric_bytes(cap).expect("geometry");
            let pages = MmapPages::new(geo.region_len(), true);
            let (mut a, mut p) = v2_pair(pages.view(), geo);
            if who == Who::V2ForeignPoll {
                a.set_polling(true);
                p.set_polling(true);
            }
            let batch = if matches!(who, Who::V2ForeignBatched | Who::V2ForeignPublish) {
                BATCH
            } else {
                1
            };
            let mut tx = OurTx::new(a.split().0, batch);
            let mut rx = OurRx::new(p.split().1, batch);
            tx.publish_each = who == Who::V2ForeignPublish;
            rx.publish_each = who == Who::V2ForeignPublish;
            if who == Who::V2ForeignBatched {
                tx.fw = FrameWriter::coalescing(usize::MAX);
            }
            drive(&mut tx, &mut rx, size, window, same)
        }
        Who::V2LockOr => {
            let geo = V2Geometry::symmetric_bytes(cap).expect("geometry");
            let pages = loopback_pages(geo.pages());
            let view = LockOrFence(pages.view());
            let refs: Vec<GrantRef> = (0..geo.data_pages() as u32).map(GrantRef).collect();
            let a = V2Ring::active(view, geo, &refs).expect("create");
            let p = V2Ring::passive(view).expect("attach");
            let mut tx = OurTx::new(a.split().0, 1);
            let mut rx = OurRx::new(p.split().1, 1);
            drive(&mut tx, &mut rx, size, window, same)
        }
        Who::Ling => {
            let pages = loopback_pages(8);
            let a = LingRing::active(pages.view()).expect("ling");
            let p = LingRing::passive(pages.view()).expect("ling");
            let mut tx = OurTx::new(a.split().0, 1);
            let mut rx = OurRx::new(p.split().1, 1);
            drive(&mut tx, &mut rx, size, window, same)
        }
        Who::Rtrb => {
            let (p, c) = rtrb::RingBuffer::new(cap);
            drive(
                &mut RtrbTx(p, 0),
                &mut RtrbRx(c, FrameParse::default()),
                size,
                window,
                same,
            )
        }
        Who::Ringbuf => {
            let (p, c) = ringbuf::HeapRb::<u8>::new(cap).split();
            drive(
                &mut RingbufTx(p, 0),
                &mut RingbufRx(c, FrameParse::default()),
                size,
                window,
                same,
            )
        }
        Who::Bbqueue => {
            if cap == 32 * 1024 {
                let (mut t, mut r) = leak_bbq::<{ 32 * 1024 }>();
                drive(&mut t, &mut r, size, window, same)
            } else {
                let (mut t, mut r) = leak_bbq::<{ 1024 * 1024 }>();
                drive(&mut t, &mut r, size, window, same)
            }
        }
        Who::Crossbeam => {
            let slots = (cap / (size + 4)).max(1);
            let (s, r) = crossbeam_channel::bounded(slots);
            drive(&mut CbTx(s, None), &mut CbRx(r), size, window, same)
        }
        Who::Memcpy => memcpy_rate(size, cap, window),
    }
}

/// Blocking streaming over v2 with loopback event channels: returns (msgs/s, events/msg).
fn blocking(size: usize, cap: usize, spin: Duration, window: Duration) -> (f64, f64) {
    let xen = Loopback::new();
    let (d1, d2) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
    let events: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let l1 = d1.alloc_unbound(DomId(2)).expect("port");
    let l2 = d2.bind_interdomain(DomId(1), l1.port()).expect("bind");
    let c1: &'static Counting = Box::leak(Box::new(Counting {
        inner: l1,
        count: events,
    }));
    let c2: &'static Counting = Box::leak(Box::new(Counting {
        inner: l2,
        count: events,
    }));
    let geo = V2Geometry::symmetric_bytes(cap).expect("geometry");
    let pages = d1.grant(DomId(2), geo.pages()).expect("grant");
    let (a, p) = v2_pair(pages.view(), geo);
    let mut tx = Blocking {
        inner: OurTx::new(a.split().0, 1),
        chan: c1,
        waiter: Waiter::new(StdClock::new(), spin),
    };
    tx.inner.events = Some(c1);
    let mut rx = BlockingRx {
        inner: OurRx::new(p.split().1, 1),
        chan: c2,
        waiter: Waiter::new(StdClock::new(), spin),
    };
    rx.inner.events = Some(c2);
    let s = stream(&mut tx, &mut rx, size, window);
    (
        s.wall_rate(),
        events.load(Ordering::Relaxed) as f64 / s.msgs.max(1) as f64,
    )
}

/// A loopback event channel that counts every notification (including those the wait helper
/// sends itself).
struct Counting {
    inner: LoopbackChannel,
    count: &'static AtomicU64,
}

impl EventChannel for Counting {
    type Error = pore_core::CoreError;
    fn port(&self) -> pore_core::Port {
        self.inner.port()
    }
    fn notify(&self) -> Result<(), Self::Error> {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.inner.notify()
    }
    fn try_wait(&self) -> Result<bool, Self::Error> {
        self.inner.try_wait()
    }
    fn wait(&self, timeout: Duration) -> Result<pore_core::WaitOutcome, Self::Error> {
        self.inner.wait(timeout)
    }
    fn close(self) -> Result<(), Self::Error> {
        self.inner.close()
    }
}

struct Blocking<W: RingWriter<Error = pore_ring::RingError> + Send> {
    inner: OurTx<W>,
    chan: &'static Counting,
    waiter: Waiter<StdClock>,
}
impl<W: RingWriter<Error = pore_ring::RingError> + Send> Tx for Blocking<W> {
    fn try_send(&mut self, frame: &[u8], payload: &[u8]) -> bool {
        if self.inner.try_send(frame, payload) {
            return true;
        }
        let _ = self
            .waiter
            .wait_writable(&mut self.inner.w, self.chan, Duration::from_millis(100));
        false
    }
    fn flush(&mut self) {
        self.inner.flush();
    }
    fn finish(&mut self) {
        self.inner.finish();
    }
}
struct BlockingRx<R: RingReader<Error = pore_ring::RingError> + Send> {
    inner: OurRx<R>,
    chan: &'static Counting,
    waiter: Waiter<StdClock>,
}
impl<R: RingReader<Error = pore_ring::RingError> + Send> Rx for BlockingRx<R> {
    fn try_recv(&mut self, buf: &mut [u8]) -> bool {
        if self.inner.try_recv(buf) {
            return true;
        }
        let _ = self
            .waiter
            .wait_readable(&mut self.inner.r, self.chan, Duration::from_millis(2));
        false
    }
    fn flush(&mut self) {
        self.inner.flush();
    }
}

/// Prints the goal ratios from per-cell rates `get`.
fn print_ratios(title: &str, get: &dyn Fn(Who, usize, usize) -> f64) {
    println!("## Ratios against the goals ({title})\n");
    println!("| goal | 16 B | 256 B | 4 KiB | 64 KiB |\n|---|---|---|---|---|");
    for (who, label, goal) in [
        (Who::V2, "v2 index + check per message", "≥ 1.0"),
        (
            Who::V2Publish,
            "v2 index per message, check per 64",
            "≥ 1.0",
        ),
        (
            Who::V2Foreign,
            "v2 foreign pages, wake flags, index + check per message",
            "≥ 0.5 at 16 B, ≥ 1.0 from 4 KiB",
        ),
        (
            Who::V2ForeignPublish,
            "v2 foreign pages, wake flags, index per message, check per 64",
            "as above",
        ),
        (
            Who::V2ForeignPoll,
            "v2 foreign pages, polling, no wake flags",
            "≥ 1.0",
        ),
    ] {
        for &cap in &CAPS {
            let cells: Vec<String> = SIZES
                .iter()
                .map(|&s| {
                    let best = [Who::Rtrb, Who::Ringbuf, Who::Bbqueue]
                        .iter()
                        .map(|&w| get(w, s, cap))
                        .fold(0.0, f64::max);
                    format!("{:.2}×", get(who, s, cap) / best)
                })
                .collect();
            println!(
                "| {label} / best byte ring, {} KiB (goal {goal}) | {} |",
                cap / 1024,
                cells.join(" | ")
            );
        }
    }
    for &cap in &CAPS {
        let cells: Vec<String> = SIZES
            .iter()
            .map(|&s| {
                format!(
                    "{:.2}×",
                    get(Who::V2Batched, s, cap) / get(Who::Rtrb, s, cap)
                )
            })
            .collect();
        println!(
            "| v2 batched / rtrb, {} KiB (goal ≥ 3.0 at 16 B) | {} |",
            cap / 1024,
            cells.join(" | ")
        );
        let cells: Vec<String> = SIZES
            .iter()
            .map(|&s| {
                format!(
                    "{:.2}×",
                    get(Who::V2ForeignBatched, s, cap) / get(Who::Rtrb, s, cap)
                )
            })
            .collect();
        println!(
            "| v2 foreign batched / rtrb, {} KiB (goal ≥ 1.3 at 16 B) | {} |",
            cap / 1024,
            cells.join(" | ")
        );
    }
    let cells: Vec<String> = SIZES
        .iter()
        .map(|&s| {
            format!(
                "{:.2}×",
                get(Who::Ling, s, CAPS[0]) / get(Who::V2At16K, s, CAPS[0])
            )
        })
        .collect();
    println!(
        "| LING / v2 at 16 KiB (goal ≥ 0.9) | {} |",
        cells.join(" | ")
    );
    for &cap in &CAPS {
        let cells: Vec<String> = SIZES
            .iter()
            .map(|&s| format!("{:.2}×", get(Who::Crossbeam, s, cap) / get(Who::V2, s, cap)))
            .collect();
        println!(
            "| crossbeam-channel / v2, {} KiB (own line) | {} |",
            cap / 1024,
            cells.join(" | ")
        );
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // Count the CPUs before anything pins this thread.
    let _ = pore_benches::cpus();
    let quick = std::env::args().any(|a| a == "--quick");
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us without it: smoke only.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let window = Duration::from_millis(env_or(
        "PORE_BENCH_WINDOW_MS",
        if smoke {
            2
        } else if quick {
            10
        } else {
            40
        },
    ));
    let rounds = env_or(
        "PORE_BENCH_ROUNDS",
        if smoke {
            1
        } else if quick {
            3
        } else {
            5
        },
    ) as usize;
    println!(
        "# pore rings: cross-thread streaming of length-prefixed frames\n\n{} CPUs, producer on CPU 0, consumer on CPU 1; median of {rounds} windows of {} ms per cell, contenders interleaved. Cells: M msg/s · GB/s (payload) per second of the busier thread's CPU time (the machine is shared; wall-clock rates are dominated by preemption, see `Sample::rate`).\n",
        pore_benches::cpus(),
        window.as_millis()
    );
    let sections = std::env::var("PORE_BENCH_SECTIONS")
        .unwrap_or_else(|_| "copies,stream,same,blocking".into());
    if sections.contains("copies") {
        copies(rounds, window);
    }
    let contenders = [
        Who::V2,
        Who::V2Publish,
        Who::V2Batched,
        Who::V2Foreign,
        Who::V2ForeignPublish,
        Who::V2ForeignPoll,
        Who::V2ForeignBatched,
        Who::Rtrb,
        Who::Ringbuf,
        Who::Bbqueue,
        Who::Crossbeam,
        Who::Memcpy,
    ];
    // `PORE_BENCH_WHO=Bbqueue,V2ForeignPoll` (names as in `Who`), `PORE_BENCH_SIZES=16` and
    // `PORE_BENCH_CAPS=32768` narrow the stream section (the first two also the same-thread
    // one), e.g. to run one cell under a profiler.
    let only = |var: &str, name: String| {
        std::env::var(var)
            .map(|v| v.split(',').any(|w| w == name))
            .unwrap_or(true)
    };
    let contenders: Vec<Who> = contenders
        .into_iter()
        .filter(|w| only("PORE_BENCH_WHO", format!("{w:?}")))
        .collect();
    let extra: Vec<Who> = [Who::Ling, Who::V2At16K]
        .into_iter()
        .filter(|w| only("PORE_BENCH_WHO", format!("{w:?}")))
        .collect();
    let sizes: Vec<usize> = SIZES
        .into_iter()
        .filter(|s| only("PORE_BENCH_SIZES", s.to_string()))
        .collect();
    let caps: Vec<usize> = CAPS
        .into_iter()
        .filter(|c| only("PORE_BENCH_CAPS", c.to_string()))
        .collect();
    let mut results = std::collections::HashMap::<(Who, usize, usize), Vec<f64>>::new();
    for _ in 0..if sections.contains("stream") {
        rounds
    } else {
        0
    } {
        for &cap in &caps {
            for &size in &sizes {
                for &who in &contenders {
                    results
                        .entry((who, size, cap))
                        .or_default()
                        .push(run(who, size, cap, window));
                }
                if cap == CAPS[0] {
                    for &who in &extra {
                        results
                            .entry((who, size, cap))
                            .or_default()
                            .push(run(who, size, cap, window));
                    }
                }
            }
        }
    }
    let best_samples: std::collections::HashMap<(Who, usize, usize), f64> = results
        .iter()
        .map(|(k, v)| (*k, v.iter().copied().fold(0.0, f64::max)))
        .collect();
    let med: std::collections::HashMap<(Who, usize, usize), f64> = results
        .into_iter()
        .map(|(k, mut v)| (k, median_rate(&mut v)))
        .collect();
    let get = |who, size, cap| med.get(&(who, size, cap)).copied().unwrap_or(0.0);

    for &cap in if sections.contains("stream") {
        &CAPS[..]
    } else {
        &[]
    } {
        println!("## {} KiB per direction\n", cap / 1024);
        println!("| contender | 16 B | 256 B | 4 KiB | 64 KiB |\n|---|---|---|---|---|");
        let mut rows: Vec<Who> = contenders.to_vec();
        if cap == CAPS[0] {
            rows.splice(
                2.min(rows.len())..2.min(rows.len()),
                extra.iter().rev().copied(),
            );
        }
        for who in rows {
            let cells: Vec<String> = SIZES.iter().map(|&s| cell(get(who, s, cap), s)).collect();
            println!("| {} | {} |", who.name(), cells.join(" | "));
        }
        println!();
    }

    let narrowed = ["PORE_BENCH_WHO", "PORE_BENCH_SIZES", "PORE_BENCH_CAPS"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if sections.contains("stream") && !narrowed {
        print_ratios("medians", &get);
        let best: std::collections::HashMap<(Who, usize, usize), f64> = best_samples;
        let get_best = |who, size, cap| best.get(&(who, size, cap)).copied().unwrap_or(0.0);
        println!();
        print_ratios(
            "best window of each cell: the least disturbed by other load on this shared machine",
            &get_best,
        );
    }
    if sections.contains("same") {
        println!("\n## Same-thread cost (bursts of 64 frames sent then received on one thread, 32 KiB; no cross-core traffic; per CPU-second, least sensitive to a loaded machine), M msg/s\n");
        println!("| contender | 16 B | 256 B | 4 KiB | 64 KiB |\n|---|---|---|---|---|");
        for who in [
            Who::V2,
            Who::V2LockOr,
            Who::V2Foreign,
            Who::V2ForeignPoll,
            Who::V2Batched,
            Who::V2ForeignBatched,
            Who::V2At16K,
            Who::Ling,
            Who::Rtrb,
            Who::Ringbuf,
            Who::Bbqueue,
            Who::Crossbeam,
        ]
        .into_iter()
        .filter(|w| only("PORE_BENCH_WHO", format!("{w:?}")))
        {
            let cells: Vec<String> = SIZES
                .iter()
                .map(|&s| {
                    if !sizes.contains(&s) {
                        return "-".to_string();
                    }
                    let mut v: Vec<f64> = (0..rounds)
                        .map(|_| run_mode(who, s, CAPS[0], window, true))
                        .collect();
                    format!("{:.2}", median_rate(&mut v) / 1e6)
                })
                .collect();
            println!("| {} | {} |", who.name(), cells.join(" | "));
        }
    }
    if !sections.contains("blocking") {
        return;
    }
    println!("\n## Blocking (consumer and producer sleep on loopback event channels) vs busy-poll, v2 32 KiB, per message, wall-clock rates\n");
    println!("| size | busy-poll M msg/s | blocking, spin 20 µs, M msg/s | ratio (goal ≥ 0.8) | events/msg, spin 20 µs (goal ≤ 0.01) | blocking, no spin, M msg/s | events/msg, no spin |\n|---|---|---|---|---|---|---|");
    for &size in &[16usize, 256, 4096, 65536] {
        let mut busy = Vec::new();
        let mut spun = Vec::new();
        let mut spun_ev = Vec::new();
        let mut slept = Vec::new();
        let mut slept_ev = Vec::new();
        for _ in 0..rounds {
            WALL_CLOCK.store(true, Ordering::Relaxed);
            busy.push(run(Who::V2, size, CAPS[0], window));
            WALL_CLOCK.store(false, Ordering::Relaxed);
            let (r, e) = blocking(size, CAPS[0], Duration::from_micros(20), window);
            spun.push(r);
            spun_ev.push(e);
            let (r, e) = blocking(size, CAPS[0], Duration::ZERO, window);
            slept.push(r);
            slept_ev.push(e);
        }
        let (b, s, se, z, ze) = (
            median_rate(&mut busy),
            median_rate(&mut spun),
            median_rate(&mut spun_ev),
            median_rate(&mut slept),
            median_rate(&mut slept_ev),
        );
        println!(
            "| {size} B | {:.2} | {:.2} | {:.2}× | {:.4} | {:.3} | {:.3} |",
            b / 1e6,
            s / 1e6,
            s / b,
            se,
            z / 1e6,
            ze
        );
    }
    println!("\nWithout suppression (LING's rule: poke after every write and every read) a per-message stream sends ≥ 2 events per message (one per publication each way).");
}
