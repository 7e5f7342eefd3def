#!/usr/bin/env bash
# Runs the whole system: installs what is missing, starts the Kafka broker (var/kafka, 127.0.0.1:9092)
# and the three services in one process (ports 8001-8003).
#
# Without LUCCS_CONFIG it runs the demo: the LUCCS simulator (ports 9100-9112, log in
# var/demo/simulator.log), the services with deploy/demo/luccs.toml watching it, and three demo EOs
# registered through the procedure API. With LUCCS_CONFIG=file.toml it runs the services on that
# configuration only, no simulator. Ctrl-C stops everything it started, the broker included.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
"$REPO/scripts/bootstrap.sh"
"$REPO/deploy/kafka/kafka.sh" start
BIN="$REPO/.venv/bin"
app=""
simulator=""
stop_process() {
    if [[ -n "$1" ]]; then kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi
}
stop() {
    # A second Ctrl-C (or a signal sent to the whole process group twice) must not cut the clean-up short.
    trap '' INT TERM
    stop_process "$app"
    stop_process "$simulator"
    "$REPO/deploy/kafka/kafka.sh" stop
}
trap stop EXIT
trap 'exit 130' INT TERM

if [[ -n "${LUCCS_CONFIG:-}" ]]; then
    echo "run.sh: detector http://127.0.0.1:8001/docs  procedure http://127.0.0.1:8002/docs  notifier http://127.0.0.1:8003/docs"
    echo "run.sh: configuration $LUCCS_CONFIG; Ctrl-C to stop"
    "$BIN/luccs-fallback" all --config "$LUCCS_CONFIG" &
    app=$!
    wait "$app"
    exit
fi

# The demo.
DEMO_CONFIG="$REPO/deploy/demo/luccs.toml"
DEMO_VAR="$REPO/var/demo"
SIMULATOR_URL="http://127.0.0.1:9100"
mkdir -p "$DEMO_VAR"
demo() { "$BIN/python" -m services.simulator.demo "$@"; }

echo "run.sh: demo: starting the LUCCS simulator (log: var/demo/simulator.log)"
"$BIN/luccs-fallback" simulator --base-port 9100 --eos 3 >>"$DEMO_VAR/simulator.log" 2>&1 &
simulator=$!
if ! demo ready "$SIMULATOR_URL/healthz" --within-s 30 --watch "$simulator"; then
    echo "run.sh: the simulator did not start; the end of var/demo/simulator.log:" >&2
    tail -n 20 "$DEMO_VAR/simulator.log" >&2
    exit 1
fi
echo "run.sh: demo: starting the services with deploy/demo/luccs.toml"
"$BIN/luccs-fallback" all --config "$DEMO_CONFIG" &
app=$!
if ! demo ready http://127.0.0.1:8001/readyz http://127.0.0.1:8002/readyz http://127.0.0.1:8003/readyz \
        --within-s 120 --watch "$app"; then
    echo "run.sh: the services did not become ready (see their log above)" >&2
    exit 1
fi
demo register --procedure-url http://127.0.0.1:8002 --keys-file "$DEMO_VAR/eo-api-keys.json" ||
    echo "run.sh: some demo EOs could not be registered (see above); the demo runs on" >&2
demo guide
wait "$app"
