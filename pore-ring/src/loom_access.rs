//! A loom-backed [`SharedAccess`] (only under `--cfg loom`): loom cannot run on raw pages, so
//! the ring code is modelled against this (D2).
//!
//! Memory is an array of loom `AtomicU32` words; byte accesses are done on the containing word
//! (compare-exchange for stores), byte copies word by word, so every access is a loom atomic
//! operation that loom can reorder and interleave.

use core::sync::atomic::Ordering;
use loom::sync::atomic::AtomicU32;
use pore_core::SharedAccess;
use std::vec::Vec;

/// Word-addressed shared memory for loom models.
#[derive(Debug)]
pub struct LoomMemory {
    words: Vec<AtomicU32>,
}

impl LoomMemory {
    /// `bytes` (rounded up to words) of zeroed memory.
    pub fn new(bytes: usize) -> Self {
        LoomMemory {
            words: (0..bytes.div_ceil(4)).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn word(&self, offset: usize) -> (&AtomicU32, u32) {
        (&self.words[offset / 4], 8 * (offset % 4) as u32)
    }

    fn update_byte(&self, offset: usize, order: Ordering, f: impl Fn(u8) -> u8) -> u8 {
        let (w, shift) = self.word(offset);
        let mut cur = w.load(Ordering::Relaxed);
        loop {
            let old = (cur >> shift) as u8;
            let new = (cur & !(0xff << shift)) | (u32::from(f(old)) << shift);
            match w.compare_exchange(cur, new, order, Ordering::Relaxed) {
                Ok(_) => return old,
                Err(now) => cur = now,
            }
        }
    }
}

impl SharedAccess for LoomMemory {
    fn len(&self) -> usize {
        self.words.len() * 4
    }

    fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        assert_eq!(offset % 4, 0, "misaligned u32");
        self.words[offset / 4].load(order)
    }

    fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        assert_eq!(offset % 4, 0, "misaligned u32");
        self.words[offset / 4].store(value, order)
    }

    fn load_u8(&self, offset: usize, order: Ordering) -> u8 {
        let (w, shift) = self.word(offset);
        (w.load(order) >> shift) as u8
    }

    fn store_u8(&self, offset: usize, value: u8, order: Ordering) {
        self.update_byte(offset, order, |_| value);
    }

    fn swap_u8(&self, offset: usize, value: u8, order: Ordering) -> u8 {
        self.update_byte(offset, order, |_| value)
    }

    fn fetch_or_u8(&self, offset: usize, bits: u8, order: Ordering) -> u8 {
        let (w, shift) = self.word(offset);
        (w.fetch_or(u32::from(bits) << shift, order) >> shift) as u8
    }

    fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        let mut i = 0;
        while i < dst.len() {
            let off = offset + i;
            let (w, shift) = self.word(off);
            let word = w.load(Ordering::Relaxed);
            let mut s = shift;
            while s < 32 && i < dst.len() {
                dst[i] = (word >> s) as u8;
                s += 8;
                i += 1;
            }
        }
    }

    fn write_bytes(&self, offset: usize, src: &[u8]) {
        let mut i = 0;
        while i < src.len() {
            let off = offset + i;
            let (w, shift) = self.word(off);
            let mut mask = 0u32;
            let mut bits = 0u32;
            let mut s = shift;
            while s < 32 && i < src.len() {
                mask |= 0xff << s;
                bits |= u32::from(src[i]) << s;
                s += 8;
                i += 1;
            }
            let mut cur = w.load(Ordering::Relaxed);
            loop {
                let new = (cur & !mask) | bits;
                match w.compare_exchange(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => break,
                    Err(now) => cur = now,
                }
            }
        }
    }

    fn fence(&self, order: Ordering) {
        loom::sync::atomic::fence(order);
    }
}

#[cfg(test)]
mod tests {
    //! Loom models of the v2 index publication and notification-suppression protocol: the same
    //! `ByteProducer`/`ByteConsumer` code the v2 ring runs, on a tiny layout (8-byte ring) so
    //! loom can explore it. A lost wake-up shows up as a loom deadlock (a side waiting on its
    //! event forever).

    use super::LoomMemory;
    use crate::free::FreeLayout;
    use crate::{ByteConsumer, ByteProducer, RingReader, RingWriter};
    use core::sync::atomic::Ordering;
    use loom::sync::Notify;
    use std::sync::Arc;
    use std::vec;
    use std::vec::Vec;

