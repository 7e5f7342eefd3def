#!/usr/bin/env bash
# Apache Kafka (KRaft, every node broker+controller) for development and tests: one node, or with
# KAFKA_NODES=3 a local 3-node cluster on loopback (its own ports and data dirs, the same jars).
# The jars come from the Maven registry via pom.xml; the brokers run with plain `java`.
#
# Usage: kafka.sh fetch|start|stop|status|wipe
#
# Environment:
#   LUCCS_VAR_DIR          state root; the broker lives in $LUCCS_VAR_DIR/kafka, a cluster's nodes in
#                          $LUCCS_VAR_DIR/kafka-cluster/node-<id>   (default <repo>/var)
#   KAFKA_NODES            1 (default) or more: a cluster of that many nodes, node ids 1..N, each a broker
#                          and a KRaft voter; internal topics replicated N times, min ISR 2. `start`
#                          starts the nodes that are not running (e.g. one that was killed) and waits for
#                          all; `stop` stops every node.
#   KAFKA_PORT             client (PLAINTEXT) port on 127.0.0.1; in a cluster node i listens on
#                          KAFKA_PORT+i-1                          (default 9092; cluster 9192)
#   KAFKA_CONTROLLER_PORT  KRaft controller port on 127.0.0.1; in a cluster KAFKA_CONTROLLER_PORT+i-1
#                                                                  (default 9093; cluster 9292)
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to answer (default 60)
#   KAFKA_HEAP_OPTS        JVM heap flags        (default -Xms256m -Xmx512m; cluster -Xms128m -Xmx384m)
#   KAFKA_JVM_OPTS         extra JVM flags                         (default none)
#   KAFKA_EXTRA_PROPERTIES a file of key=value lines (one per line) added to the generated
#                          server.properties; a key it sets replaces the generated one (e.g.
#                          listeners, to add SSL or SASL_SSL listeners). Keep the PLAINTEXT listener
#                          on KAFKA_PORT: the readiness probe uses it.         (default none)
#   KAFKA_SCRAM_USERS      SCRAM credentials created when the storage is formatted (first start or
#                          after a wipe), whitespace-separated, each MECHANISM=[name=USER,password=PW]
#                          as `kafka-storage format --add-scram` takes it     (default none)
#   PYTHON                 interpreter with aiokafka for the readiness probe
#                          (default <repo>/.venv/bin/python; falls back to a Java probe)
#   JAVA, MVN              commands to use (default java, mvn)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
LIB="$HERE/lib"
POM="$HERE/pom.xml"
STAMP="$LIB/.pom.sha256"

VAR_DIR="${LUCCS_VAR_DIR:-$REPO/var}"
NODES="${KAFKA_NODES:-1}"
[[ "$NODES" =~ ^[1-9]$ ]] || { echo "kafka.sh: error: KAFKA_NODES must be 1 to 9, not '$NODES'" >&2; exit 1; }
if (( NODES == 1 )); then
    BASE_DIR="$VAR_DIR/kafka"
    BASE_PORT="${KAFKA_PORT:-9092}"
    BASE_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
    HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
else
    BASE_DIR="$VAR_DIR/kafka-cluster"
    BASE_PORT="${KAFKA_PORT:-9192}"
    BASE_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9292}"
    HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms128m -Xmx384m}"
    if (( BASE_PORT < BASE_CONTROLLER_PORT + NODES && BASE_CONTROLLER_PORT < BASE_PORT + NODES )); then
        echo "kafka.sh: error: client ports $BASE_PORT.. and controller ports $BASE_CONTROLLER_PORT.. overlap" \
            "for $NODES nodes (set KAFKA_PORT / KAFKA_CONTROLLER_PORT further apart)" >&2
        exit 1
    fi
fi
VOTERS=""
for ((n = 1; n <= NODES; n++)); do VOTERS+="${VOTERS:+,}$n@127.0.0.1:$((BASE_CONTROLLER_PORT + n - 1))"; done

