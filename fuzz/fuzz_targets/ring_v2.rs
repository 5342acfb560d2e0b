//! A v2 ring facing a hostile peer: a garbage control page offered to the passive side, or
//! garbage indices and flags under an active one.
#![no_main]

use std::sync::atomic::Ordering;

use libfuzzer_sys::fuzz_target;
use pore_core::{GrantRef, SharedAccess};
use pore_fuzz::{play, Guarded};
use pore_ring::v2::{self, V2Geometry, V2Ring};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let geo = V2Geometry::new(first & 1, (first >> 1) & 1).expect("small orders");
    let g = Guarded::new(geo.region_len());
    let v = g.view();
    let words = [
        v2::A2P_PROD,
        v2::A2P_CONS,
        v2::P2A_PROD,
        v2::P2A_CONS,
        v2::A2P_WANT_WRITE,
        v2::P2A_WANT_READ,
        v2::A2P_ORDER,
        v2::MAGIC,
    ];
    if first & 4 == 0 {
        let refs: Vec<GrantRef> = (0..geo.data_pages() as u32).map(GrantRef).collect();
        let mut ring = V2Ring::active(v, geo, &refs).expect("create");
        play(&mut ring, v, &words, rest);
    } else {
        // The peer wrote the control page: a valid header perturbed by the input.
        let refs: Vec<GrantRef> = (0..geo.data_pages() as u32).map(GrantRef).collect();
        let _ = V2Ring::active(v, geo, &refs).expect("create");
        let (header, moves) = rest.split_at(rest.len().min(32));
        for (i, b) in header.chunks_exact(4).enumerate() {
            let off = words[i % words.len()];
            v.store_u32(
                off,
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                Ordering::Relaxed,
            );
        }
        if let Ok(mut ring) = V2Ring::passive(v) {
            play(&mut ring, v, &words, moves);
        }
    }
    g.check();
});
