"""What an operator sees: one line saying which service cannot start and why (exit code 1); and, when all
three run in one process, each log line once, as JSON on a pipe and as a readable line on a terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support import free_port

pytestmark = pytest.mark.integration


def _service(name: str, config: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("luccs-fallback")
    return subprocess.run([str(script), name, "--config", str(config)], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("service", ["procedure", "notifier", "detector"])  # the last two on uvloop
def test_a_service_whose_database_is_unreachable_says_so_and_exits_1(
    service: str, tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    closed = free_port()  # nothing listens there
    config = tmp_path / "luccs.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\n[kafka]\nbootstrap_servers = "{kafka_bootstrap}"\ntopic_prefix = "{topic_prefix}"\n'
        f'[{service}]\nport = {free_port()}\ndatabase_url = "postgresql://postgres@127.0.0.1:{closed}/luccs"\n',
        encoding="utf-8",
    )
    done = _service(service, config)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    stopping = [line for line in output.splitlines() if "stopping:" in line]
    assert len(stopping) == 1, output[-3000:]
    # Named by the service (shared/db.py), not by the event loop's error: uvloop's does not name the address.
    assert "did not start" in stopping[0] and f"@127.0.0.1:{closed}/luccs" in stopping[0], stopping[0]
    # Nothing left behind for the interpreter to complain about.
    assert "Task exception was never retrieved" not in output
    assert "Unclosed" not in output


SERVICES = ("detector", "procedure", "notifier")


def _config_for_all(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> Path:
    config = tmp_path / "luccs.toml"
    ports = "".join(f"[{name}]\nport = {free_port()}\n" for name in SERVICES)
    config.write_text(
        f'data_dir = "{tmp_path}"\n[kafka]\nbootstrap_servers = "{kafka_bootstrap}"\n'
        f'topic_prefix = "{topic_prefix}"\n{ports}',
        encoding="utf-8",
    )
    return config


def _run_all_until_started(config: Path, *, terminal: bool, env: dict[str, str] | None = None) -> list[str]:
    """Run ``luccs-fallback all``, its stderr a pipe or a terminal; once the three servers run, Ctrl-C it.
    Returns its stderr lines."""
    script = Path(sys.executable).with_name("luccs-fallback")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LUCCS_")} | (env or {})
    chunks: list[bytes] = []
    if terminal:
        reader_fd, writer_fd = pty.openpty()
    else:
        reader_fd, writer_fd = os.pipe()
    process = subprocess.Popen([str(script), "all", "--config", str(config)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=writer_fd, env=environment)
    os.close(writer_fd)

    def read() -> None:
        while True:
            try:
                chunk = os.read(reader_fd, 65536)
            except OSError:  # a terminal whose other end has closed
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while b"".join(chunks).count(b"Uvicorn running on") < len(SERVICES):
            assert process.poll() is None, b"".join(chunks).decode()[-3000:]
            assert time.monotonic() < deadline, b"".join(chunks).decode()[-3000:]
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, b"".join(chunks).decode()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=10)
        os.close(reader_fd)
    return b"".join(chunks).decode().replace("\r\n", "\n").splitlines()


def test_all_in_one_process_logs_each_line_once_as_json_when_not_on_a_terminal(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    lines = _run_all_until_started(_config_for_all(tmp_path, kafka_bootstrap, topic_prefix), terminal=False)
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    said = Counter((e.get("service"), e["logger"], e["message"]) for e in entries)
    started = [key for key in said if key[2].startswith("Started server process")]
    assert len(started) == 1 and said[started[0]] == 1, lines
    for service in SERVICES:
        assert said[(service, "uvicorn.error", "Application startup complete.")] == 1, lines
        assert said[(service, "uvicorn.error", "Shutting down")] == 1, lines
    uvicorn_twice = [key for key, count in said.items() if key[1] == "uvicorn.error" and count > 1]
    assert uvicorn_twice == []
    (stopped,) = [e["message"] for e in entries if e["logger"] == "luccs_fallback"]
    assert re.fullmatch(r"stopped \(process \d+\)", stopped)


def test_all_in_one_process_logs_readable_lines_on_a_terminal(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    lines = _run_all_until_started(_config_for_all(tmp_path, kafka_bootstrap, topic_prefix), terminal=True,
                                   env={"NO_COLOR": "1"})
    readable = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} [A-Z]+ +\S+ +\S+: ")
    logged = [line for line in lines if line.strip()]
    assert logged and all(readable.match(line) or line.startswith((" ", "Traceback")) for line in logged), lines
    for service in SERVICES:
        complete = [line for line in logged if re.search(rf" {service} +uvicorn.error: Application startup complete",
                                                          line)]
        assert len(complete) == 1, lines
    assert not any(line.lstrip().startswith("{") for line in logged), lines


def test_the_log_format_can_be_forced_from_the_environment(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    lines = _run_all_until_started(_config_for_all(tmp_path, kafka_bootstrap, topic_prefix), terminal=False,
                                   env={"LUCCS_LOGGING__FORMAT": "console"})
    assert lines and not any(line.startswith("{") for line in lines), lines
    assert sum(1 for line in lines if "Started server process" in line) == 1, lines
