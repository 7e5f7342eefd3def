"""What an operator sees when a service cannot start: one line saying which and why, and exit code 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import free_port

pytestmark = pytest.mark.integration


def _service(name: str, config: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("luccs-fallback")
    return subprocess.run([str(script), name, "--config", str(config)], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("service", ["procedure", "notifier"])
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
    assert "did not start" in stopping[0] and f"127.0.0.1', {closed}" in stopping[0], stopping[0]
    # Nothing left behind for the interpreter to complain about.
    assert "Task exception was never retrieved" not in output
    assert "Unclosed" not in output
