//! Length-prefixed framing (D5): a 4-byte big-endian length, then the payload.
//!
//! [`FrameWriter`] streams a frame into any [`RingWriter`]; a frame larger than the ring goes
//! through it in pieces over several calls. [`FrameReader`] decodes into the caller's buffer,
//! never allocating; a frame longer than the configured maximum is skipped (its bytes are read
//! and dropped), counted and reported as [`Received::Skipped`]: only a broken index closes a
//! ring.
//!
//! ```
//! use pore_core::{loopback::Loopback, DomId, GrantRef, Grants, SharedMemory};
//! use pore_ring::frame::{FrameReader, FrameWriter, Progress, Received};
//! use pore_ring::v2::{V2Geometry, V2Ring};
//! use pore_ring::prelude::*;
//!
//! let xen = Loopback::new();
//! let geometry = V2Geometry::new(0, 0)?;
//! let pages = xen.domain(DomId(1)).grant(DomId(2), geometry.pages())?;
//! let mut active = V2Ring::active(pages.view(), geometry, &[GrantRef(1), GrantRef(2)])?;
//! let mut passive = V2Ring::passive(pages.view())?;
//!
//! let mut tx = FrameWriter::new(1024);
//! // Batch: two frames, one publication.
//! assert_eq!(tx.send_deferred(active.writer(), b"hello")?, Progress::Done);
//! assert_eq!(tx.send_deferred(active.writer(), b"world")?, Progress::Done);
//! active.writer().commit()?;
//!
//! let mut rx = FrameReader::new(1024);
//! let mut buf = [0u8; 1024];
//! assert_eq!(rx.recv(passive.reader(), &mut buf)?, Some(Received::Frame(5)));
//! assert_eq!(&buf[..5], b"hello");
//! assert_eq!(rx.recv(passive.reader(), &mut buf)?, Some(Received::Frame(5)));
//! assert_eq!(rx.recv(passive.reader(), &mut buf)?, None);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::window::WriteInPlace;
use crate::{RingError, RingReader, RingWriter};

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Payloads up to this size are copied into the ring together with their header (gathered in
/// the writer's stash first: one ring copy instead of two).
const SMALL_FRAME: usize = 508;

/// How far a [`FrameWriter`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The whole frame is in the ring (published if the call publishes).
    Done,
    /// The ring is full: call again with the same payload once it has room.
    Pending,
}

/// Bytes a coalescing [`FrameWriter`] gathers before copying them into the ring.
const STASH: usize = 1024;
const _: () = assert!(HEADER_LEN + SMALL_FRAME <= STASH);

/// Writes length-prefixed frames into a ring, streaming those larger than the ring.
///
/// A *coalescing* writer ([`FrameWriter::coalescing`]) gathers small frames in a private
/// 1 KiB stash and copies them into the ring together (fewer, larger copies for bursts of
/// small frames); its stashed bytes reach the ring at [`FrameWriter::flush`] or
/// [`FrameWriter::commit`] at the latest.
#[derive(Debug, Clone)]
pub struct FrameWriter {
    max: usize,
    /// Bytes of the current frame (header included) already in the ring; 0 when idle.
    pos: usize,
    /// Payload length of the frame in progress.
    len: usize,
    coalesce: bool,
    stash: [u8; STASH],
    stash_len: usize,
}

impl FrameWriter {
    /// A writer refusing payloads longer than `max_frame` bytes (the peer would skip them).
    pub fn new(max_frame: usize) -> Self {
        FrameWriter {
            max: max_frame.min(u32::MAX as usize),
            pos: 0,
            len: 0,
            coalesce: false,
            stash: [0; STASH],
            stash_len: 0,
        }
    }

    /// A coalescing writer (see the type's docs): with it, [`Progress::Done`] from
    /// [`FrameWriter::send_deferred`] means the frame was *accepted*; publish with
    /// [`FrameWriter::commit`] (not the ring's own `commit`), and call it until it returns `true`
    /// before waiting for room.
    pub fn coalescing(max_frame: usize) -> Self {
        FrameWriter {
            coalesce: true,
            ..Self::new(max_frame)
        }
    }

