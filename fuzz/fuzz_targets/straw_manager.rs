//! The straw manager facing hostile knocks: peers writing anything into its straw top, its
//! bounds checked after every move (see `pore_fuzz::straw_manager`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pore_fuzz::straw_manager::run(data);
});
