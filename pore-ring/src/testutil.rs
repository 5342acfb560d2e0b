//! Test helpers: a shared region with guard bytes around it.

use core::sync::atomic::Ordering;
use pore_core::loopback::{Loopback, LoopbackGrant};
use pore_core::{DomId, Grants, SharedAccess, SharedMemory, SharedView, PAGE_SIZE};

/// Guard bytes before and after the region.
pub const GUARD: usize = 256;
const PATTERN: u8 = 0xa5;

/// Proptest case count: small under miri, overridable with `PROPTEST_CASES`.
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(miri) { 3 } else { 128 })
}

/// Upper bound of a proptest operation count: small under miri.
pub fn max_ops(n: usize) -> usize {
    if cfg!(miri) {
        n.min(6)
    } else {
        n
    }
}

/// `len` bytes of zeroed shared memory with [`GUARD`] bytes of a known pattern on each side.
pub struct Guarded {
    grant: LoopbackGrant,
    len: usize,
}

impl Guarded {
    pub fn new(len: usize) -> Self {
        let pages = (len + 2 * GUARD).div_ceil(PAGE_SIZE);
        let grant = Loopback::new()
            .domain(DomId(1))
            .grant(DomId(2), pages)
            .expect("loopback grant");
        let g = Guarded { grant, len };
        let all = g.grant.view();
        for i in (0..GUARD).chain(GUARD + len..all.len()) {
            all.store_u8(i, PATTERN, Ordering::Relaxed);
        }
        g
    }

    /// The region between the guards.
    pub fn view(&self) -> SharedView<'_> {
        self.grant.view().subview(GUARD, self.len).expect("fits")
    }

    /// Panics if any guard byte changed.
    pub fn assert_guards(&self) {
        let all = self.grant.view();
        for i in (0..GUARD).chain(GUARD + self.len..all.len()) {
            assert_eq!(
                all.load_u8(i, Ordering::Relaxed),
                PATTERN,
                "guard byte {i} overwritten"
            );
        }
    }
}
