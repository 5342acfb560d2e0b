#!/usr/bin/env bash
# The examples run (phase 20's clippy --all-targets builds them all): pore-straw's sim_chat, two
# domains of the simulated Xen on a straw, with a hard time limit. pore-xenstore's xs_client
# needs a xenstored and runs in phase 40 against Debian's daemons.
set -euo pipefail
cargo build -p pore-straw --features xenstore --example sim_chat
timeout 60 cargo run -q -p pore-straw --features xenstore --example sim_chat