    const LAYOUT: FreeLayout = FreeLayout {
        data: 16,
        size: 4,
        prod: 0,
        cons: 4,
        want_write: Some(8),
        want_read: Some(12),
    };

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        if b.preemption_bound.is_none() {
            b.preemption_bound = Some(3);
        }
        b.check(f);
    }

    /// The consumer's side of the one-way models: reads until two bytes came, sleeping on
    /// `to_rx` whenever the ring is empty after asking to be woken.
    fn receive_two<A: pore_core::SharedAccess>(
        rx: &mut ByteConsumer<A>,
        to_rx: &Notify,
    ) -> Vec<u8> {
        let mut got = vec![];
        while got.len() < 2 {
            let mut buf = [0u8; 2];
            let n = RingReader::read(rx, &mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            if got.len() < 2 && n == 0 && !RingReader::prepare_wait(rx).unwrap() {
                to_rx.wait();
            }
        }
        got
    }

    fn pair() -> (ByteProducer<Arc<LoomMemory>>, ByteConsumer<Arc<LoomMemory>>) {
        let mem = Arc::new(LoomMemory::new(32));
        (
            ByteProducer::new(mem.clone(), LAYOUT, 0, 0),
            ByteConsumer::new(mem, LAYOUT, 0, 0),
        )
    }

    /// The consumer sleeps when empty; the producer's writes (with suppression, and the fence
    /// in `commit`) always wake it.
    #[test]
    fn loom_no_lost_wakeup_reader() {
        producer_commits_consumer_sleeps(|mem| mem);
    }

    /// Both sides block: the producer on a full ring (4 bytes, 6 to send), the consumer on an
    /// empty one; no lost wake-up either way, and the bytes arrive in order.
    #[test]
    fn loom_no_lost_wakeup_both_ways() {
        both_ways(3);
    }

    /// As above with one-byte reads: the consumer's releases mostly stay under the half-ring
    /// threshold for waking the producer.
    #[test]
    fn loom_no_lost_wakeup_threshold() {
        both_ways(1);
    }

    fn both_ways(read_size: usize) {
        model(move || {
            let (mut tx, mut rx) = pair();
            let to_rx = Arc::new(Notify::new());
            let to_tx = Arc::new(Notify::new());
            let t = {
                let (to_rx, to_tx) = (to_rx.clone(), to_tx.clone());
                loom::thread::spawn(move || {
                    let data = [1u8, 2, 3, 4, 5, 6];
                    let mut sent = 0;
                    while sent < data.len() {
                        let n = tx.write(&data[sent..]).unwrap();
                        sent += n;
                        if tx.take_notify() {
                            to_rx.notify();
                        }
                        if n == 0 && !RingWriter::prepare_wait(&mut tx).unwrap() {
                            to_tx.wait();
                        }
                    }
                })
            };
            let mut got = vec![];
            while got.len() < 6 {
                let mut buf = [0u8; 3];
                let n = RingReader::read(&mut rx, &mut buf[..read_size]).unwrap();
                got.extend_from_slice(&buf[..n]);
                if rx.take_notify() {
                    to_tx.notify();
                }
                if got.len() < 6 && n == 0 && !RingReader::prepare_wait(&mut rx).unwrap() {
                    to_rx.wait();
                }
            }
            assert_eq!(got, [1, 2, 3, 4, 5, 6]);
            t.join().unwrap();
        });
    }

    /// Index published per byte with `publish` (no wake-up check), checked once by the final
    /// `commit`: a consumer that fell asleep in between is still woken.
    #[test]
    fn loom_publish_then_commit_wakes() {
        model(|| {
            let (mut tx, mut rx) = pair();
            let to_rx = Arc::new(Notify::new());
            let t = {
                let to_rx = to_rx.clone();
                loom::thread::spawn(move || {
                    for b in [1u8, 2] {
                        tx.write_deferred(&[b]).unwrap();
                        RingWriter::publish(&mut tx).unwrap();
                    }
                    tx.commit().unwrap();
                    if tx.take_notify() {
                        to_rx.notify();
                    }
                })
            };
            assert_eq!(receive_two(&mut rx, &to_rx), [1, 2]);
            t.join().unwrap();
        });
    }

    /// `LoomMemory` whose fences do nothing: the mutation that shows which fences are needed.
    #[derive(Clone)]
    struct Fenceless(Arc<LoomMemory>);

    impl pore_core::SharedAccess for Fenceless {
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
        fn fence(&self, _ord: Ordering) {}
    }

    /// The producer sleeps on a full ring; the consumer busy-polls and never sleeps, so the
    /// only fence it runs is the one in `release` (taken only at the half-ring threshold).
    fn consumer_polls_producer_sleeps<C: pore_core::SharedAccess + Send + 'static>(
        consumer_mem: impl Fn(Arc<LoomMemory>) -> C + Sync + Send + 'static,
    ) {
        model(move || {
            let mem = Arc::new(LoomMemory::new(32));
            let mut tx = ByteProducer::new(mem.clone(), LAYOUT, 0, 0);
            let mut rx = ByteConsumer::new(consumer_mem(mem), LAYOUT, 0, 0);
            let to_tx = Arc::new(Notify::new());
            let t = {
                let to_tx = to_tx.clone();
                loom::thread::spawn(move || {
                    let data = [1u8, 2, 3, 4, 5, 6];
                    let mut sent = 0;
                    while sent < data.len() {
                        let n = tx.write(&data[sent..]).unwrap();
                        sent += n;
                        if n == 0 && !RingWriter::prepare_wait(&mut tx).unwrap() {
                            to_tx.wait();
                        }
                    }
                })
            };
            let mut got = vec![];
            while got.len() < 6 {
                let mut buf = [0u8; 4];
                let n = RingReader::read(&mut rx, &mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                if rx.take_notify() {
                    to_tx.notify();
                }
                if n == 0 {
                    loom::thread::yield_now();
                }
            }
            assert_eq!(got, [1, 2, 3, 4, 5, 6]);
            t.join().unwrap();
        });
    }

    /// The consumer's release fence (taken only from the half-ring threshold on) suffices.
    #[test]
    fn loom_release_fence_wakes_the_producer() {
        consumer_polls_producer_sleeps(|mem| mem);
    }

    /// Mutation: without the release fence loom finds the producer asleep forever. The
    /// consumer then polls an empty ring without end, which loom reports as a model that never
    /// finishes (the same model with the fence, above, always finishes).
    #[test]
    #[should_panic(expected = "maximum number of branches")]
    fn loom_release_without_fence_loses_a_wakeup() {
        consumer_polls_producer_sleeps(Fenceless);
    }

    /// The consumer sleeps on an empty ring; the producer never waits (the ring has room), so
    /// the only fence it runs is the one in `commit`.
    fn producer_commits_consumer_sleeps<P: pore_core::SharedAccess + Send + 'static>(
        producer_mem: impl Fn(Arc<LoomMemory>) -> P + Sync + Send + 'static,
    ) {
        model(move || {
            let mem = Arc::new(LoomMemory::new(32));
            let mut tx = ByteProducer::new(producer_mem(mem.clone()), LAYOUT, 0, 0);
            let mut rx = ByteConsumer::new(mem, LAYOUT, 0, 0);
            let to_rx = Arc::new(Notify::new());
            let t = {
                let to_rx = to_rx.clone();
                loom::thread::spawn(move || {
                    for b in [1u8, 2] {
                        assert_eq!(tx.write(&[b]).unwrap(), 1);
                        if tx.take_notify() {
                            to_rx.notify();
                        }
                    }
                })
            };
            assert_eq!(receive_two(&mut rx, &to_rx), [1, 2]);
            t.join().unwrap();
        });
    }

    /// Mutation: without the commit fence loom finds the consumer asleep forever (the positive
    /// case is `loom_no_lost_wakeup_reader`).
    #[test]
    #[should_panic(expected = "deadlock")]
    fn loom_commit_without_fence_loses_a_wakeup() {
        producer_commits_consumer_sleeps(Fenceless);
    }

    /// Polling mode: no fence anywhere (both halves on fenceless memory), no notification, no
    /// sleeping; every byte still arrives intact and in order through a ring smaller than the
    /// stream.
    #[test]
    fn loom_polling_needs_no_fence() {
        model(|| {
            let mem = Arc::new(LoomMemory::new(32));
            let mut tx = ByteProducer::new(Fenceless(mem.clone()), LAYOUT, 0, 0);
            let mut rx = ByteConsumer::new(Fenceless(mem), LAYOUT, 0, 0);
            tx.set_polling(true);
            rx.set_polling(true);
            let t = loom::thread::spawn(move || {
                let data = [1u8, 2, 3, 4, 5, 6];
                let mut sent = 0;
                while sent < data.len() {
                    let n = tx.write(&data[sent..]).unwrap();
                    assert!(!tx.take_notify());
                    sent += n;
                    if n == 0 {
                        loom::thread::yield_now();
                    }
                }
                assert!(RingWriter::prepare_wait(&mut tx).is_err());
            });
            let mut got = vec![];
            while got.len() < 6 {
                let mut buf = [0u8; 4];
                let n = RingReader::read(&mut rx, &mut buf).unwrap();
                assert!(!rx.take_notify());
                got.extend_from_slice(&buf[..n]);
                if n == 0 {
                    loom::thread::yield_now();
                }
            }
            assert_eq!(got, [1, 2, 3, 4, 5, 6]);
            t.join().unwrap();
        });
    }

    /// Batched publication: bytes staged by `write_deferred` become visible only at `commit`,
    /// and everything committed is read intact.
    #[test]
    fn loom_batched_commit() {
        model(|| {
            let (mut tx, mut rx) = pair();
            let t = loom::thread::spawn(move || {
                tx.write_deferred(&[7, 8]).unwrap();
                tx.write_deferred(&[9]).unwrap();
                tx.commit().unwrap();
            });
            let mut buf = [0u8; 4];
            let n = RingReader::read(&mut rx, &mut buf).unwrap();
            assert!(n == 0 || (n == 3 && buf[..3] == [7, 8, 9]), "saw {n} bytes");
            t.join().unwrap();
        });
    }
}
