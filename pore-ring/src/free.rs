//! SPSC halves over free-running `u32` indices masked by a power-of-two size: the engine of the
//! xenstore ring and of the v2 straw ring.
//!
//! Each half keeps its own index privately (the shared copy is write-only for it:
//! `docs/protocol-facts.md` §6, rule 2) and a cached copy of the peer's index, refreshed (read
//! once, validated) only when the cache says the ring is full or empty. A peer index outside
//! the window the protocol allows breaks the half for good.

use core::cell::Cell;
use core::sync::atomic::Ordering;

use pore_core::SharedAccess;

use crate::window::{
    lend_read, lend_write, ReadInPlace, SharedSlice, SharedSliceMut, WriteInPlace,
};
use crate::{RingError, RingReader, RingWriter};

/// Where one direction of a free-running ring lives in its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FreeLayout {
    /// Offset of the data area.
    pub data: usize,
    /// Size of the data area: a power of two, at most 2^31.
    pub size: u32,
    /// Offset of the producer index (`u32`, 4-aligned).
    pub prod: usize,
    /// Offset of the consumer index.
    pub cons: usize,
    /// Byte the consumer sets to be woken when data is written (the producer test-and-clears
    /// it); `None`: notify after every publication.
    pub want_write: Option<usize>,
    /// Byte the producer sets to be woken when data is consumed (the consumer test-and-clears
    /// it); `None`: notify after every publication.
    pub want_read: Option<usize>,
}

impl FreeLayout {
    /// Bytes of the region this layout touches.
    pub(crate) fn end(&self) -> usize {
        let mut end = self.data + self.size as usize;
        for off in [Some(self.prod + 4), Some(self.cons + 4)] {
            end = end.max(off.unwrap_or(0));
        }
        for off in [self.want_write, self.want_read].into_iter().flatten() {
            end = end.max(off + 1);
        }
        end
    }

    fn mask(&self) -> u32 {
        self.size - 1
    }
}

/// The producer half of a ring with free-running indices (xenstore and v2 layouts).
///
/// Writes are copied into the ring with [`RingWriter::write_deferred`] and published with
/// [`RingWriter::commit`] (or both at once with [`RingWriter::write`]): a burst of small frames
/// publishes its index once.
pub struct ByteProducer<A: SharedAccess> {
    mem: A,
    lay: FreeLayout,
    /// Our index, including staged (not yet published) bytes.
    prod: u32,
    /// The index the peer has seen.
    published: u32,
    /// Last validated consumer index.
    cons: Cell<u32>,
    broken: Cell<bool>,
    notify: bool,
    /// Published with [`RingWriter::publish`] and not yet checked for a sleeping consumer.
    unchecked: bool,
    /// Polling mode: no wake-up checks, no notifications, no sleeping (see `set_polling`).
    polling: bool,
}

impl<A: SharedAccess> core::fmt::Debug for ByteProducer<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ByteProducer")
            .field("size", &self.lay.size)
            .field("prod", &self.prod)
            .field("published", &self.published)
            .field("cons", &self.cons.get())
            .field("broken", &self.broken.get())
            .finish()
    }
}

impl<A: SharedAccess> ByteProducer<A> {
    /// A producer starting at `prod` with the consumer at `cons` (validated by the caller:
    /// `prod - cons <= size`).
    pub(crate) fn new(mem: A, lay: FreeLayout, prod: u32, cons: u32) -> Self {
        debug_assert!(lay.size.is_power_of_two() && lay.end() <= mem.len());
        debug_assert!(prod.wrapping_sub(cons) <= lay.size);
        ByteProducer {
            mem,
            lay,
            prod,
            published: prod,
            cons: Cell::new(cons),
            broken: Cell::new(false),
            notify: false,
            unchecked: false,
            polling: false,
        }
    }

    fn check(&self) -> Result<(), RingError> {
        if self.broken.get() {
            Err(RingError::Broken)
        } else {
            Ok(())
        }
    }

