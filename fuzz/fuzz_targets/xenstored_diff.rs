//! The `xenstored` target with a first-principles model of permission decisions: a wrong
//! answer, not only a broken invariant, is a finding (see `pore_fuzz::xenstored`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pore_fuzz::xenstored::run(data, true);
});
