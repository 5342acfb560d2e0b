//! The frame decoder on a hostile byte stream: frames or skips, never a panic, never more than
//! the caller's buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pore_fuzz::Guarded;
use pore_ring::frame::{FrameReader, Received};
use pore_ring::prelude::*;
use pore_ring::xenstore::XenstoreRing;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let max = usize::from(first) * 8;
    let g = Guarded::new(4096);
    let mut peer = XenstoreRing::client(g.view()).expect("client");
    let mut us = XenstoreRing::server(g.view()).expect("server");
    let mut reader = FrameReader::new(max);
    let mut buf = vec![0u8; max];
    let mut off = 0;
    while off < rest.len() {
        // The peer's chunking is part of the input too.
        let step = usize::from(rest[off]) % 1024 + 1;
        let end = (off + step).min(rest.len());
        off += peer.writer().write(&rest[off..end]).expect("write");
        while let Some(r) = reader.recv(us.reader(), &mut buf).expect("recv") {
            if let Received::Frame(n) = r {
                assert!(n <= max);
            }
        }
    }
    g.check();
});
