#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine: Java and Maven (for the Kafka broker),
# a Python 3.11 virtualenv with the project and its dev tools, and the Kafka jars.
# Idempotent and quick when everything is already there.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
STAMP="$VENV/.installed.sha256"

log() { printf 'bootstrap: %s\n' "$*"; }

apt_install() {
    local sudo=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { log "need root or sudo to install: $*"; exit 1; }
        sudo="sudo"
    fi
    log "installing Debian packages: $*"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y --no-install-recommends "$@" >/dev/null ||
        { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y --no-install-recommends "$@" >/dev/null; }
}

command -v java >/dev/null || apt_install openjdk-17-jre-headless
command -v mvn >/dev/null || apt_install maven
# The status page is tested in Debian's Chromium (never a browser downloaded by a test tool).
if [[ "${LUCCS_BOOTSTRAP_BROWSER:-0}" == 1 ]] && ! command -v chromium >/dev/null; then
    apt_install chromium
fi

# The alert rules are checked by promtool (Debian's prometheus package) in the full test run.
if [[ "${LUCCS_BOOTSTRAP_FULL:-0}" == 1 ]] && ! command -v promtool >/dev/null; then
    apt_install prometheus
fi

# Python 3.11 exactly: the customer's platform.
PYTHON_BIN=""
for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
        PYTHON_BIN="$(command -v "$candidate")"
        break
    fi
done
if [[ -z "$PYTHON_BIN" ]]; then
    apt_install python3.11 python3.11-venv
    PYTHON_BIN="$(command -v python3.11)"
fi

if [[ -x "$VENV/bin/python" ]] && ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    log "the virtualenv in $VENV is incomplete (an interrupted earlier run?): making it again"
    rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtualenv in $VENV"
    "$PYTHON_BIN" -m venv "$VENV" || { apt_install python3.11-venv && "$PYTHON_BIN" -m venv "$VENV"; }
fi

want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$want" ]]; then
    log "installing Python packages (this takes a minute the first time)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e "$REPO[dev]"
    echo "$want" >"$STAMP"
else
    log "Python packages up to date"
fi

"$REPO/deploy/kafka/kafka.sh" fetch
