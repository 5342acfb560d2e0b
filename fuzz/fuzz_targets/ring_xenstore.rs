//! A xenstore client facing a hostile xenstored (and the reverse).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pore_fuzz::{play, Guarded};
use pore_ring::xenstore::{XenstoreRing, XsRole, REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let g = Guarded::new(4096);
    let v = g.view();
    let role = if first & 1 == 0 {
        XsRole::Client
    } else {
        XsRole::Server
    };
    if let Ok(mut ring) = XenstoreRing::new(v, role) {
        play(
            &mut ring,
            v,
            &[REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD],
            rest,
        );
    }
    g.check();
});
