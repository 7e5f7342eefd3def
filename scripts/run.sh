#!/usr/bin/env bash
# Runs the whole system on its defaults: installs what is missing, starts the Kafka broker
# (var/kafka, 127.0.0.1:9092) and the three services in one process (ports 8001-8003).
# Ctrl-C stops the services and the broker. Use your own configuration with LUCCS_CONFIG=file.toml.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
"$REPO/scripts/bootstrap.sh"
"$REPO/deploy/kafka/kafka.sh" start
app=""
stop() {
    if [[ -n "$app" ]]; then kill -TERM "$app" 2>/dev/null || true; wait "$app" 2>/dev/null || true; fi
    "$REPO/deploy/kafka/kafka.sh" stop
}
trap stop EXIT
trap 'exit 130' INT TERM
echo "run.sh: detector http://127.0.0.1:8001/docs  procedure http://127.0.0.1:8002/docs  notifier http://127.0.0.1:8003/docs"
echo "run.sh: configuration ${LUCCS_CONFIG:-<built-in defaults>}; Ctrl-C to stop"
"$REPO/.venv/bin/luccs-fallback" all ${LUCCS_CONFIG:+--config "$LUCCS_CONFIG"} &
app=$!
wait "$app"
