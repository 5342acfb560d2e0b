#!/usr/bin/env bash
# The examples run (phase 20's clippy --all-targets builds them all): pore-core's custom_backend,
# a backend written from the checklist of pore-core's docs, opening a pore between its two
# in-memory domains; pore-straw's sim_chat, two domains of the simulated Xen on a straw. Each
# with a hard time limit; a failed check exits non-zero. pore-xenstore's xs_client
# needs a xenstored and runs in phase 40 against Debian's daemons.
set -euo pipefail
cargo build -p pore-core --example custom_backend
timeout 60 cargo run -q -p pore-core --example custom_backend
cargo build -p pore-straw --features xenstore --example sim_chat
timeout 60 cargo run -q -p pore-straw --features xenstore --example sim_chat