    /// Reads the consumer index once and validates it: it may only move forward, and never
    /// past what we published.
    #[inline]
    fn refresh(&self) -> Result<u32, RingError> {
        self.check()?;
        let c = self.mem.load_u32(self.lay.cons, Ordering::Acquire);
        let old = self.cons.get();
        if c.wrapping_sub(old) > self.published.wrapping_sub(old) {
            self.broken.set(true);
            return Err(RingError::BadIndex {
                what: "consumer",
                value: c,
            });
        }
        self.cons.set(c);
        Ok(c)
    }

    #[inline]
    fn free_with(&self, cons: u32) -> u32 {
        self.lay.size - self.prod.wrapping_sub(cons)
    }

    /// Bytes staged by [`RingWriter::write_deferred`] and not yet committed.
    pub fn staged(&self) -> usize {
        self.prod.wrapping_sub(self.published) as usize
    }

    /// Our producer index (including staged bytes).
    pub fn position(&self) -> u32 {
        self.prod
    }

    /// Polling mode (`true`) for a producer whose consumer busy-polls and never sleeps:
    /// [`RingWriter::commit`] only publishes the index, with no fence, no look at the consumer's
    /// "wake me" flag and no notification, so a message costs no cross-core round trip. Both
    /// sides must agree (a consumer that sleeps on a polling producer is never woken); the
    /// straw's negotiation is where such an agreement belongs. [`RingWriter::prepare_wait`]
    /// fails with [`RingError::InvalidInput`]: a polling half is polled, never waited on.
    pub fn set_polling(&mut self, polling: bool) {
        self.polling = polling;
    }

    /// Whether [`ByteProducer::set_polling`] is on.
    pub fn is_polling(&self) -> bool {
        self.polling
    }
}

impl<A: SharedAccess> RingWriter for ByteProducer<A> {
    type Error = RingError;

    fn capacity(&self) -> usize {
        self.lay.size as usize
    }

    fn writable(&self) -> Result<usize, RingError> {
        let c = self.refresh()?;
        Ok(self.free_with(c) as usize)
    }

    #[inline]
    fn write_deferred(&mut self, buf: &[u8]) -> Result<usize, RingError> {
        self.write_in_place(buf.len(), |w| w.copy_from(buf))
    }

    #[inline]
    fn publish(&mut self) -> Result<(), RingError> {
        self.check()?;
        if self.prod != self.published {
            // The bytes (relaxed stores) are ordered before the index by the release store.
            self.mem
                .store_u32(self.lay.prod, self.prod, Ordering::Release);
            self.published = self.prod;
            self.unchecked = true;
        }
        Ok(())
    }

    #[inline]
    fn commit(&mut self) -> Result<(), RingError> {
        self.publish()?;
        if !self.unchecked || self.polling {
            // Polling: nobody sleeps, so there is nobody to wake and nothing to fence for.
            self.unchecked = false;
            return Ok(());
        }
        self.unchecked = false;
        match self.lay.want_write {
            Some(flag) => {
                // Store -> fence(SeqCst) -> load (D2): either the consumer sees our index when it
                // re-checks after raising its flag, or we see the flag here.
                self.mem.fence(Ordering::SeqCst);
                if self.mem.load_u8(flag, Ordering::Relaxed) != 0
                    && self.mem.swap_u8(flag, 0, Ordering::Relaxed) != 0
                {
                    self.notify = true;
                }
            }
            None => self.notify = true,
        }
        Ok(())
    }

    fn take_notify(&mut self) -> bool {
        core::mem::take(&mut self.notify)
    }

    fn prepare_wait(&mut self) -> Result<bool, RingError> {
        if self.polling {
            return Err(RingError::InvalidInput("a polling ring half cannot wait"));
        }
        // Waiting with staged or unchecked bytes could leave both sides asleep: commit first.
        self.commit()?;
        if let Some(flag) = self.lay.want_read {
            self.mem.store_u8(flag, 1, Ordering::Relaxed);
            self.mem.fence(Ordering::SeqCst);
        }
        let c = self.refresh()?;
        Ok(self.free_with(c) > 0)
    }

    fn is_broken(&self) -> bool {
        self.broken.get()
    }
}

