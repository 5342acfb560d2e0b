# Shared by scripts/phases/70-fuzz.sh and scripts/fuzz-explore.sh (sourced, run from fuzz/):
# each target's seed directories and libFuzzer options, and the report of a failed run.

# All targets, in the order phase 70 runs them.
fuzz_targets=(ring_xenstore ring_ling ring_v2 frame_decoder xenstore_codec straw_handshake
  xenstored xenstored_diff straw_json straw_manager)

# Sets `seeds` (committed seed directories) and `opts` (libFuzzer options) for target $1.
fuzz_target_setup() {
  seeds=()
  opts=(-rss_limit_mb=2048 -reload=0)
  case "$1" in
    xenstored*) seeds=(seeds/xenstored); opts+=(-max_len=4096 -len_control=0) ;;
    straw_json) seeds=(seeds/straw_json) ;;
    # Threads and real time: an input takes tens of milliseconds, a deadlock is a finding.
    straw_manager) seeds=(seeds/straw_manager); opts+=(-timeout=60) ;;
  esac
}

# Prints what a failed run of target $1 (its whole output in file $2) found: the panic or
# sanitizer report, the crash input decoded (moves for the xenstored targets, straw_json
# and straw_manager, the Debug format otherwise) and how to run it again.
fuzz_report_failure() {
  local t="$1" log="$2" input
  echo "fuzz: $t FAILED; the report:"
  grep -E -A14 "panicked at|==[0-9]+==ERROR|^ERROR: libFuzzer|SUMMARY: libFuzzer" "$log" |
    grep -v -E "^ +(at |[0-9]+: )" | head -n 60 || true
  input=$(grep -o -E "Test unit written to [^ ]+" "$log" | tail -n 1 | sed 's/^Test unit written to //')
  if [ -z "$input" ] || [ ! -f "$input" ]; then
    echo "fuzz: $t: no crash input was written; the end of its output:"
    tail -n 40 "$log"
    return
  fi
  echo "fuzz: $t: the crash input, $input ($(wc -c < "$input") bytes):"
  case "$t" in
    xenstored* | straw_json | straw_manager) cargo +nightly run -q --example show -- "$input" 2>&1 | head -n 200 ;;
    *) cargo +nightly fuzz fmt "$t" "$input" 2>&1 | grep -v -E "^ *(Compiling|Finished|Running)" | head -n 60 ;;
  esac
  echo "fuzz: run it again: (cd fuzz && cargo +nightly fuzz run $t $input)"
}
