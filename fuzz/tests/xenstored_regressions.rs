//! The xenstored targets' seed scenarios as tests: each must pass both modes, and its
//! encoding must decode to the same moves.

use pore_fuzz::xenstored::{decode, encode, run, run_scenario, seeds};

#[test]
fn seeds_pass_and_round_trip() {
    for sc in seeds() {
        run_scenario(&sc, false);
        run_scenario(&sc, true);
        let bytes = encode(&sc);
        assert_eq!(format!("{:?}", decode(&bytes)), format!("{:?}", sc.moves));
        run(&bytes, true);
    }
}
