//! Reassembly of the length-prefixed frames of a straw (`std`, D5: `Bytes` and reassembly live
//! in pore-straw).
//!
//! The wire format is pore-ring's framing (a 4-byte big-endian length, then the payload). Unlike
//! [`pore_ring::frame::FrameReader`], which needs a caller buffer as long as the frame before
//! it copies any of its payload, the [`Reassembler`] reads the ring in place
//! ([`pore_ring::window::ReadInPlace`]) and copies each payload byte once, straight from the
//! ring into a buffer that becomes the frame's [`Bytes`]: no read-ahead, no staging buffer
//! (whole small frames at the front of the ring leave it together, each in its own buffer). A
//! length prefix from the peer never drives an allocation past `RESTING` (64 KiB) by itself
//! (DESIGN, "Memory a peer can write"): a longer frame's buffer grows only as its payload
//! arrives.

use std::collections::VecDeque;
use std::vec::Vec;

use bytes::Bytes;
use pore_ring::frame::HEADER_LEN;
use pore_ring::window::ReadInPlace;
use pore_ring::{RingError, RingReader};

/// The most a length prefix alone makes us allocate: a frame up to this size gets a buffer of
/// exactly its length when its header arrives; a larger one starts with this much and grows
/// only as its payload arrives. Either way the buffer leaves with the frame (no copy).
pub(crate) const RESTING: usize = 64 * 1024;

/// Frames up to this length whose bytes are all in the ring leave it together, in one in-place
/// read of at most [`SMALL_WINDOW`] bytes (one release, and on a LING ring one event, for the
/// lot instead of one per frame).
const SMALL: usize = 256;

/// The most one in-place read of small frames takes from the ring.
const SMALL_WINDOW: usize = 2048;

/// The length prefix that ends the stream of a standalone straw (one made without the manager,
/// which has no xenstore to say so): no frame is that long (a LING peer's frames are far
/// shorter, and ours are refused at this length), and nothing after it is read. Whoever reads
/// it, managed or not, ends its stream there.
pub(crate) const END_OF_STREAM: u32 = u32::MAX;

/// What [`Reassembler::recv`] produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Got {
    /// A whole frame.
    Frame(Bytes),
    /// A frame of this many bytes, over the maximum, was read and dropped.
    Skipped(u32),
    /// The peer ended the stream ([`END_OF_STREAM`]); returned again by every later call.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header {
        got: usize,
    },
    /// The payload so far is `buf`.
    Body {
        len: usize,
    },
    Skip {
        len: u32,
        left: u32,
    },
    /// After [`END_OF_STREAM`].
    End,
}

/// Decodes frames from a ring into [`Bytes`], skipping (and counting) those over the maximum.
pub(crate) struct Reassembler {
    max: usize,
    header: [u8; HEADER_LEN],
    state: State,
    buf: Vec<u8>,
    /// Whole small frames taken out of the ring together, not yet returned (at most
    /// [`SMALL_WINDOW`] bytes' worth).
    pending: VecDeque<Bytes>,
}