# The per-node paths and ports; select_node sets them for node $1 (the single broker is node 1 in
# $VAR_DIR/kafka, as it always was).
select_node() {
    NODE_ID="$1"
    if (( NODES == 1 )); then DATA_DIR="$BASE_DIR"; else DATA_DIR="$BASE_DIR/node-$NODE_ID"; fi
    LOG_DIR="$DATA_DIR/logs-data"          # Kafka's log.dirs (topic data + KRaft metadata)
    PROPS="$DATA_DIR/server.properties"    # effective config generated from ../server.properties
    PID_FILE="$DATA_DIR/kafka.pid"
    SERVER_LOG="$DATA_DIR/server.log"
    FORMAT_STAMP="$DATA_DIR/format.stamp"  # cluster id + hash of the config the storage was formatted with
    PORT=$((BASE_PORT + NODE_ID - 1))
    CONTROLLER_PORT=$((BASE_CONTROLLER_PORT + NODE_ID - 1))
}
select_node 1

START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
JAVA="${JAVA:-java}"
MVN="${MVN:-mvn}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
EXTRA_PROPS="${KAFKA_EXTRA_PROPERTIES:-}"

log() { printf 'kafka.sh: %s\n' "$*"; }
die() { printf 'kafka.sh: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------
# fetch: fill lib/ from pom.xml, only when lib/ is missing or the pom changed since.
# ---------------------------------------------------------------------------------------
lib_is_current() {
    [[ -f "$STAMP" ]] && compgen -G "$LIB/kafka_2.13-*.jar" >/dev/null &&
        [[ "$(cat "$STAMP")" == "$(sha256sum "$POM" | cut -d' ' -f1)" ]]
}

cmd_fetch() {
    # Serialise concurrent fetches (e.g. two test runs) on the pom itself: no extra lock file.
    exec 8<"$POM"
    flock 8
    if lib_is_current; then
        log "jars up to date in $LIB"
        exec 8<&-
        return 0
    fi
    command -v "$MVN" >/dev/null || die "'$MVN' not found: Maven is needed to fetch the Kafka jars"
    log "fetching Kafka jars with Maven (pom changed or lib/ missing) ..."
    local t0=$EPOCHREALTIME
    # Download into a side directory and swap, so an interrupted fetch never leaves half a lib/.
    rm -rf "$LIB.tmp"
    # (The sed drops stray colour codes that Debian's Maven 3.8 prints even in batch mode.)
    "$MVN" -B -q -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$LIB.tmp" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2
    sha256sum "$POM" | cut -d' ' -f1 >"$LIB.tmp/.pom.sha256"
    rm -rf "$LIB"
    mv "$LIB.tmp" "$LIB"
    log "fetched $(find "$LIB" -name '*.jar' | wc -l) jars in $(elapsed "$t0")s"
    exec 8<&-
}

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# Is PID a live broker of *this* data dir? (Guards against a recycled pid in a stale pid file.)
# Matches argv elements exactly ("kafka.Kafka" then our properties path), so that e.g. a grep
# whose pattern mentions them does not count.
is_our_broker() {
    local pid="$1" i
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    local -a argv=()
    mapfile -d "" argv 2>/dev/null <"/proc/$pid/cmdline" || return 1
    for ((i = 0; i + 1 < ${#argv[@]}; i++)); do
        [[ "${argv[i]}" == kafka.Kafka && "${argv[i + 1]}" == "$PROPS" ]] && return 0
    done
    return 1
}

# The pid of the broker running from this data dir, from the pid file or, if that was lost,
# by looking for a java process started with our properties file. Prints nothing if none.
broker_pid() {
    local pid=""
    [[ -f "$PID_FILE" ]] && pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    if is_our_broker "$pid"; then echo "$pid"; return 0; fi
    local f
    for f in /proc/[0-9]*/cmdline; do
        pid="${f#/proc/}"; pid="${pid%/cmdline}"
        if is_our_broker "$pid"; then
            echo "$pid" >"$PID_FILE"   # adopt a broker whose pid file went missing
            echo "$pid"; return 0
        fi
    done
    return 0
}

# Serialise start/stop/wipe for one data dir, so two concurrent `start`s never launch two brokers.
# The lock file sits beside the data dir because `wipe` deletes the data dir.
take_lock() {
    mkdir -p "$VAR_DIR"
    local lock="$VAR_DIR/.kafka.lock"
    (( NODES == 1 )) || lock="$VAR_DIR/.kafka-cluster.lock"
    exec 9>"$lock"
    flock -w 120 9 || die "another kafka.sh holds $lock for over 120 s"
}

# Write the effective config: the template with ports and paths of this data dir.
write_props() {
    mkdir -p "$DATA_DIR"
    {
        local cluster_keys=""
        (( NODES == 1 )) || cluster_keys='|default\.replication\.factor|min\.insync\.replicas|offsets\.topic\.replication\.factor|transaction\.state\.log\.(replication\.factor|min\.isr)|share\.coordinator\.state\.topic\.(replication\.factor|min\.isr)'
        grep -vE "^(node\\.id|listeners|advertised\\.listeners|controller\\.quorum\\.voters|log\\.dirs$cluster_keys)=" \
            "$HERE/server.properties"
        echo
        echo "# --- set by kafka.sh ---"
        echo "node.id=$NODE_ID"
        echo "listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT"
        echo "advertised.listeners=PLAINTEXT://127.0.0.1:$PORT"
        echo "controller.quorum.voters=$VOTERS"
        echo "log.dirs=$LOG_DIR"
        if (( NODES > 1 )); then
            # Internal topics (consumer offsets, transactions) survive the loss of one node, like the
            # services' topics with kafka.replication_factor = 3 and kafka.min_insync_replicas = 2.
            local isr=$(( NODES < 2 ? NODES : 2 ))
            echo "default.replication.factor=$NODES"
            echo "min.insync.replicas=$isr"
            echo "offsets.topic.replication.factor=$NODES"
            echo "transaction.state.log.replication.factor=$NODES"
            echo "transaction.state.log.min.isr=$isr"
            echo "share.coordinator.state.topic.replication.factor=$NODES"
            echo "share.coordinator.state.topic.min.isr=$isr"
        fi
    } >"$PROPS.tmp"
    if [[ -n "$EXTRA_PROPS" ]]; then
        add_extra_props "$PROPS.tmp"
    fi
    mv "$PROPS.tmp" "$PROPS"
}

# Append KAFKA_EXTRA_PROPERTIES to the config in $1, dropping the generated lines of the keys it sets
# (Kafka would take the last one anyway; one line per key keeps the effective config readable).
add_extra_props() {
    local props="$1"
    [[ -f "$EXTRA_PROPS" && -r "$EXTRA_PROPS" ]] || die "KAFKA_EXTRA_PROPERTIES: cannot read $EXTRA_PROPS"
    awk '
        NR == FNR { if (match($0, /^[^#!=[:space:]][^=]*=/)) extra[substr($0, 1, RLENGTH - 1)] = 1; next }
        match($0, /^[^#!=[:space:]][^=]*=/) && (substr($0, 1, RLENGTH - 1) in extra) { next }
        { print }
    ' "$EXTRA_PROPS" "$props" >"$props.extra"
    {
        echo
        echo "# --- from KAFKA_EXTRA_PROPERTIES ($EXTRA_PROPS) ---"
        cat "$EXTRA_PROPS"
    } >>"$props.extra"
    mv "$props.extra" "$props"
}

# Hash of the settings that the formatted storage depends on; any change means reformat.
format_hash() {
    grep -E '^(node\.id|process\.roles|controller\.quorum\.voters|controller\.listener\.names|log\.dirs|metadata\.log\.dir)=' \
        "$PROPS" | sort | sha256sum | cut -d' ' -f1
}

# Prints why the storage cannot be used as is (nothing if it is fine).
storage_problem() {
    [[ -d "$LOG_DIR" ]] || { echo "not formatted yet"; return; }
    [[ -f "$FORMAT_STAMP" ]] || { echo "no format stamp (unknown or interrupted format)"; return; }
    local cluster_id hash
    cluster_id="$(sed -n 's/^cluster.id=//p' "$FORMAT_STAMP")"
    hash="$(sed -n 's/^config.hash=//p' "$FORMAT_STAMP")"
    [[ "$hash" == "$(format_hash)" ]] || { echo "formatted with a different quorum/path config"; return; }
    local meta="$LOG_DIR/meta.properties"
    [[ -f "$meta" ]] || { echo "meta.properties missing"; return; }
    grep -qx "cluster.id=$cluster_id" "$meta" || { echo "meta.properties has another or no cluster id"; return; }
    grep -qx "node.id=$NODE_ID" "$meta" || { echo "meta.properties has another or no node id"; return; }
    grep -qx "version=1" "$meta" || { echo "meta.properties is not a KRaft (version=1) file"; return; }
    grep -q "^directory.id=" "$meta" || { echo "meta.properties has no directory id"; return; }
    [[ -d "$LOG_DIR/__cluster_metadata-0" ]] || { echo "KRaft metadata log missing"; return; }
}

new_cluster_id() { "$JAVA" -XX:TieredStopAtLevel=1 -cp "$LIB/*" kafka.tools.StorageTool random-uuid; }

# Formats this node's storage, with cluster id $1 (the nodes of a cluster share one), else a new one.
format_storage() {
    rm -rf "$LOG_DIR" "$FORMAT_STAMP"
    local cluster_id="${1:-}"
    # C1-only JIT: these short-lived tool JVMs start faster.
    [[ -n "$cluster_id" ]] || cluster_id="$(new_cluster_id)"
    # read, not a bare $KAFKA_SCRAM_USERS: the [...] of each entry must not be taken for a glob.
    local -a entries=() scram=()
    read -r -a entries <<<"${KAFKA_SCRAM_USERS:-}"
    local entry
    for entry in "${entries[@]}"; do scram+=(--add-scram "$entry"); done
    "$JAVA" -XX:TieredStopAtLevel=1 -cp "$LIB/*" kafka.tools.StorageTool format -t "$cluster_id" -c "$PROPS" \
        "${scram[@]}" >/dev/null
    printf 'cluster.id=%s\nconfig.hash=%s\n' "$cluster_id" "$(format_hash)" >"$FORMAT_STAMP"
    log "formatted $LOG_DIR (cluster id $cluster_id)"
}

# Wait until the broker answers a metadata request (an open port is not enough: the broker
# accepts connections before it has joined the KRaft quorum and been unfenced).
# Returns 0 ready, 1 timeout, 2 the process died.
wait_ready() {
    local pid="$1" timeout="$2"
    if [[ -x "$PYTHON" ]] && "$PYTHON" -c 'import aiokafka' 2>/dev/null; then
        "$PYTHON" - "127.0.0.1:$PORT" "$timeout" "$pid" <<'PY'
import asyncio, logging, os, sys, time
logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # connection-refused noise while starting
from aiokafka.admin import AIOKafkaAdminClient

bootstrap, timeout, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])

def alive() -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False

async def main() -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return 2
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await asyncio.wait_for(admin.start(), 5)
            await asyncio.wait_for(admin.list_topics(), 5)
            return 0
        except Exception:
            await asyncio.sleep(0.25)
        finally:
            try:
                await admin.close()
            except Exception:
                pass
    return 1

sys.exit(asyncio.run(main()))
PY
    else
        # No venv: a tiny Java admin-client probe (single-file source program).
        "$JAVA" -cp "$LIB/*" "$HERE/ReadyCheck.java" "127.0.0.1:$PORT" "$timeout" "$pid"
    fi
}

launch() {
    # Keep the previous run's log for post-mortems (e.g. after a crash or a wipe-and-retry).
    [[ -f "$SERVER_LOG" ]] && mv -f "$SERVER_LOG" "$SERVER_LOG.prev"
    # setsid: the broker must outlive the calling shell and ignore its Ctrl-C.
    # 9>&- 8>&-: the broker must not inherit our lock fds (it would hold the lock forever).
    # shellcheck disable=SC2086  # HEAP_OPTS / KAFKA_JVM_OPTS are word lists on purpose
    (exec setsid "$JAVA" $HEAP_OPTS ${KAFKA_JVM_OPTS:-} \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
        -cp "$LIB/*" kafka.Kafka "$PROPS" \
        </dev/null >>"$SERVER_LOG" 2>&1 9>&- 8>&-) &
    echo $! >"$PID_FILE"
}

# ---------------------------------------------------------------------------------------
# start / stop / status / wipe
# ---------------------------------------------------------------------------------------
cmd_start() {
    local t0=$EPOCHREALTIME
    lib_is_current || cmd_fetch
    command -v "$JAVA" >/dev/null || die "'$JAVA' not found (Java 17+ needed)"
    take_lock

    local pid rc
    pid="$(broker_pid)"
    if [[ -n "$pid" ]]; then
        if port_open "$PORT"; then
            log "already running (pid $pid, 127.0.0.1:$PORT, data dir $DATA_DIR)"
            return 0
        fi
        # Alive but not listening yet: probably still starting. Wait for it, never start a second.
        log "broker pid $pid is up but not answering yet; waiting for it"
        rc=0; wait_ready "$pid" "$START_TIMEOUT" || rc=$?
        [[ $rc -eq 0 ]] || { tail -n 40 "$SERVER_LOG" >&2 || true; die "broker pid $pid did not become ready"; }
        log "ready (pid $pid, 127.0.0.1:$PORT)"
        return 0
    fi
    rm -f "$PID_FILE"

    # Someone else on our ports would make the broker die with a bind error: say so clearly.
    local p
    for p in "$PORT" "$CONTROLLER_PORT"; do
        port_open "$p" && die "port $p is already in use by another process (set KAFKA_PORT / KAFKA_CONTROLLER_PORT)"
    done

    write_props
    local problem attempt
    for attempt in 1 2; do
        problem="$(storage_problem)"
        if [[ "$problem" == "not formatted yet" ]]; then
            format_storage
        elif [[ -n "$problem" ]]; then
            log "data dir is stale ($problem): wiping $LOG_DIR and reformatting"
            format_storage
        fi

        log "starting broker on 127.0.0.1:$PORT (controller $CONTROLLER_PORT), data dir $DATA_DIR"
        launch
        pid="$(cat "$PID_FILE")"
        rc=0; wait_ready "$pid" "$START_TIMEOUT" || rc=$?
        if [[ $rc -eq 0 ]]; then
            log "ready (pid $pid, 127.0.0.1:$PORT) in $(elapsed "$t0")s"
            return 0
        fi
        if [[ $rc -eq 2 && $attempt -eq 1 ]] && ! grep -q 'BindException\|Address already in use' "$SERVER_LOG"; then
            # The broker died while starting: most likely damaged storage that the checks above
            # did not catch (corrupt metadata log, ...). This is a throwaway dev broker: wipe, retry once.
            log "broker exited during startup; last log lines:"
            tail -n 15 "$SERVER_LOG" | sed 's/^/    /'
            log "wiping $LOG_DIR and retrying once"
            rm -rf "$LOG_DIR" "$FORMAT_STAMP" "$PID_FILE"
            continue
        fi
        break
    done

    if [[ $rc -eq 2 ]]; then
        log "broker exited during startup; last 40 lines of $SERVER_LOG:" >&2
    else
        log "broker did not become ready within ${START_TIMEOUT}s; last 40 lines of $SERVER_LOG:" >&2
    fi
    tail -n 40 "$SERVER_LOG" >&2 || true
    stop_pid "$pid" || true
    rm -f "$PID_FILE"
    exit 1
}

# SIGTERM (Kafka shuts down cleanly and writes a clean-shutdown marker), then SIGKILL after 20 s.
stop_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "pid $pid ignored SIGTERM for 20 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
}

cmd_stop() {
    take_lock
    local pid
    pid="$(broker_pid)"
    if [[ -z "$pid" ]]; then
        rm -f "$PID_FILE"
        log "not running (data dir $DATA_DIR)"
        return 0
    fi
    local t0=$EPOCHREALTIME
    log "stopping broker pid $pid ..."
    stop_pid "$pid"
    rm -f "$PID_FILE"
    log "stopped in $(elapsed "$t0")s"
}

cmd_status() {
    local pid
    pid="$(broker_pid)"
    if [[ -n "$pid" ]]; then
        if port_open "$PORT"; then
            echo "running (pid $pid, 127.0.0.1:$PORT, data dir $DATA_DIR)"
        else
            echo "running (pid $pid, starting: 127.0.0.1:$PORT not listening yet, data dir $DATA_DIR)"
        fi
        return 0
    fi
    echo "not running (data dir $DATA_DIR)"
    return 3
}

cmd_wipe() {
    cmd_stop
    rm -rf "$DATA_DIR"
    log "wiped $DATA_DIR"
}

# ---------------------------------------------------------------------------------------
# a cluster (KAFKA_NODES > 1): the same steps, node by node
# ---------------------------------------------------------------------------------------
cluster_start() {
    local t0=$EPOCHREALTIME
    lib_is_current || cmd_fetch
    command -v "$JAVA" >/dev/null || die "'$JAVA' not found (Java 17+ needed)"
    take_lock

    local n pid p problem cluster_id="" any_running=0
    local -a to_start=() broken=()
    for ((n = 1; n <= NODES; n++)); do
        select_node "$n"
        pid="$(broker_pid)"
        if [[ -n "$pid" ]]; then any_running=1; continue; fi
        rm -f "$PID_FILE"
        for p in "$PORT" "$CONTROLLER_PORT"; do
            port_open "$p" && die "port $p (node $n) is already in use by another process (set KAFKA_PORT / KAFKA_CONTROLLER_PORT)"
        done
        write_props
        to_start+=("$n")
        problem="$(storage_problem)"
        if [[ -n "$problem" ]]; then
            broken+=("$n")
            [[ "$problem" == "not formatted yet" ]] || log "node $n: data dir is stale ($problem)"
        elif [[ -z "$cluster_id" ]]; then
            cluster_id="$(sed -n 's/^cluster.id=//p' "$FORMAT_STAMP")"
        fi
    done
    # Nodes of one cluster share its id: a running node's, else a formatted node's, else a new one. A
    # formatted node of another id (a half-done earlier format) is formatted again.
    for ((n = 1; n <= NODES; n++)); do
        select_node "$n"
        [[ -f "$FORMAT_STAMP" ]] || continue
        local id; id="$(sed -n 's/^cluster.id=//p' "$FORMAT_STAMP")"
        if [[ -n "$(broker_pid)" ]]; then cluster_id="$id"; break; fi
    done
    if [[ -z "$cluster_id" ]]; then
        (( any_running == 0 )) || die "nodes are running but none has a format stamp: run 'kafka.sh wipe' first"
        cluster_id="$(new_cluster_id)"
    fi
    for n in "${to_start[@]}"; do
        select_node "$n"
        if [[ " ${broken[*]} " == *" $n "* ]] || ! grep -qx "cluster.id=$cluster_id" "$FORMAT_STAMP"; then
            format_storage "$cluster_id"
        fi
    done
    for n in "${to_start[@]}"; do
        select_node "$n"
        log "starting node $n on 127.0.0.1:$PORT (controller $CONTROLLER_PORT), data dir $DATA_DIR"
        launch
    done
    # A node is ready when it answers a metadata request, which needs a quorum: wait for all of them.
    local rc
    for ((n = 1; n <= NODES; n++)); do
        select_node "$n"
        pid="$(broker_pid)"
        [[ -n "$pid" ]] || { cluster_failed "node $n exited during startup"; }
        rc=0; wait_ready "$pid" "$START_TIMEOUT" || rc=$?
        [[ $rc -eq 0 ]] || cluster_failed "node $n (pid $pid) did not become ready (rc $rc)"
    done
    log "cluster of $NODES ready on 127.0.0.1:$BASE_PORT-$((BASE_PORT + NODES - 1)) in $(elapsed "$t0")s" \
        "(started: ${to_start[*]:-none})"
}

cluster_failed() {
    log "$1; last 30 lines of $SERVER_LOG:" >&2
    tail -n 30 "$SERVER_LOG" >&2 || true
    cluster_stop_nodes
    exit 1
}

# SIGTERM to every node at once, then wait: stopped one after the other, the last ones would wait for
# a controller quorum that is already gone.
cluster_stop_nodes() {
    local n pid
    local -a pids=()
    for ((n = 1; n <= NODES; n++)); do
        select_node "$n"
        pid="$(broker_pid)"
        [[ -n "$pid" ]] && { kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); }
        rm -f "$PID_FILE"
    done
    for pid in "${pids[@]}"; do stop_pid "$pid"; done
    STOPPED="${#pids[@]}"
}

cluster_stop() {
    take_lock
    local t0=$EPOCHREALTIME
    cluster_stop_nodes
    log "stopped $STOPPED of $NODES nodes in $(elapsed "$t0")s (data dir $BASE_DIR)"
}

cluster_status() {
    local n pid rc=3
    for ((n = 1; n <= NODES; n++)); do
        select_node "$n"
        pid="$(broker_pid)"
        if [[ -n "$pid" ]]; then
            echo "node $n: running (pid $pid, 127.0.0.1:$PORT, data dir $DATA_DIR)"
            rc=0
        else
            echo "node $n: not running (127.0.0.1:$PORT, data dir $DATA_DIR)"
        fi
    done
    return "$rc"
}

cluster_wipe() {
    cluster_stop
    rm -rf "$BASE_DIR"
    log "wiped $BASE_DIR"
}

if (( NODES > 1 )); then
    case "${1:-}" in
        fetch) cmd_fetch ;;
        start) cluster_start ;;
        stop) cluster_stop ;;
        status) cluster_status ;;
        wipe) cluster_wipe ;;
        *)
            echo "usage: KAFKA_NODES=$NODES $0 fetch|start|stop|status|wipe" >&2
            exit 2
            ;;
    esac
    exit
fi

case "${1:-}" in
    fetch) cmd_fetch ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    wipe) cmd_wipe ;;
    *)
        echo "usage: $0 fetch|start|stop|status|wipe" >&2
        exit 2
        ;;
esac
