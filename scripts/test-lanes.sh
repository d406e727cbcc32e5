#!/usr/bin/env bash
# Runs the whole test suite as two pytest sessions at once (what `make test` and CI run):
#
#   lane A (this terminal): everything but lane B's tests;
#   lane B (in the background, its output printed when both are done): the image's tests and the real node's
#           (tests/image, and tests/cluster's node, KServe, chart and rollout-on-node modules).
#
# Lane B's tests spend most of their time waiting (pods starting, KServe reconciling, containers, rollout intervals)
# and, on a cold machine, for the image and the cluster binaries to be built (scripts/image.sh and
# scripts/warm-tools.sh in the background): run beside lane A they cost little more than lane A alone. Each lane is
# a separate session with its own fixtures and temporary directory; nothing they start is shared (free ports,
# their own PostgreSQL, MLflow, control planes). Arguments go to both lanes (e.g. -x, -k expression).
# Exit status: 0 when both lanes passed, else the first failing lane's.
#
#   scripts/test-lanes.sh [pytest arguments]
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

py=.venv/bin/python
lane_b=(
  tests/image
  tests/cluster/test_node.py
  tests/cluster/test_kserve.py
  tests/cluster/test_chart_on_node.py
  tests/cluster/test_rollout_on_node.py
)
ignore=()
for path in "${lane_b[@]}"; do ignore+=("--ignore=$path"); done

# Each lane's temporary directory (pytest empties it when the lane starts, so the last run's stays for a look),
# one per checkout.
work=${TMPDIR:-/tmp}/shepherd-tests-$(printf '%s' "$PWD" | sha256sum | cut -c1-12)
mkdir -p "$work"
echo "==> lane B (${lane_b[*]}) runs in the background; its report follows lane A's (log: $work/lane-b.log)"
"$py" -m pytest --basetemp="$work/lane-b" --durations=15 "$@" "${lane_b[@]}" >"$work/lane-b.log" 2>&1 &
lane_b_pid=$!

"$py" -m pytest --basetemp="$work/lane-a" --durations=40 "$@" "${ignore[@]}"
lane_a_status=$?

if kill -0 "$lane_b_pid" 2>/dev/null; then
  echo "==> lane A done (exit $lane_a_status); waiting for lane B"
fi
wait "$lane_b_pid"
lane_b_status=$?
echo
echo "==================================== lane B ===================================="
cat "$work/lane-b.log"
echo "==> lane A exit $lane_a_status, lane B exit $lane_b_status"
# 5 is pytest's "no tests collected": a selection (-k, a path) that only one lane's tests match.
if [ "$lane_a_status" -eq 5 ] && [ "$lane_b_status" -eq 5 ]; then exit 5; fi
for status in "$lane_a_status" "$lane_b_status"; do
  if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then exit "$status"; fi
done
exit 0
