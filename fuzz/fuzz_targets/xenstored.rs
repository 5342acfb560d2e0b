//! pore's xenstored facing hostile guests: structured moves from dom0, guests, stub
//! domains and a privileged guest, with the store's state recounted after every step
//! (see `pore_fuzz::xenstored`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pore_fuzz::xenstored::run(data, false);
});
