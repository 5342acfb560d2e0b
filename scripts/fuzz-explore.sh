#!/usr/bin/env bash
# Exploratory fuzzing, on demand (CI's phase 70 is deterministic and short):
#
#   bash scripts/fuzz-explore.sh [TARGET|all] [SECONDS]      # default: all, 600 s each
#
# Each target fuzzes for SECONDS from a random seed, starting from its committed seeds and the
# corpus it kept from earlier runs (fuzz/corpus/<target>, not committed); a crash stops that
# target, prints its report (panic, input decoded, how to run it again) and the script goes on
# with the next one; the exit status is non-zero if any crashed. A finding becomes a
# regression seed once fixed: `cargo +nightly fuzz tmin TARGET INPUT`, then copy the result to
# fuzz/seeds/<target> (for the xenstored targets prefer a scenario in
# fuzz/src/xenstored.rs's `seeds()`, written out by `cargo run --example seeds`).
set -euo pipefail
which="${1:-all}"
secs="${2:-600}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pore-target}/fuzz"
cd "$(dirname "$0")/../fuzz"
. ../scripts/fuzz-common.sh
if [ "$which" = all ]; then
  targets=("${fuzz_targets[@]}")
else
  targets=("$which")
fi
failed=0
for t in "${targets[@]}"; do
  fuzz_target_setup "$t"
  mkdir -p "corpus/$t"
  log=$(mktemp)
  echo "fuzz-explore: $t for ${secs}s"
  if cargo +nightly fuzz run "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$secs" \
    -print_final_stats=1 "${opts[@]}" >"$log" 2>&1; then
    grep -E "^Done [0-9]+ runs|^stat::number_of_executed_units|^stat::average_exec_per_sec" "$log" ||
      tail -n 3 "$log"
    # Coverage and corpus size from libFuzzer's last status line.
    grep -E "^#[0-9]+[[:space:]]" "$log" | tail -n 1 | grep -o -E "cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[^ ]+" || true
  else
    fuzz_report_failure "$t" "$log"
    failed=1
  fi
  rm -f "$log"
done
exit "$failed"
