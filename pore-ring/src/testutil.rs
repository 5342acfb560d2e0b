//! Test helpers: a shared region with guard bytes around it.

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

/// Shared memory with guard bytes around it (pore-core's test helper).
pub type Guarded = pore_core::loopback::GuardedRegion;
