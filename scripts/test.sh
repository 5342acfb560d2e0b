#!/usr/bin/env bash
# The project's test command (README): installs what a fresh machine lacks, then runs every
# phase in scripts/phases/ in name order, fast phases first (docs/decisions.md D22), printing the
# duration of each. Exits non-zero on the first failing phase.
#
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh 10 20      # only phases whose file name starts with 10 or 20
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PORE_ROOT="$root"
export CARGO_TERM_COLOR=never
# Keep the build cache outside the clone so CI's fresh clone reuses it (docs/decisions.md D22).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pore-target}"

# oxenstored rotates its logs by renaming them; pointed at /dev/null it leaves a regular file
# there, which breaks cargo and every redirection (scripts/xenstored/launch.sh never does that,
# but other launchers did). Repair a machine where that happened before anything runs.
if [ ! -c /dev/null ] && [ "$(id -u)" = 0 ]; then
  echo "test.sh: /dev/null is not a character device; recreating it"
  rm -f /dev/null && mknod -m 666 /dev/null c 1 3
fi

bash scripts/install-deps.sh

total_start=$(date +%s)
failed=0
for phase in scripts/phases/*.sh; do
  name=$(basename "$phase" .sh)
  if [ "$#" -gt 0 ]; then
    keep=0
    for want in "$@"; do case "$name" in "$want"*) keep=1 ;; esac; done
    [ "$keep" = 1 ] || continue
  fi
  start=$(date +%s)
  echo "=== phase $name: start"
  if bash "$phase"; then
    echo "=== phase $name: ok in $(( $(date +%s) - start )) s"
  else
    echo "=== phase $name: FAILED in $(( $(date +%s) - start )) s"
    failed=1
    break
  fi
done
echo "=== all phases: $(( $(date +%s) - total_start )) s"
exit "$failed"
