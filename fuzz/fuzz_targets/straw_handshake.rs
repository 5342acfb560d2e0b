//! The strawman handshake and close machine driven by hostile xenstore values, replies, watch
//! events and timings (pore-straw's deterministic entry point): never a panic, always finishes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pore_straw::fuzz::drive_handshake(data);
});
