"""deploy/kafka/kafka.sh: start is idempotent, status and stop tell the truth.

Runs a second broker in its own data dir (LUCCS_VAR_DIR in a tmp dir) on its own free ports,
so the broker on the default port that the other integration tests use is left alone.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "kafka" / "kafka.sh"
DEFAULT_PORTS = {9092, 9093}

pytestmark = pytest.mark.integration


def _free_ports(count: int) -> list[int]:
    """Ports the kernel hands out as free now (held open together so they differ)."""
    socks: list[socket.socket] = []
    try:
        while len(socks) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            if s.getsockname()[1] in DEFAULT_PORTS:
                s.close()
                continue
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _brokers_for(props: Path) -> list[int]:
    """Pids of java processes running kafka.Kafka with this properties file."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for i in range(len(argv) - 1):
            if argv[i] == b"kafka.Kafka" and argv[i + 1] == str(props).encode():
                pids.append(int(proc.name))
                break
    return pids


def _default_broker_pid() -> int | None:
    """The broker of the default data dir (used by the other tests), if one is running."""
    var_dir = Path(os.environ.get("LUCCS_VAR_DIR", REPO / "var"))
    try:
        pid = int((var_dir / "kafka" / "kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


class Broker:
    def __init__(self, var_dir: Path, *, extra_ports: int = 0) -> None:
        port, controller_port, *extra = _free_ports(2 + extra_ports)
        self.port = port
        self.controller_port = controller_port
        self.extra_ports = extra  # free ports for listeners a test adds (KAFKA_EXTRA_PROPERTIES)
        self.data_dir = var_dir / "kafka"
        self.pid_file = self.data_dir / "kafka.pid"
        self.props = self.data_dir / "server.properties"
        self.env = {
            **os.environ,
            "LUCCS_VAR_DIR": str(var_dir),
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(controller_port),
            "KAFKA_START_TIMEOUT": "90",
        }

    def run(self, command: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
        # A first `start` on a fresh machine may have to fetch the jars with Maven: generous timeout.
        return subprocess.run(
            ["bash", str(SCRIPT), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def pid(self) -> int:
        return int(self.pid_file.read_text().strip())


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "var")
    try:
        yield b
    finally:
        # Never leak a broker, whatever the test did.
        b.run("stop", timeout=60)


@pytest.mark.timeout(600)
def test_start_is_idempotent_and_stop_stops(broker: Broker) -> None:
    default_pid = _default_broker_pid()

    started = broker.run("start", timeout=420)
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"ready (pid {broker.pid()}, 127.0.0.1:{broker.port})" in started.stdout

    status = broker.run("status", timeout=30)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.startswith("running")
    pid = broker.pid()
    assert _pid_alive(pid)
    assert _brokers_for(broker.props) == [pid]

    again = broker.run("start")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already running" in again.stdout
    assert broker.pid() == pid
    assert _brokers_for(broker.props) == [pid], "a second start launched another broker"

    stopped = broker.run("stop", timeout=60)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not broker.pid_file.exists()
    assert not _pid_alive(pid)
    assert _brokers_for(broker.props) == []

    status = broker.run("status", timeout=30)
    assert status.returncode == 3, status.stdout + status.stderr
    assert status.stdout.startswith("not running")

    again = broker.run("stop", timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr

    # The broker on the default data dir, if any, was not touched.
    if default_pid is not None:
        assert _pid_alive(default_pid)
