#!/usr/bin/env bash
# The whole test suite: installs what is missing, starts a Kafka broker, a 3-broker Kafka cluster (for
# tests/chaos/test_kafka_cluster.py) and PostgreSQL of its own (under var/test, on ports that do not clash
# with `make run`), runs lint, types and every test, and stops the servers again. `scripts/test.sh unit` runs only lint, types and the unit tests.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
SCOPE="${1:-all}"
started=$(date +%s)

[[ "$SCOPE" == "unit" ]] || export LUCCS_BOOTSTRAP_BROWSER=1 LUCCS_BOOTSTRAP_FULL=1
"$REPO/scripts/bootstrap.sh"
PY="$REPO/.venv/bin"

echo "== ruff"
"$PY/ruff" check .
echo "== mypy"
"$PY/mypy" .

if [[ "$SCOPE" == "unit" ]]; then
    echo "== pytest (unit)"
    set +e
    "$PY/pytest" tests/unit -q
    rc=$?
else
    export LUCCS_VAR_DIR="$REPO/var/test"
    export KAFKA_PORT="${TEST_KAFKA_PORT:-19092}" KAFKA_CONTROLLER_PORT="${TEST_KAFKA_CONTROLLER_PORT:-19093}"
    export PG_PORT="${TEST_PG_PORT:-55432}" PG_DB=luccs_test
    # PostgreSQL runs as the 'postgres' user when we are root: it must be able to reach its data dir.
    PG_VAR_DIR="$LUCCS_VAR_DIR"
    if [[ $(id -u) -eq 0 ]] && ! { id postgres >/dev/null 2>&1 && runuser -u postgres -- test -x "$REPO"; }; then
        PG_VAR_DIR="/var/tmp/luccs-fallback-test-$PG_PORT"  # one per port: runs side by side stay apart
    fi
    pg() { LUCCS_VAR_DIR="$PG_VAR_DIR" "$REPO/deploy/postgres/pg.sh" "$@"; }
    CLUSTER_PORT="${TEST_KAFKA_CLUSTER_PORT:-19192}"  # nodes on 19192-19194, controllers on 19292-19294
    cluster() {
        KAFKA_NODES=3 KAFKA_PORT="$CLUSTER_PORT" KAFKA_CONTROLLER_PORT="${TEST_KAFKA_CLUSTER_CONTROLLER_PORT:-19292}" \
            "$REPO/deploy/kafka/kafka.sh" "$@"
    }
    cleanup() {
        "$REPO/deploy/kafka/kafka.sh" stop || true
        cluster stop || true
        pg stop || true
    }
    trap cleanup EXIT
    echo "== starting Kafka (one broker and a 3-broker cluster) and PostgreSQL for the tests"
    cluster start &
    cluster_starting=$!
    "$REPO/deploy/kafka/kafka.sh" start
    pg start
    wait "$cluster_starting" || { echo "test.sh: the 3-broker Kafka cluster did not start" >&2; exit 1; }
    export LUCCS_TEST_KAFKA="127.0.0.1:$KAFKA_PORT"
    export LUCCS_TEST_KAFKA_CLUSTER="127.0.0.1:$CLUSTER_PORT,127.0.0.1:$((CLUSTER_PORT + 1)),127.0.0.1:$((CLUSTER_PORT + 2))"
    export LUCCS_TEST_KAFKA_CLUSTER_DIR="$LUCCS_VAR_DIR/kafka-cluster"
    LUCCS_TEST_POSTGRES_URL="$(pg url)"
    export LUCCS_TEST_POSTGRES_URL
    echo "== pytest (unit, integration, e2e)"
    set +e
    "$PY/pytest" -q --durations=10
    rc=$?
fi
set -e
if [[ $rc -eq 5 ]]; then
    echo "test.sh: pytest collected no tests: that is a failure, not a pass" >&2
    exit 1
fi
echo "test.sh: finished in $(( $(date +%s) - started ))s with exit code $rc"
exit "$rc"
