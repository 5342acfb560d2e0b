//! Reassembly of the length-prefixed frames of a straw (`std`, D5: `Bytes` and reassembly live
//! in pore-straw).
//!
//! The wire format is pore-ring's framing (a 4-byte big-endian length, then the payload). Unlike
//! [`pore_ring::frame::FrameReader`], which needs a caller buffer as long as the frame before
//! it copies any of its payload, the [`Reassembler`] copies each payload byte once, into a
//! buffer that becomes the frame's [`Bytes`]. A length prefix from the peer never drives an
//! allocation past `RESTING` (64 KiB) by itself (DESIGN, "Memory a peer can write"): a longer frame's
//! buffer grows only as its payload arrives.

use std::vec::Vec;

use bytes::Bytes;
use pore_ring::frame::HEADER_LEN;
use pore_ring::{RingError, RingReader};

/// Bytes read ahead from the ring at the start of a frame: a small frame leaves the ring in one
/// copy with its header.
pub(crate) const AHEAD: usize = 256;

/// The most a length prefix alone makes us allocate: a frame up to this size gets a buffer of
/// exactly its length when its header arrives; a larger one starts with this much and grows
/// only as its payload arrives. Either way the buffer leaves with the frame (no copy).
pub(crate) const RESTING: usize = 64 * 1024;

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

/// Bytes read ahead of the frame being decoded.
struct Ahead {
    bytes: [u8; AHEAD],
    pos: usize,
    len: usize,
}

impl Ahead {
    fn available(&self) -> usize {
        self.len - self.pos
    }

    /// Fills `dst` from the read-ahead bytes, then from the ring; returns how many.
    fn pull<R: RingReader<Error = RingError> + ?Sized>(
        &mut self,
        ring: &mut R,
        dst: &mut [u8],
    ) -> Result<usize, RingError> {
        let mut n = self.available().min(dst.len());
        if n > 0 {
            dst[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
            self.pos += n;
        }
        if n < dst.len() {
            n += ring.read_deferred(&mut dst[n..])?;
        }
        Ok(n)
    }
}

/// Decodes frames from a ring into [`Bytes`], skipping (and counting) those over the maximum.
pub(crate) struct Reassembler {
    max: usize,
    header: [u8; HEADER_LEN],
    state: State,
    buf: Vec<u8>,
    ahead: Ahead,
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
            ahead: Ahead {
                bytes: [0; AHEAD],
                pos: 0,
                len: 0,
            },
        }
    }

    /// Whether a frame is partly read, or bytes read ahead wait to be decoded.
    pub(crate) fn in_progress(&self) -> bool {
        self.state != State::Header { got: 0 } || self.ahead.available() > 0
    }

    /// The capacity of the receive buffer (what a frame in progress costs us).
    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Grows the buffer to hold `need` bytes of a frame of `len`: doubling, never past `len`.
    fn reserve(&mut self, need: usize, len: usize) {
        if self.buf.capacity() < need {
            let target = self.buf.capacity().saturating_mul(2).max(need).min(len);
            self.buf.reserve_exact(target - self.buf.len());
        }
    }

    /// Decodes what the ring holds of the next frame and releases the ring space read (a frame
    /// larger than the ring streams through it over several calls). `Ok(None)`: more bytes are
    /// needed; call until it returns `Ok(None)` before waiting on the ring (a whole frame may
    /// sit in the read-ahead while the ring is empty).
    pub(crate) fn recv<R: RingReader<Error = RingError> + ?Sized>(
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

    fn recv_deferred<R: RingReader<Error = RingError> + ?Sized>(
        &mut self,
        ring: &mut R,
    ) -> Result<Option<Got>, RingError> {
        loop {
            match self.state {
                State::Header { got } => {
                    if got == 0 && self.ahead.available() == 0 {
                        self.ahead.pos = 0;
                        self.ahead.len = 0;
                        let mut bytes = self.ahead.bytes;
                        let n = ring.read_deferred(&mut bytes)?;
                        self.ahead.bytes = bytes;
                        self.ahead.len = n;
                        if n == 0 {
                            return Ok(None);
                        }
                    }
                    let mut header = self.header;
                    let n = self.ahead.pull(ring, &mut header[got..])?;
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
                        // Grow by what has arrived, never by what the header announces.
                        let avail = self.ahead.available() + ring.readable()?;
                        if avail == 0 {
                            return Ok(None);
                        }
                        // In chunks of a quarter ring, each released at once: the peer refills
                        // the ring while we copy the rest (a frame as large as the ring would
                        // otherwise leave the writer idle for a whole copy).
                        let chunk = (ring.capacity() / 4).max(4096);
                        let take = (len - got).min(avail).min(chunk);
                        self.reserve(got + take, len);
                        self.buf.resize(got + take, 0);
                        let n = self.ahead.pull(ring, &mut self.buf[got..])?;
                        self.buf.truncate(got + n);
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
                    let mut scratch = [0u8; 256];
                    let mut left = left;
                    while left > 0 {
                        let want = (left as usize).min(scratch.len());
                        let n = self.ahead.pull(ring, &mut scratch[..want])?;
                        if n == 0 {
                            break;
                        }
                        left -= n as u32;
                    }
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