impl<A: SharedAccess> WriteInPlace for ByteProducer<A> {
    type Mem = A;

    #[inline]
    fn write_in_place(
        &mut self,
        max: usize,
        f: impl FnOnce(SharedSliceMut<'_, A>) -> usize,
    ) -> Result<usize, RingError> {
        self.check()?;
        let mut free = self.free_with(self.cons.get());
        if (free as usize) < max {
            let c = self.refresh()?;
            free = self.free_with(c);
        }
        let len = max.min(free as usize);
        let off = (self.prod & self.lay.mask()) as usize;
        let n = lend_write(
            &self.mem,
            self.lay.data,
            self.lay.size as usize,
            off,
            len,
            f,
        )?;
        self.prod = self.prod.wrapping_add(n as u32);
        Ok(n)
    }
}

/// The consumer half of a ring with free-running indices (xenstore and v2 layouts).
///
/// Bytes are copied out with [`RingReader::read_deferred`] and the space handed back with
/// [`RingReader::release`] (or both at once with [`RingReader::read`]).
pub struct ByteConsumer<A: SharedAccess> {
    mem: A,
    lay: FreeLayout,
    /// Our index, including bytes read but not yet released.
    cons: u32,
    /// The index the peer has seen.
    published: u32,
    /// Last validated producer index.
    prod: Cell<u32>,
    broken: Cell<bool>,
    notify: bool,
    /// Released with [`RingReader::publish`] and not yet checked for a waiting producer.
    unchecked: bool,
    /// Polling mode: no wake-up checks, no notifications, no sleeping (see `set_polling`).
    polling: bool,
}

impl<A: SharedAccess> core::fmt::Debug for ByteConsumer<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ByteConsumer")
            .field("size", &self.lay.size)
            .field("cons", &self.cons)
            .field("published", &self.published)
            .field("prod", &self.prod.get())
            .field("broken", &self.broken.get())
            .finish()
    }
}

impl<A: SharedAccess> ByteConsumer<A> {
    /// A consumer starting at `cons` with the producer at `prod` (validated by the caller:
    /// `prod - cons <= size`).
    pub(crate) fn new(mem: A, lay: FreeLayout, cons: u32, prod: u32) -> Self {
        debug_assert!(lay.size.is_power_of_two() && lay.end() <= mem.len());
        debug_assert!(prod.wrapping_sub(cons) <= lay.size);
        ByteConsumer {
            mem,
            lay,
            cons,
            published: cons,
            prod: Cell::new(prod),
            broken: Cell::new(false),
            notify: false,
            unchecked: false,
            polling: false,
        }
    }

    fn check(&self) -> Result<(), RingError> {
        if self.broken.get() {
            Err(RingError::Broken)
        } else {
            Ok(())
        }
    }

    /// Reads the producer index once and validates it: it may only move forward, and never
    /// more than `size` past what we released.
    #[inline]
    fn refresh(&self) -> Result<u32, RingError> {
        self.check()?;
        let p = self.mem.load_u32(self.lay.prod, Ordering::Acquire);
        let old = self.prod.get();
        let limit = self.published.wrapping_add(self.lay.size).wrapping_sub(old);
        if p.wrapping_sub(old) > limit {
            self.broken.set(true);
            return Err(RingError::BadIndex {
                what: "producer",
                value: p,
            });
        }
        self.prod.set(p);
        Ok(p)
    }

    /// Bytes read by [`RingReader::read_deferred`] and not yet released.
    pub fn unreleased(&self) -> usize {
        self.cons.wrapping_sub(self.published) as usize
    }

    /// Our consumer index (including unreleased bytes).
    pub fn position(&self) -> u32 {
        self.cons
    }

    /// Polling mode (`true`) for a consumer whose producer busy-polls and never sleeps:
    /// [`RingReader::release`] only publishes the index (no fence, no flag, no notification).
    /// Both sides must agree; [`RingReader::prepare_wait`] fails with
    /// [`RingError::InvalidInput`]. See [`ByteProducer::set_polling`].
    pub fn set_polling(&mut self, polling: bool) {
        self.polling = polling;
    }

