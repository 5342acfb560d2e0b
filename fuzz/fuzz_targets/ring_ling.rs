//! A LING straw (either side) facing a hostile peer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pore_fuzz::{play, Guarded};
use pore_ring::ling::{LingRing, IN_CONS, IN_PROD, LING_REGION, OUT_CONS, OUT_PROD};
use pore_ring::Side;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let g = Guarded::new(LING_REGION);
    let v = g.view();
    let role = if first & 1 == 0 {
        Side::Active
    } else {
        Side::Passive
    };
    if let Ok(mut ring) = LingRing::new(v, role) {
        play(&mut ring, v, &[IN_PROD, IN_CONS, OUT_CONS, OUT_PROD], rest);
    }
    g.check();
});
