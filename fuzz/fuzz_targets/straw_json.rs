//! A straw's JSON envelopes and mailboxes facing a hostile peer, checked against a model
//! after every move (see `pore_fuzz::straw_json`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pore_fuzz::straw_json::run(data);
});
