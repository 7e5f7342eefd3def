#!/usr/bin/env bash
# Runs the benchmarks and prints their figures: installs what is missing, starts a broker of its own
# (var/bench, 127.0.0.1:39092) and stops it afterwards. `scripts/bench.sh detector` (or procedure, import, memory, e2e_latency, joint_outage,
# notifier) runs one; extra arguments go to that benchmark, e.g. `scripts/bench.sh notifier --eos 2000`.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
"$REPO/scripts/bootstrap.sh" >/dev/null
export LUCCS_VAR_DIR="$REPO/var/bench" KAFKA_PORT=39092 KAFKA_CONTROLLER_PORT=39093
export LUCCS_BENCH_KAFKA="127.0.0.1:$KAFKA_PORT"
trap '"$REPO/deploy/kafka/kafka.sh" stop' EXIT
"$REPO/deploy/kafka/kafka.sh" start

which="${1:-all}"
[[ $# -gt 0 ]] && shift
for bench in detector procedure notifier import memory e2e_latency joint_outage; do
    if [[ "$which" == all || "$which" == "$bench" ]]; then
        echo "== bench/${bench}_bench.py"
        "$REPO/.venv/bin/python" -m "bench.${bench}_bench" "$@"
    fi
done
