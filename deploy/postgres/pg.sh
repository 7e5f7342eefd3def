#!/usr/bin/env bash
# Disposable PostgreSQL server on loopback for the tests and for developers,
# without Docker. Usage: deploy/postgres/pg.sh install|start|url|stop|status|wipe
#
#   LUCCS_VAR_DIR  where state lives (default <repo>/var); data in $LUCCS_VAR_DIR/postgres
#   PG_PORT        TCP port on 127.0.0.1 (default 55432)
#   PG_DB          database created on start (default luccs_test)
#
#   export LUCCS_TEST_POSTGRES_URL=$(deploy/postgres/pg.sh url)
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Absolute: pg_ctl runs as another user, from another working directory.
VAR_DIR=$(realpath -m "${LUCCS_VAR_DIR:-$REPO_ROOT/var}")
DATA_DIR=$VAR_DIR/postgres
PORT=${PG_PORT:-55432}
DB=${PG_DB:-luccs_test}
PG_USER=postgres   # the database superuser, and the system user we run as when root

log() { echo "pg.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

url() { echo "postgresql+asyncpg://postgres@127.0.0.1:$PORT/$DB"; }

# "pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> "15.18"
pg_version() { "$1/pg_ctl" --version | sed -E 's/.*\(PostgreSQL\) ([0-9.]+).*/\1/'; }

# Directory holding the newest server binaries (postgres, initdb, pg_ctl), or
# nothing. Debian keeps them off PATH under /usr/lib/postgresql/<major>/bin.
find_pg_bin() {
    local dirs=() dir
    if command -v pg_ctl >/dev/null 2>&1; then
        # Resolve symlinks (e.g. /usr/local/bin/pg_ctl -> /usr/lib/postgresql/15/bin)
        # so psql/pg_isready/createdb are found beside it.
        dirs+=("$(dirname "$(readlink -f "$(command -v pg_ctl)")")")
    fi
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -d $dir ]] && dirs+=("$dir")
    done
    for dir in "${dirs[@]}"; do
        [[ -x $dir/postgres && -x $dir/initdb && -x $dir/pg_ctl ]] || continue
        # "<version> <dir>" lines; sort -V keeps the newest last.
        echo "$(pg_version "$dir") $dir"
    done | sort -V | tail -n1 | cut -d' ' -f2-
}