    /// Whether [`ByteConsumer::set_polling`] is on.
    pub fn is_polling(&self) -> bool {
        self.polling
    }
}

impl<A: SharedAccess> RingReader for ByteConsumer<A> {
    type Error = RingError;

    fn capacity(&self) -> usize {
        self.lay.size as usize
    }

    fn readable(&self) -> Result<usize, RingError> {
        let p = self.refresh()?;
        Ok(p.wrapping_sub(self.cons) as usize)
    }

    #[inline]
    fn read_deferred(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        self.read_in_place(buf.len(), |w| w.copy_to(buf))
    }

    #[inline]
    fn publish(&mut self) -> Result<(), RingError> {
        self.check()?;
        if self.cons != self.published {
            // Our loads of the bytes are ordered before the index by the release store.
            self.mem
                .store_u32(self.lay.cons, self.cons, Ordering::Release);
            self.published = self.cons;
            self.unchecked = true;
        }
        Ok(())
    }

    #[inline]
    fn release(&mut self) -> Result<(), RingError> {
        self.publish()?;
        if !self.unchecked || self.polling {
            // Polling: nobody sleeps, so there is nobody to wake and nothing to fence for.
            self.unchecked = false;
            return Ok(());
        }
        self.unchecked = false;
        match self.lay.want_read {
            Some(flag) => {
                // Wake a waiting producer by threshold: only once at least half the ring is
                // free (as far as we know; our view of `prod` is older, so this overestimates
                // the free space, never underestimates it). Never a lost wake-up: a consumer
                // that drains the ring always frees all of it, and one that stops short of
                // half leaves the flag set for its next release.
                let free = self.lay.size - self.prod.get().wrapping_sub(self.cons);
                if free >= self.lay.size / 2 {
                    // Only now, when we are about to look at the flag, the store -> fence ->
                    // load of D2: either the producer sees our index when it re-checks after
                    // raising its flag, or we see the flag here. Under the threshold we do not
                    // look, so we need no fence: a streaming consumer that stays behind a busy
                    // producer pays no cross-core round trip per release.
                    self.mem.fence(Ordering::SeqCst);
                    if self.mem.load_u8(flag, Ordering::Relaxed) != 0
                        && self.mem.swap_u8(flag, 0, Ordering::Relaxed) != 0
                    {
                        self.notify = true;
                    }
                }
            }
            None => self.notify = true,
        }
        Ok(())
    }

    fn take_notify(&mut self) -> bool {
        core::mem::take(&mut self.notify)
    }

    fn prepare_wait(&mut self) -> Result<bool, RingError> {
        if self.polling {
            return Err(RingError::InvalidInput("a polling ring half cannot wait"));
        }
        // Waiting on unreleased or unchecked space could leave both sides asleep: release first.
        self.release()?;
        if let Some(flag) = self.lay.want_write {
            self.mem.store_u8(flag, 1, Ordering::Relaxed);
            self.mem.fence(Ordering::SeqCst);
        }
        let p = self.refresh()?;
        Ok(p != self.cons)
    }

    fn is_broken(&self) -> bool {
        self.broken.get()
    }
}

impl<A: SharedAccess> ReadInPlace for ByteConsumer<A> {
    type Mem = A;

    #[inline]
    fn read_in_place(
        &mut self,
        max: usize,
        f: impl FnOnce(SharedSlice<'_, A>) -> usize,
    ) -> Result<usize, RingError> {
        self.check()?;
        let mut avail = self.prod.get().wrapping_sub(self.cons);
        if (avail as usize) < max {
            let p = self.refresh()?;
            avail = p.wrapping_sub(self.cons);
        }
        let len = max.min(avail as usize);
        let off = (self.cons & self.lay.mask()) as usize;
        let n = lend_read(
            &self.mem,
            self.lay.data,
            self.lay.size as usize,
            off,
            len,
            f,
        )?;
        self.cons = self.cons.wrapping_add(n as u32);
        Ok(n)
    }
}