    /// Bytes accepted but not yet copied into the ring (coalescing writers only).
    pub fn stashed(&self) -> usize {
        self.stash_len
    }

    /// Copies stashed bytes into the ring (without publishing); `true` once none are left.
    ///
    /// # Errors
    ///
    /// Ring errors.
    pub fn flush<W: RingWriter + ?Sized>(&mut self, ring: &mut W) -> Result<bool, W::Error>
    where
        W::Error: From<RingError>,
    {
        if self.stash_len > 0 {
            let n = ring.write_deferred(&self.stash[..self.stash_len])?;
            self.stash.copy_within(n..self.stash_len, 0);
            self.stash_len -= n;
        }
        Ok(self.stash_len == 0)
    }

    /// [`FrameWriter::flush`], then publishes the ring ([`RingWriter::commit`]); `true` if
    /// nothing is left in the stash.
    ///
    /// # Errors
    ///
    /// Ring errors.
    pub fn commit<W: RingWriter + ?Sized>(&mut self, ring: &mut W) -> Result<bool, W::Error>
    where
        W::Error: From<RingError>,
    {
        let all = self.flush(ring)?;
        ring.commit()?;
        Ok(all)
    }

    /// Whether a frame is partly written.
    pub fn in_progress(&self) -> bool {
        self.pos != 0
    }

    /// Copies as much of the frame as fits into the ring without publishing it (see
    /// [`RingWriter::commit`]).
    ///
    /// # Errors
    ///
    /// [`RingError::InvalidInput`] if `payload` exceeds the maximum, or differs in length from
    /// the frame in progress; ring errors otherwise.
    pub fn send_deferred<W: RingWriter + ?Sized>(
        &mut self,
        ring: &mut W,
        payload: &[u8],
    ) -> Result<Progress, W::Error>
    where
        W::Error: From<RingError>,
    {
        self.admit(payload)?;
        if self.coalesce {
            let total = HEADER_LEN + payload.len();
            if self.pos == 0 && total <= STASH {
                if self.stash_len + total > STASH {
                    self.flush(ring)?;
                    if self.stash_len + total > STASH {
                        return Ok(Progress::Pending);
                    }
                }
                let at = self.stash_len;
                self.stash[at..at + HEADER_LEN]
                    .copy_from_slice(&(payload.len() as u32).to_be_bytes());
                self.stash[at + HEADER_LEN..at + total].copy_from_slice(payload);
                self.stash_len += total;
                return Ok(Progress::Done);
            }
            // A larger frame goes straight to the ring, after what is stashed.
            if !self.flush(ring)? {
                return Ok(Progress::Pending);
            }
        }
        if self.pos == 0 && payload.len() <= SMALL_FRAME {
            // Small frame: header and payload gathered in the (empty) stash, then one copy into
            // the ring.
            debug_assert_eq!(self.stash_len, 0);
            let total = HEADER_LEN + payload.len();
            self.stash[..HEADER_LEN].copy_from_slice(&(payload.len() as u32).to_be_bytes());
            self.stash[HEADER_LEN..total].copy_from_slice(payload);
            let n = ring.write_deferred(&self.stash[..total])?;
            if n == total {
                return Ok(Progress::Done);
            }
            self.pos = n;
            self.len = payload.len();
            return Ok(Progress::Pending);
        }
        let mut pos = self.pos;
        if pos < HEADER_LEN {
            let header = (payload.len() as u32).to_be_bytes();
            pos += ring.write_deferred(&header[pos..])?;
            if pos < HEADER_LEN {
                self.pos = pos;
                self.len = payload.len();
                return Ok(Progress::Pending);
            }
        }
        pos += ring.write_deferred(&payload[pos - HEADER_LEN..])?;
        if pos == HEADER_LEN + payload.len() {
            self.pos = 0;
            Ok(Progress::Done)
        } else {
            self.pos = pos;
            self.len = payload.len();
            Ok(Progress::Pending)
        }
    }

