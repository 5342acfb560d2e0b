//! Helpers shared by the fuzz targets: shared memory with guard bytes, and an interpreter that
//! turns fuzz input into a hostile peer's moves interleaved with our ring operations.

use std::sync::atomic::Ordering;

pub mod straw_json;
pub mod straw_manager;
pub mod xenstored;

use pore_core::{RingReader, RingWriter, SharedAccess, SharedRing, SharedView};

/// Shared memory with guard bytes around it; `check` is the fuzz finding if a guard changed.
pub struct Guarded(pore_core::loopback::GuardedRegion);

impl Guarded {
    /// Zeroed region of `len` bytes.
    pub fn new(len: usize) -> Self {
        Guarded(pore_core::loopback::GuardedRegion::new(len))
    }

    /// The region.
    pub fn view(&self) -> SharedView<'_> {
        self.0.view()
    }

    /// Crashes (a fuzz finding) if a guard byte changed.
    pub fn check(&self) {
        self.0.assert_guards();
    }
}

/// Plays `input` as a sequence of 7-byte moves: the peer storing a `u32` or a byte at one of
/// `peer_words` / anywhere in `peer_bytes_len`, or us reading or writing up to a few KiB.
/// Every ring result must be a value or an error; lengths must be in range.
pub fn play<R: SharedRing>(ring: &mut R, view: SharedView<'_>, peer_words: &[usize], input: &[u8]) {
    let mut buf = vec![0u8; 20_000];
    for mv in input.chunks_exact(7) {
        let value = u32::from_le_bytes([mv[1], mv[2], mv[3], mv[4]]);
        let len = usize::from(u16::from_le_bytes([mv[5], mv[6]])) % buf.len();
        match mv[0] % 6 {
            0 | 1 => {
                let off = peer_words[usize::from(mv[5]) % peer_words.len()];
                view.store_u32(off, value, Ordering::Relaxed);
            }
            2 => {
                let off = (value as usize) % view.len();
                view.store_u8(off, mv[5], Ordering::Relaxed);
            }
            3 => {
                if let Ok(n) = ring.writer().write(&buf[..len]) {
                    assert!(n <= len);
                }
            }
            4 => {
                if let Ok(n) = ring.reader().read(&mut buf[..len]) {
                    assert!(n <= len);
                }
            }
            _ => {
                let _ = ring.reader().readable();
                let _ = ring.writer().writable();
                let _ = ring.take_notify();
                let _ = if mv[5] & 1 == 0 {
                    ring.reader().prepare_wait()
                } else {
                    ring.writer().prepare_wait()
                };
            }
        }
    }
}