impl Reassembler {
    /// A reassembler delivering frames of up to `max` bytes (an [`END_OF_STREAM`] prefix
    /// ends the stream).
    pub(crate) fn new(max: usize) -> Self {
        Reassembler {
            max,
            header: [0; HEADER_LEN],
            state: State::Header { got: 0 },
            buf: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    /// Whether a frame is partly read, or whole frames wait to be returned.
    pub(crate) fn in_progress(&self) -> bool {
        self.state != State::Header { got: 0 } || !self.pending.is_empty()
    }

    /// The capacity of the receive buffer (what a frame in progress costs us).
    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Decodes what the ring holds of the next frame and releases the ring space read (a frame
    /// larger than the ring streams through it over several calls). `Ok(None)`: more bytes are
    /// needed.
    pub(crate) fn recv<R: RingReader<Error = RingError> + ReadInPlace + ?Sized>(
        &mut self,
        ring: &mut R,
    ) -> Result<Option<Got>, RingError> {
        let r = self.recv_deferred(ring);
        let released = ring.release();
        // The first error tells what the peer broke (a release after it says only "broken").
        let got = r?;
        released?;
        Ok(got)
    }

    fn recv_deferred<R: RingReader<Error = RingError> + ReadInPlace + ?Sized>(
        &mut self,
        ring: &mut R,
    ) -> Result<Option<Got>, RingError> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(Some(Got::Frame(frame)));
        }
        loop {
            if self.state == (State::Header { got: 0 }) {
                self.small(ring)?;
                if let Some(frame) = self.pending.pop_front() {
                    return Ok(Some(Got::Frame(frame)));
                }
            }
            match self.state {
                State::Header { got } => {
                    let mut header = self.header;
                    let n =
                        ring.read_in_place(HEADER_LEN - got, |w| w.copy_to(&mut header[got..]))?;
                    self.header = header;
                    if got + n < HEADER_LEN {
                        self.state = State::Header { got: got + n };
                        return Ok(None);
                    }
                    // The header is a private copy now: parse it.
                    let len = u32::from_be_bytes(self.header);
                    if len == END_OF_STREAM {
                        self.state = State::End;
                        return Ok(Some(Got::End));
                    }
                    self.state = if len as usize > self.max {
                        State::Skip { len, left: len }
                    } else {
                        // The frame's own buffer: exact up to the bound, then grown by arrival.
                        self.buf = Vec::with_capacity((len as usize).min(RESTING));
                        State::Body { len: len as usize }
                    };
                }
                State::Body { len } => {
                    let got = self.buf.len();
                    if got < len {
                        // In chunks of a quarter ring, each released at once: the peer refills
                        // the ring while we copy the rest (a frame as large as the ring would
                        // otherwise leave the writer idle for a whole copy).
                        let chunk = (ring.capacity() / 4).max(4096);
                        let want = (len - got).min(chunk);
                        let mut buf = core::mem::take(&mut self.buf);
                        // The window is what has arrived: the buffer grows by that, never by
                        // what the header announces.
                        let r = ring.read_in_place(want, |w| {
                            grow(&mut buf, got + w.len(), len);
                            w.append_to(&mut buf);
                            w.len()
                        });
                        self.buf = buf;
                        let n = r?;
                        if got + n < len {
                            if n == 0 {
                                return Ok(None);
                            }
                            ring.release()?;
                            continue;
                        }
                    }
                    self.state = State::Header { got: 0 };
                    let frame = Bytes::from(core::mem::take(&mut self.buf));
                    return Ok(Some(Got::Frame(frame)));
                }
                State::End => return Ok(Some(Got::End)),
                State::Skip { len, left } => {
                    // Skipped in place: nothing is copied.
                    let n = ring.read_in_place(left as usize, |w| w.len())?;
                    let left = left - n as u32;
                    if left > 0 {
                        self.state = State::Skip { len, left };
                        return Ok(None);
                    }
                    self.state = State::Header { got: 0 };
                    return Ok(Some(Got::Skipped(len)));
                }
            }
        }
    }
}

impl Reassembler {
    /// Fast path: the whole small frames at the front of the ring leave it together in one
    /// in-place read (each header and payload copied straight out, each payload into its
    /// frame's own buffer) and wait in `pending`. Nothing is consumed from the first frame
    /// that is partial, large, over the maximum or the end of the stream on: the general path
    /// takes it.
    #[inline]
    fn small<R: ReadInPlace + ?Sized>(&mut self, ring: &mut R) -> Result<(), RingError> {
        let max = self.max.min(SMALL);
        let pending = &mut self.pending;
        ring.read_in_place(SMALL_WINDOW, |w| {
            let mut at = 0;
            while let Some(head) = w.get(at..at + HEADER_LEN) {
                let mut header = [0u8; HEADER_LEN];
                head.copy_to(&mut header);
                // A private copy: parsing it is safe from the peer.
                let len = u32::from_be_bytes(header) as usize;
                if len > max {
                    break;
                }
                let Some(body) = w.get(at + HEADER_LEN..at + HEADER_LEN + len) else {
                    break;
                };
                let mut buf = Vec::with_capacity(len);
                body.append_to(&mut buf);
                pending.push_back(Bytes::from(buf));
                at += HEADER_LEN + len;
            }
            at
        })?;
        Ok(())
    }
}

/// Grows `buf` to hold `need` bytes of a frame of `len`: doubling, never past `len`.
fn grow(buf: &mut Vec<u8>, need: usize, len: usize) {
    if buf.capacity() < need {
        let target = buf.capacity().saturating_mul(2).max(need).min(len);
        buf.reserve_exact(target - buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pore_core::loopback::GuardedRegion;
    use pore_core::GrantRef;
    use pore_ring::frame::{FrameReader, FrameWriter, Progress, Received};
    use pore_ring::v2::{Consumer, Producer, V2Geometry, V2Ring};
    use pore_ring::{RingWriter, SharedRing};
    use std::vec;

    type View<'a> = pore_core::SharedView<'a>;

    /// Sends `frames` with the in-place writer and receives them with the reassembler,
    /// interleaved (frames larger than the ring stream through it).
    fn in_place(
        tx: &mut Producer<View<'_>>,
        rx: &mut Consumer<View<'_>>,
        frames: &[Vec<u8>],
        max: usize,
    ) -> Vec<Result<Vec<u8>, u32>> {
        let mut fw = FrameWriter::new(usize::MAX);
        let mut re = Reassembler::new(max);
        let mut out = Vec::new();
        let mut i = 0;
        while out.len() < frames.len() {
            if i < frames.len()
                && fw.send_deferred_in_place(&mut *tx, &frames[i]).unwrap() == Progress::Done
            {
                i += 1;
            }
            tx.commit().unwrap();
            while let Some(got) = re.recv(&mut *rx).unwrap() {
                out.push(match got {
                    Got::Frame(f) => Ok(f.to_vec()),
                    Got::Skipped(n) => Err(n),
                    Got::End => panic!("no end was sent"),
                });
            }
        }
        assert!(!re.in_progress());
        out
    }

    /// The same through the copying path: `send_deferred` and pore-ring's `FrameReader`.
    fn copying(
        tx: &mut Producer<View<'_>>,
        rx: &mut Consumer<View<'_>>,
        frames: &[Vec<u8>],
        max: usize,
    ) -> Vec<Result<Vec<u8>, u32>> {
        let mut fw = FrameWriter::new(usize::MAX);
        let mut fr = FrameReader::new(max);
        let mut buf = vec![0u8; max];
        let mut out = Vec::new();
        let mut i = 0;
        while out.len() < frames.len() {
            if i < frames.len() && fw.send_deferred(&mut *tx, &frames[i]).unwrap() == Progress::Done
            {
                i += 1;
            }
            tx.commit().unwrap();
            while let Some(got) = fr.recv(&mut *rx, &mut buf).unwrap() {
                out.push(match got {
                    Received::Frame(n) => Ok(buf[..n].to_vec()),
                    Received::Skipped(n) => Err(n),
                });
            }
        }
        out
    }

    /// Small frames that are all in the ring leave it in one read (the first `recv` empties
    /// the ring, at every wrap position), and still come out one by one, whole and in order;
    /// a frame that does not fit the window stays for the general path.
    #[test]
    fn whole_small_frames_leave_the_ring_together() {
        let geo = V2Geometry::new(0, 0).unwrap();
        let g = GuardedRegion::new(geo.region_len());
        let (mut tx, _) = V2Ring::active(g.view(), geo, &[GrantRef(1), GrantRef(2)])
            .unwrap()
            .split();
        let (_, mut rx) = V2Ring::passive(g.view()).unwrap().split();
        let sizes = [
            0usize, 1, 13, 64, 252, 256, 7, 256, 256, 256, 256, 256, 256, 257,
        ];
        let step = if cfg!(miri) { 1500 } else { 7 };
        let mut fw = FrameWriter::new(usize::MAX);
        let mut re = Reassembler::new(9000);
        for (round, skew) in (0..4092).step_by(step).enumerate() {
            // Move both ends by `skew` + 4 bytes (one frame), so the batch starts anywhere.
            assert_eq!(
                fw.send_deferred(&mut tx, &vec![0xee; skew]).unwrap(),
                Progress::Done,
                "round {round}"
            );
            tx.commit().unwrap();
            assert!(matches!(re.recv(&mut rx).unwrap(), Some(Got::Frame(_))));
            assert_eq!(rx.readable().unwrap(), 0);
            let frames: Vec<Vec<u8>> = sizes
                .iter()
                .map(|&n| (0..n).map(|i| (i + round) as u8).collect())
                .collect();
            for f in &frames {
                assert_eq!(fw.send_deferred(&mut tx, f).unwrap(), Progress::Done);
            }
            tx.commit().unwrap();
            // The frames that end within the window (2 048 bytes: the first 12 here) leave
            // together; the rest stay in the ring.
            let first = re.recv(&mut rx).unwrap();
            assert_eq!(first, Some(Got::Frame(Bytes::from(frames[0].clone()))));
            let batch: usize = sizes
                .iter()
                .scan(0, |at, &n| {
                    *at += HEADER_LEN + n;
                    Some(*at)
                })
                .take_while(|&end| end <= SMALL_WINDOW)
                .count();
            let in_batch: usize = sizes[..batch].iter().map(|n| HEADER_LEN + n).sum();
            let total: usize = sizes.iter().map(|n| HEADER_LEN + n).sum();
            assert_eq!(rx.readable().unwrap(), total - in_batch, "round {round}");
            for f in &frames[1..] {
                assert_eq!(
                    re.recv(&mut rx).unwrap(),
                    Some(Got::Frame(Bytes::from(f.clone())))
                );
            }
            assert!(!re.in_progress());
            assert_eq!(re.recv(&mut rx).unwrap(), None);
        }
    }

    /// At every position of a 4 KiB ring, frames of several sizes (empty, small, just under and
    /// over the ring, one over the maximum) come out of the in-place path byte for byte as
    /// they come out of the copying one, and as they went in.
    #[test]
    fn in_place_frames_match_the_copying_path_at_every_wrap_position() {
        let geo = V2Geometry::new(0, 0).unwrap();
        let g = GuardedRegion::new(geo.region_len());
        let (mut tx, _) = V2Ring::active(g.view(), geo, &[GrantRef(1), GrantRef(2)])
            .unwrap()
            .split();
        let (_, mut rx) = V2Ring::passive(g.view()).unwrap().split();
        let max = 9000;
        let sizes = [0usize, 1, 13, 252, 253, 4092, 4096, 8999, 9001];
        let step = if cfg!(miri) { 1000 } else { 1 };
        let mut pos = 0usize;
        for (round, target) in (0..4096).step_by(step).enumerate() {
            // Move both ends to `target` with one filler frame (header + payload).
            let mut gap = (target + 4096 - pos) % 4096;
            if gap > 0 && gap < 4 {
                gap += 4096;
            }
            if gap > 0 {
                let filler = vec![vec![0xee; gap - 4]];
                assert_eq!(
                    in_place(&mut tx, &mut rx, &filler, max),
                    [Ok(filler[0].clone())]
                );
            }
            let frames: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(k, &n)| (0..n).map(|i| (i + 31 * k + round) as u8).collect())
                .collect();
            let want: Vec<Result<Vec<u8>, u32>> = frames
                .iter()
                .map(|f| {
                    if f.len() > max {
                        Err(f.len() as u32)
                    } else {
                        Ok(f.clone())
                    }
                })
                .collect();
            assert_eq!(
                in_place(&mut tx, &mut rx, &frames, max),
                want,
                "at {target}"
            );
            assert_eq!(copying(&mut tx, &mut rx, &frames, max), want, "at {target}");
            let total: usize = sizes.iter().map(|n| n + 4).sum();
            pos = (target + 2 * total) % 4096;
        }
        g.assert_guards();
    }
}