    /// Refuses a payload over the maximum, or one that is not the frame in progress.
    fn admit(&self, payload: &[u8]) -> Result<(), RingError> {
        if payload.len() > self.max {
            return Err(RingError::InvalidInput("frame longer than the maximum"));
        }
        if self.pos != 0 && payload.len() != self.len {
            return Err(RingError::InvalidInput(
                "a different payload while a frame is in progress",
            ));
        }
        Ok(())
    }

    /// As [`FrameWriter::send_deferred`], through the ring's in-place window
    /// ([`WriteInPlace`]): the header and as much of the payload as fits go into the ring in
    /// one reservation, each copied once, straight from `payload` (no staging copy). Frames
    /// of up to 508 bytes, and every frame of a coalescing writer, go as with
    /// [`FrameWriter::send_deferred`] (gathered first: for them one ring copy costs less than
    /// two).
    ///
    /// # Errors
    ///
    /// As for [`FrameWriter::send_deferred`].
    pub fn send_deferred_in_place<W: RingWriter + WriteInPlace + ?Sized>(
        &mut self,
        ring: &mut W,
        payload: &[u8],
    ) -> Result<Progress, W::Error>
    where
        W::Error: From<RingError>,
    {
        if self.coalesce || (self.pos == 0 && payload.len() <= SMALL_FRAME) {
            return self.send_deferred(ring, payload);
        }
        self.admit(payload)?;
        let header = (payload.len() as u32).to_be_bytes();
        let total = HEADER_LEN + payload.len();
        let pos = self.pos;
        let n = ring.write_in_place(total - pos, |w| {
            let mut done = 0;
            if pos < HEADER_LEN {
                done = w.copy_from(&header[pos..]);
            }
            let at = pos + done;
            if at >= HEADER_LEN {
                if let Some(rest) = w.get(done..) {
                    done += rest.copy_from(&payload[at - HEADER_LEN..]);
                }
            }
            done
        })?;
        let pos = pos + n;
        if pos == total {
            self.pos = 0;
            Ok(Progress::Done)
        } else {
            self.pos = pos;
            self.len = payload.len();
            Ok(Progress::Pending)
        }
    }

    /// As [`FrameWriter::send_deferred`], then publishes (through [`FrameWriter::commit`]).
    ///
    /// # Errors
    ///
    /// As for [`FrameWriter::send_deferred`].
    pub fn send<W: RingWriter + ?Sized>(
        &mut self,
        ring: &mut W,
        payload: &[u8],
    ) -> Result<Progress, W::Error>
    where
        W::Error: From<RingError>,
    {
        let p = self.send_deferred(ring, payload)?;
        self.commit(ring)?;
        Ok(p)
    }
}

/// What a [`FrameReader`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A frame of this many bytes is at the start of the caller's buffer.
    Frame(usize),
    /// A frame of this many bytes, over the maximum, was read and dropped.
    Skipped(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header { got: usize },
    Body { len: usize, got: usize },
    Skip { len: u32, left: u32 },
}

/// Decodes length-prefixed frames from a ring into caller buffers, without allocating.
#[derive(Debug, Clone)]
pub struct FrameReader {
    max: usize,
    header: [u8; HEADER_LEN],
    state: State,
    skipped_frames: u64,
    skipped_bytes: u64,
    /// Bytes read ahead from the ring (a private copy) and not yet delivered: a small frame comes
    /// out of the ring in one copy with its header.
    carry: [u8; CARRY],
    carry_pos: usize,
    carry_len: usize,
    /// Length of the last frame delivered: after a large one, the next header is read alone.
    last: usize,
}

/// Bytes a [`FrameReader`] reads ahead at the start of a frame: several small frames leave the
/// ring in one copy.
const CARRY: usize = 2048;