cmd_install() {
    local bin
    bin=$(find_pg_bin)
    if [[ -n $bin ]]; then
        log "PostgreSQL server binaries found in $bin ($("$bin/pg_ctl" --version))"
        return 0
    fi
    local sudo=()
    if [[ $EUID -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "PostgreSQL is not installed and we are not root (no sudo either): install the 'postgresql' Debian package"
        sudo=(sudo)
    fi
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
    log "PostgreSQL not found: apt-get install -y --no-install-recommends postgresql"
    if ! "${apt[@]}" install -y --no-install-recommends postgresql; then
        # A fresh machine often has no package lists yet.
        log "install failed; running apt-get update and retrying"
        "${apt[@]}" update
        "${apt[@]}" install -y --no-install-recommends postgresql
    fi
    bin=$(find_pg_bin)
    [[ -n $bin ]] || die "installed the postgresql package but still cannot find initdb/pg_ctl/postgres"
    log "installed: $("$bin/pg_ctl" --version) in $bin"
}

# PostgreSQL refuses to run as root, so root runs the server as $PG_USER.
# cd / so the server does not trip over a cwd it cannot read (e.g. /root).
as_pg() {
    if [[ $EUID -eq 0 ]]; then
        (cd / && runuser -u "$PG_USER" -- "$@")
    else
        "$@"
    fi
}

# Serialise concurrent start/stop/wipe (e.g. parallel test sessions), then
# find the binaries.
prepare() {
    mkdir -p "$VAR_DIR"
    exec 9>"$VAR_DIR/postgres.lock"
    flock 9
    PG_BIN=$(find_pg_bin)
}

prepare_data_dir() {
    mkdir -p "$DATA_DIR"
    if [[ $EUID -eq 0 ]]; then
        if ! id -u "$PG_USER" >/dev/null 2>&1; then
            log "creating system user $PG_USER"
            useradd --system --user-group --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin "$PG_USER"
        fi
        chown "$PG_USER:" "$DATA_DIR"
        if ! runuser -u "$PG_USER" -- test -r "$DATA_DIR" -a -w "$DATA_DIR" -a -x "$DATA_DIR"; then
            # Usually a parent like /root (mode 700) that $PG_USER cannot traverse.
            local d=$DATA_DIR blocked=""
            while [[ $d != / ]]; do
                d=$(dirname "$d")
                runuser -u "$PG_USER" -- test -x "$d" || blocked=$d
            done
            die "user $PG_USER cannot reach $DATA_DIR${blocked:+ (cannot traverse $blocked)}." \
                "Either 'chmod o+x' that directory or set LUCCS_VAR_DIR to a reachable place, e.g. LUCCS_VAR_DIR=/var/tmp/luccs"
        fi
    fi
    chmod 700 "$DATA_DIR"   # initdb/postgres demand 0700 (or 0750)
}

# A process that exists and is not a zombie. Killed servers can linger as
# zombies for a while (the init here reaps lazily), and kill -0, which both
# pg_ctl and postgres use to detect stale pid files, still succeeds on those.
proc_alive() {
    local state
    state=$(sed -E 's/.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# Running = pid file names a live postgres process. Checking the process name
# also guards against a stale pid that was reused by something else.
server_pid() {
    local pid
    pid=$(head -n1 "$DATA_DIR/postmaster.pid" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] && proc_alive "$pid" || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == postgres* ]] || return 1
    echo "$pid"
}

# After a crash / kill -9 of the postmaster: let its orphaned backends (their
# cwd is the data dir) die, then drop the pid and socket lock files, which
# postgres itself would refuse to override while the old pid is a zombie.
clear_stale() {
    local real deadline=$((SECONDS + 15)) p left
    real=$(readlink -f "$DATA_DIR")
    while :; do
        left=()
        for p in /proc/[0-9]*; do
            [[ $(readlink "$p/cwd" 2>/dev/null) == "$real" ]] && proc_alive "${p#/proc/}" && left+=("${p#/proc/}")
        done
        ((${#left[@]} == 0)) && break
        ((SECONDS < deadline)) || die "old server processes still use $DATA_DIR: ${left[*]}"
        sleep 0.2
    done
    log "removing stale postmaster.pid (server was killed)"
    rm -f "$DATA_DIR/postmaster.pid" "$DATA_DIR"/.s.PGSQL.*
}

running_port() { sed -n 4p "$DATA_DIR/postmaster.pid" 2>/dev/null; }

psql_() { "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }

ensure_db() {
    local exists
    exists=$(psql_ -d postgres -tA -v db="$DB" <<<"SELECT 1 FROM pg_database WHERE datname = :'db'")
    if [[ $exists != 1 ]]; then
        log "creating database $DB"
        "$PG_BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB"
    fi
}

wait_ready() {
    local deadline=$((SECONDS + 60))
    until "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres; do
        ((SECONDS < deadline)) || die "server not answering on 127.0.0.1:$PORT after 60 s; see $DATA_DIR/server.log"
        sleep 0.2
    done
}

cmd_start() {
    local t0 pid
    t0=$(date +%s%N)
    prepare
    cmd_install
    PG_BIN=$(find_pg_bin)
    [[ -n $PG_BIN ]] || die "PostgreSQL binaries not found"
    local tool
    for tool in psql createdb pg_isready; do
        [[ -x $PG_BIN/$tool ]] || die "$PG_BIN has the server but no $tool (install the client tools)"
    done
    prepare_data_dir

    if pid=$(server_pid); then
        local rport
        rport=$(running_port)
        log "already running (pid $pid, port $rport, data $DATA_DIR)"
        [[ $rport == "$PORT" ]] || die "it listens on port $rport, not PG_PORT=$PORT: run '$0 stop' first"
        ensure_db
        url
        return 0
    fi
    [[ ! -f $DATA_DIR/postmaster.pid ]] || clear_stale

    if [[ ! -f $DATA_DIR/PG_VERSION ]]; then
        log "initdb in $DATA_DIR"
        # trust auth is fine: loopback-only, disposable test server.
        as_pg "$PG_BIN/initdb" -D "$DATA_DIR" -U postgres --auth=trust --encoding=UTF8 \
            --locale=C --no-sync >"$VAR_DIR/postgres-initdb.log" 2>&1 \
            || { cat "$VAR_DIR/postgres-initdb.log" >&2; die "initdb failed"; }
        echo "include_if_exists = 'luccs.conf'" >>"$DATA_DIR/postgresql.conf"
    fi

    # Rewritten on every start so PG_PORT changes take effect. Durability off:
    # the data is disposable and this makes tests much faster.
    # Unix socket in the data dir (not /var/run); if the path is too long for a
    # socket (~107 bytes) go TCP-only.
    local sockdir=$DATA_DIR
    ((${#DATA_DIR} + 20 < 107)) || sockdir=""
    cat >"$DATA_DIR/luccs.conf" <<EOF
# Written by deploy/postgres/pg.sh on each start; edits are lost.
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$sockdir'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
EOF
    [[ $EUID -ne 0 ]] || chown "$PG_USER:" "$DATA_DIR/luccs.conf"

    log "starting PostgreSQL $(pg_version "$PG_BIN") on 127.0.0.1:$PORT"
    # 9>&-: the server must not inherit (and hold forever) our lock.
    if ! as_pg "$PG_BIN/pg_ctl" start -D "$DATA_DIR" -l "$DATA_DIR/server.log" -w -t 60 >/dev/null 9>&-; then
        tail -n 20 "$DATA_DIR/server.log" >&2 || true
        die "pg_ctl start failed; full log: $DATA_DIR/server.log"
    fi
    wait_ready
    ensure_db
    local ms=$((($(date +%s%N) - t0) / 1000000))
    log "started in $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s"
    url
}

cmd_stop() {
    prepare
    local pid
    if pid=$(server_pid); then
        log "stopping (pid $pid)"
        as_pg "$PG_BIN/pg_ctl" stop -D "$DATA_DIR" -m fast -w -t 60 >/dev/null
    else
        log "not running"
    fi
}

cmd_status() {
    local pid
    if pid=$(server_pid); then
        echo "running (pid $pid, port $(running_port), data $DATA_DIR)"
    else
        echo "not running"
        exit 3
    fi
}

cmd_wipe() {
    cmd_stop
    log "deleting $DATA_DIR"
    rm -rf "$DATA_DIR" "$VAR_DIR/postgres-initdb.log"
}

case ${1:-} in
    install) cmd_install ;;
    start) cmd_start ;;
    url) url ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    wipe) cmd_wipe ;;
    *) echo "usage: $0 install|start|url|stop|status|wipe" >&2; exit 2 ;;
esac
