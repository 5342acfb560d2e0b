#!/usr/bin/env bash
# Fuzz targets (docs/decisions.md D22): each pore-ring consumer facing a hostile peer, the frame
# decoder, the xenstore codec, the strawman handshake, and pore's xenstored facing hostile
# guests (its state recounted after every step; the _diff target adds a first-principles
# permission model), a straw's JSON envelopes and mailboxes against a model, and the straw
# manager facing hostile knocks (its bounds checked after every move).
#
# Deterministic, so that CI is not red by luck: each target replays its committed seeds
# (fuzz/seeds/<target>, the hand-written regression scenarios) and then runs a fixed number
# of inputs from a fixed libFuzzer seed, starting from an empty scratch corpus; a given commit
# always fuzzes the same inputs. straw_manager's manager runs threads on real time, so its
# inputs could not repeat: CI only replays its seeds (the regression scenarios; runs=1 stops
# after the initial corpus) and its open-ended runs are scripts/fuzz-explore.sh's. The numbers below take
# 15-25 s per target on the 2-CPU CI machine. PORE_FUZZ_SEED changes the seed, PORE_FUZZ_SCALE (percent) the number of runs.
# Open-ended, time-based fuzzing that keeps a corpus is scripts/fuzz-explore.sh (README).
# The fuzz crate is its own workspace: formatted and linted here too.
set -euo pipefail
seed="${PORE_FUZZ_SEED:-1}"
scale="${PORE_FUZZ_SCALE:-100}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pore-target}/fuzz"
cd "$(dirname "$0")/../../fuzz"
. ../scripts/fuzz-common.sh

# Runs per target (seeds included).
declare -A runs=(
  [ring_xenstore]=85000
  [ring_ling]=70000
  [ring_v2]=65000
  [frame_decoder]=70000
  [xenstore_codec]=580000
  [straw_handshake]=200000
  [xenstored]=10000
  [xenstored_diff]=9000
  [straw_json]=26000
  [straw_manager]=1
)

echo "fuzz: fmt + clippy of the fuzz crate"
cargo +nightly fmt --check
cargo +nightly clippy --all-targets -- -D warnings

echo "fuzz: build"
cargo +nightly fuzz build
bin="$CARGO_TARGET_DIR/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# The coverage of an input must not change from run to run, or neither would the inputs
# libFuzzer tries next: std's HashMap keys come from getrandom(2), fixed here (hash table
# probing is instrumented code), and address randomisation is off (cargo-fuzz's stack-depth
# feature sees addresses), and so are libFuzzer's comparison-guided mutations (-use_cmp=0:
# the operands it records include heap addresses, which vary with the timing of its own
# threads; this costs some coverage, which scripts/fuzz-explore.sh keeps).
cc -shared -fPIC -O2 -o "$scratch/fixed-random.so" ../scripts/fuzz-fixed-random.c
norand=(setarch "$(uname -m)" -R)
if ! "${norand[@]}" true 2>/dev/null; then
  echo "fuzz: warning: cannot turn address randomisation off; runs may differ slightly"
  norand=()
fi
for t in "${fuzz_targets[@]}"; do
  n=$(( runs[$t] * scale / 100 ))
  fuzz_target_setup "$t"
  echo "fuzz: $t: seeds ${seeds[*]:-none}, then up to $n runs from seed $seed"
  mkdir -p "$scratch/$t"
  log="$scratch/$t.log"
  start=$(date +%s)
  mkdir -p "artifacts/$t"
  if LD_PRELOAD="$scratch/fixed-random.so" "${norand[@]}" "$bin/$t" -artifact_prefix="$PWD/artifacts/$t/" \
    -seed="$seed" -runs="$n" -use_cmp=0 "${opts[@]}" "$scratch/$t" "${seeds[@]}" >"$log" 2>&1; then
    # The run count, then coverage and corpus size from libFuzzer's last status line.
    done_line=$(grep -E "^Done [0-9]+ runs" "$log" | tail -n 1 || true)
    cov=$(grep -E "^#[0-9]+[[:space:]]" "$log" | tail -n 1 | grep -o -E "cov: [0-9]+ ft: [0-9]+ corp: [0-9]+" || true)
    echo "fuzz: $t: ok: ${done_line:-no run count}; ${cov:-no status line}; $(( $(date +%s) - start )) s"
  else
    fuzz_report_failure "$t" "$log"
    exit 1
  fi
done