/// Frames up to this length are followed by a read-ahead of [`CARRY`] bytes; after a longer
/// one the reader reads the next header alone.
const SMALL_AHEAD: usize = 512;

impl FrameReader {
    /// A reader delivering frames of up to `max_frame` bytes and skipping longer ones.
    pub fn new(max_frame: usize) -> Self {
        FrameReader {
            max: max_frame,
            header: [0; HEADER_LEN],
            state: State::Header { got: 0 },
            skipped_frames: 0,
            skipped_bytes: 0,
            carry: [0; CARRY],
            carry_pos: 0,
            carry_len: 0,
            last: 0,
        }
    }

    /// The maximum frame length.
    pub fn max_frame(&self) -> usize {
        self.max
    }

    /// Frames skipped for being over the maximum so far.
    pub fn skipped_frames(&self) -> u64 {
        self.skipped_frames
    }

    /// Payload bytes skipped so far.
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped_bytes
    }

    /// Whether a frame is partly read, or bytes read ahead are waiting to be delivered.
    pub fn in_progress(&self) -> bool {
        self.state != State::Header { got: 0 } || self.carry_pos < self.carry_len
    }

    /// Fast path: a whole frame (within the maximum, fitting `buf`) already in the read-ahead
    /// bytes is delivered at once; otherwise nothing changes.
    #[inline]
    fn whole_from_carry(&mut self, buf: &mut [u8]) -> Option<Received> {
        let ahead = &self.carry[self.carry_pos..self.carry_len];
        let (header, rest) = ahead.split_first_chunk::<HEADER_LEN>()?;
        // A private copy: parsing it is safe from the peer.
        let len = u32::from_be_bytes(*header) as usize;
        if len > self.max || len > buf.len() || len > rest.len() {
            return None;
        }
        buf[..len].copy_from_slice(&rest[..len]);
        self.carry_pos += HEADER_LEN + len;
        self.last = len;
        Some(Received::Frame(len))
    }

    /// Fills `dst` from the read-ahead bytes, then from the ring; returns how many.
    fn pull<R: RingReader + ?Sized>(
        &mut self,
        ring: &mut R,
        dst: &mut [u8],
    ) -> Result<usize, R::Error> {
        let mut n = (self.carry_len - self.carry_pos).min(dst.len());
        if n > 0 {
            dst[..n].copy_from_slice(&self.carry[self.carry_pos..self.carry_pos + n]);
            self.carry_pos += n;
        }
        if n < dst.len() {
            n += ring.read_deferred(&mut dst[n..])?;
        }
        Ok(n)
    }

    /// Reads what the ring holds of the next frame without releasing the ring space (see
    /// [`RingReader::release`]; the space of a frame larger than the ring must be released as it
    /// streams, which [`FrameReader::recv`] does).
    ///
    /// Returns `Ok(None)` when more bytes are needed; a frame's bytes accumulate in `buf`, so
    /// pass the same buffer until the frame completes. The reader reads up to 2 KiB ahead
    /// (a small frame then leaves the ring in one copy), so call it until it returns `Ok(None)`
    /// before waiting on the ring: frames may be complete in its read-ahead while the ring is
    /// empty ([`FrameReader::in_progress`] tells whether it holds any bytes).
    ///
    /// # Errors
    ///
    /// [`RingError::BufferTooSmall`] if the next frame (within the maximum) does not fit `buf`
    /// (nothing of its body is consumed; retry with a larger buffer); ring errors otherwise.
    pub fn recv_deferred<R: RingReader + ?Sized>(
        &mut self,
        ring: &mut R,
        buf: &mut [u8],
    ) -> Result<Option<Received>, R::Error>
    where
        R::Error: From<RingError>,
    {
        loop {
            match self.state {
                State::Header { got } => {
                    if got == 0 {
                        if let Some(done) = self.whole_from_carry(buf) {
                            return Ok(Some(done));
                        }
                    }
                    if got == 0 && self.carry_pos == self.carry_len {
                        // Read ahead: a small frame then leaves the ring in one copy.
                        self.carry_pos = 0;
                        // After a large frame, the header alone: the next frame is likely
                        // large too, and its body then goes straight from the ring into `buf`
                        // rather than through the read-ahead (copied twice).
                        let ahead = if self.last <= SMALL_AHEAD {
                            CARRY
                        } else {
                            HEADER_LEN
                        };
                        self.carry_len = ring.read_deferred(&mut self.carry[..ahead])?;
                        if self.carry_len == 0 {
                            return Ok(None);
                        }
                    }
                    let mut header = self.header;
                    let n = self.pull(ring, &mut header[got..])?;
                    self.header = header;
                    if got + n < HEADER_LEN {
                        self.state = State::Header { got: got + n };
                        return Ok(None);
                    }
                    // The header is a private copy now: parse it.
                    let len = u32::from_be_bytes(self.header);
                    self.state = if len as usize > self.max {
                        State::Skip { len, left: len }
                    } else {
                        State::Body {
                            len: len as usize,
                            got: 0,
                        }
                    };
                }
                State::Body { len, got } => {
                    if buf.len() < len {
                        return Err(RingError::BufferTooSmall {
                            len,
                            cap: buf.len(),
                        }
                        .into());
                    }
                    let n = self.pull(ring, &mut buf[got..len])?;
                    if got + n < len {
                        self.state = State::Body { len, got: got + n };
                        return Ok(None);
                    }
                    self.state = State::Header { got: 0 };
                    self.last = len;
                    return Ok(Some(Received::Frame(len)));
                }
                State::Skip { len, left } => {
                    let mut scratch = [0u8; 256];
                    let mut left = left;
                    while left > 0 {
                        let want = (left as usize).min(scratch.len());
                        let n = self.pull(ring, &mut scratch[..want])?;
                        if n == 0 {
                            break;
                        }
                        left -= n as u32;
                    }
                    if left > 0 {
                        self.state = State::Skip { len, left };
                        return Ok(None);
                    }
                    self.skipped_frames += 1;
                    self.skipped_bytes += u64::from(len);
                    self.state = State::Header { got: 0 };
                    return Ok(Some(Received::Skipped(len)));
                }
            }
        }
    }

    /// As [`FrameReader::recv_deferred`], then releases the ring space read.
    ///
    /// # Errors
    ///
    /// As for [`FrameReader::recv_deferred`].
    pub fn recv<R: RingReader + ?Sized>(
        &mut self,
        ring: &mut R,
        buf: &mut [u8],
    ) -> Result<Option<Received>, R::Error>
    where
        R::Error: From<RingError>,
    {
        let r = self.recv_deferred(ring, buf);
        ring.release()?;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ling::{LingRing, LING_REGION};
    use crate::testutil::{cases, max_ops, Guarded};
    use crate::v2::{V2Geometry, V2Ring};
    use crate::xenstore::XenstoreRing;
    use crate::SharedRing;
    use pore_core::GrantRef;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    /// Sends `frames` through `w`→`r`, interleaving, with reader buffer `cap` and maximum `max`;
    /// returns what was received.
    fn pump<W: RingWriter<Error = RingError>, R: RingReader<Error = RingError>>(
        w: &mut W,
        r: &mut R,
        frames: &[Vec<u8>],
        max: usize,
    ) -> Vec<Result<Vec<u8>, u32>> {
        pump_with(FrameWriter::new(usize::MAX), w, r, frames, max)
    }

    fn pump_with<W: RingWriter<Error = RingError>, R: RingReader<Error = RingError>>(
        mut fw: FrameWriter,
        w: &mut W,
        r: &mut R,
        frames: &[Vec<u8>],
        max: usize,
    ) -> Vec<Result<Vec<u8>, u32>> {
        let mut fr = FrameReader::new(max);
        let mut buf = vec![0u8; max.max(1)];
        let mut out = Vec::new();
        let mut i = 0;
        let mut idle = 0;
        while out.len() < frames.len() {
            let mut moved = false;
            if i < frames.len() && fw.send(w, &frames[i]).unwrap() == Progress::Done {
                i += 1;
                moved = true;
            } else if fw.stashed() > 0 {
                let before = fw.stashed();
                fw.commit(w).unwrap();
                moved |= fw.stashed() < before;
            }
            while let Some(got) = fr.recv(r, &mut buf).unwrap() {
                moved = true;
                out.push(match got {
                    Received::Frame(n) => Ok(buf[..n].to_vec()),
                    Received::Skipped(n) => Err(n),
                });
            }
            idle = if moved { 0 } else { idle + 1 };
            assert!(idle < 10_000, "no progress");
        }
        assert_eq!(
            fr.skipped_frames() as usize,
            out.iter().filter(|r| r.is_err()).count()
        );
        out
    }

    fn expect(frames: &[Vec<u8>], max: usize) -> Vec<Result<Vec<u8>, u32>> {
        frames
            .iter()
            .map(|f| {
                if f.len() > max {
                    Err(f.len() as u32)
                } else {
                    Ok(f.clone())
                }
            })
            .collect()
    }

    #[test]
    fn frames_larger_than_the_ring_stream_through_it() {
        let g = Guarded::new(4096);
        let mut c = XenstoreRing::client(g.view()).unwrap();
        let mut s = XenstoreRing::server(g.view()).unwrap();
        let frames = vec![vec![1u8; 5000], vec![], vec![2u8; 1020], vec![3u8; 3]];
        let got = pump(c.writer(), s.reader(), &frames, 8192);
        assert_eq!(got, expect(&frames, 8192));
        g.assert_guards();
    }

    #[test]
    fn oversize_frames_are_skipped_and_counted() {
        let g = Guarded::new(LING_REGION);
        let mut a = LingRing::active(g.view()).unwrap();
        let mut p = LingRing::passive(g.view()).unwrap();
        let frames = vec![vec![1u8; 100], vec![9u8; 40000], vec![2u8; 64]];
        let got = pump(a.writer(), p.reader(), &frames, 1000);
        assert_eq!(got, expect(&frames, 1000));
        g.assert_guards();
    }

    #[test]
    fn writer_rules_and_small_buffers() {
        let g = Guarded::new(4096);
        let mut c = XenstoreRing::client(g.view()).unwrap();
        let mut s = XenstoreRing::server(g.view()).unwrap();
        let mut fw = FrameWriter::new(2000);
        assert!(fw.send(c.writer(), &[0u8; 2001]).is_err());
        assert_eq!(
            fw.send(c.writer(), &[5u8; 1500]).unwrap(),
            Progress::Pending
        );
        assert!(fw.in_progress());
        assert!(fw.send(c.writer(), &[5u8; 10]).is_err());
        let mut fr = FrameReader::new(2000);
        let mut small = [0u8; 100];
        assert!(matches!(
            fr.recv(s.reader(), &mut small),
            Err(RingError::BufferTooSmall { len: 1500, .. })
        ));
        let mut big = [0u8; 2000];
        assert_eq!(fr.recv(s.reader(), &mut big).unwrap(), None);
        assert!(fr.in_progress());
        assert_eq!(fw.send(c.writer(), &[5u8; 1500]).unwrap(), Progress::Done);
        assert_eq!(
            fr.recv(s.reader(), &mut big).unwrap(),
            Some(Received::Frame(1500))
        );
        assert_eq!(fr.max_frame(), 2000);
        assert_eq!(fr.skipped_bytes(), 0);
    }

    #[test]
    fn frames_in_the_read_ahead_keep_the_rules() {
        // Three small frames reach the reader in one read-ahead: one over the maximum, one too
        // large for the first buffer, one that fits.
        let g = Guarded::new(4096);
        let mut c = XenstoreRing::client(g.view()).unwrap();
        let mut s = XenstoreRing::server(g.view()).unwrap();
        let mut fw = FrameWriter::new(100);
        for payload in [&[7u8; 30][..], &[8u8; 20], &[9u8; 5]] {
            assert_eq!(fw.send(c.writer(), payload).unwrap(), Progress::Done);
        }
        let mut fr = FrameReader::new(25);
        let mut small = [0u8; 10];
        assert_eq!(
            fr.recv(s.reader(), &mut small).unwrap(),
            Some(Received::Skipped(30))
        );
        assert!(matches!(
            fr.recv(s.reader(), &mut small),
            Err(RingError::BufferTooSmall { len: 20, .. })
        ));
        let mut big = [0u8; 25];
        assert_eq!(
            fr.recv(s.reader(), &mut big).unwrap(),
            Some(Received::Frame(20))
        );
        assert_eq!(big[..20], [8u8; 20]);
        assert_eq!(
            fr.recv(s.reader(), &mut small).unwrap(),
            Some(Received::Frame(5))
        );
        assert_eq!(small[..5], [9u8; 5]);
        assert_eq!(fr.recv(s.reader(), &mut small).unwrap(), None);
        assert_eq!(fr.skipped_frames(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        /// Random frame sizes (some over the maximum, some over the ring) through a v2 ring,
        /// with a plain or a coalescing writer.
        #[test]
        fn v2_frames(sizes in proptest::collection::vec(0usize..if cfg!(miri) { 6000 } else { 12000 }, 1..max_ops(12)), max in 1usize..9000, coalesce in any::<bool>()) {
            let geo = V2Geometry::new(0, 0).unwrap();
            let g = Guarded::new(geo.region_len());
            let mut a = V2Ring::active(g.view(), geo, &[GrantRef(1), GrantRef(2)]).unwrap();
            let mut p = V2Ring::passive(g.view()).unwrap();
            let frames: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| vec![i as u8; n]).collect();
            let fw = if coalesce { FrameWriter::coalescing(usize::MAX) } else { FrameWriter::new(usize::MAX) };
            let got = pump_with(fw, a.writer(), p.reader(), &frames, max);
            prop_assert_eq!(got, expect(&frames, max));
            g.assert_guards();
        }

        /// Many small frames, some larger ones, through a coalescing writer and a small ring.
        #[test]
        fn coalescing_small_frames(sizes in proptest::collection::vec(0usize..300, 1..max_ops(80))) {
            let g = Guarded::new(4096);
            let mut c = XenstoreRing::client(g.view()).unwrap();
            let mut s = XenstoreRing::server(g.view()).unwrap();
            let frames: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| vec![i as u8; n]).collect();
            let got = pump_with(FrameWriter::coalescing(usize::MAX), c.writer(), s.reader(), &frames, 1000);
            prop_assert_eq!(got, expect(&frames, 1000));
            g.assert_guards();
        }

        /// Garbage bytes from a hostile peer decode into frames or skips, never a panic and
        /// never an allocation: the decoder only fills the caller's buffer.
        #[test]
        fn garbage_stream(bytes in proptest::collection::vec(any::<u8>(), 0..if cfg!(miri) { 300 } else { 3000 }), max in 0usize..600) {
            let g = Guarded::new(4096);
            let mut c = XenstoreRing::client(g.view()).unwrap();
            let mut s = XenstoreRing::server(g.view()).unwrap();
            let mut fr = FrameReader::new(max);
            let mut buf = vec![0u8; max];
            let mut off = 0;
            while off < bytes.len() {
                off += c.writer().write(&bytes[off..]).unwrap();
                while let Some(r) = fr.recv(s.reader(), &mut buf).unwrap() {
                    if let Received::Frame(n) = r { prop_assert!(n <= max); }
                }
            }
            g.assert_guards();
        }
    }
}
