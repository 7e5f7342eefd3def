"""SIGKILL the detector in the middle of detecting an outage, and again once it is open; restart it each time.

A restarted detector resumes from its database (a SQLite file in data_dir): the procedure must still be
opened once, closed once, and the EO told once of each; the outage keeps the ``since`` it had before the
kill, and the change to down is published once, not again by the restarted detector.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.config import KafkaSettings
from shared.events import ComponentState
from tests.e2e.test_pipeline import INTERVAL_S, _command, _config, _ready, _register_eo
from tests.integration.test_detector_persistence import availability, changes
from tests.support import ChaosReport, ToggleServer, WebhookReceiver, free_port, stop_processes, wait_for

pytestmark = pytest.mark.e2e


def _start(name: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([*_command(), name, "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)


def _targets(port: int) -> dict[str, dict[str, Any]]:
    items = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5).json()["items"]
    return {item["id"]: item for item in items}


def _kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=10) == -signal.SIGKILL


@pytest.mark.timeout(300)
def test_killed_detector_restarts_and_nothing_happens_twice(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, chaos: ChaosReport
) -> None:
    ada, ntp = ToggleServer(), ToggleServer()
    ada.up()
    ntp.up()
    receiver = WebhookReceiver().start()
    ports = {name: free_port() for name in ("detector", "procedure", "notifier")}
    # Retries one interval apart (not the default fifth): the outage takes two intervals to confirm after its
    # first failure, so that the kill below lands while the detection is under way.
    config = _config(tmp_path, kafka=kafka_bootstrap, prefix=topic_prefix, ada=ada, ntp=ntp, ports=ports,
                     retry_interval_s=INTERVAL_S)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    asyncio.run(_register_eo(kafka, receiver.url()))
    logs = {name: tmp_path / f"{name}.log" for name in ports}
    processes = {name: _start(name, config, logs[name]) for name in ports}
    procedure_url = f"http://127.0.0.1:{ports['procedure']}"
    kills = 0
    try:
        for name, port in ports.items():
            wait_for(functools.partial(_ready, port), timeout=90, interval=0.3, what=f"{name} /readyz")
        # Ready is not yet up: each target needs success_threshold probes first (slow on a loaded machine).
        wait_for(lambda: {_targets(ports["detector"])[t]["state"] for t in ("ada-as4", "ntp-portal")} == {"up"},
                 timeout=60, interval=0.2, what="ADA and NTP up before the outage")

        ada.down()
        time.sleep(INTERVAL_S * 1.5)  # one or two failed probes: detection under way
        _kill(processes["detector"])
        kills += 1
        processes["detector"] = _start("detector", config, logs["detector"])
        wait_for(lambda: receiver.of_type("luccs.procedure.opened"), timeout=60, what="the opened notice")

        before = _targets(ports["detector"])
        assert before["ada-as4"]["state"] == "down"
        _kill(processes["detector"])  # and once more while the procedure is open
        kills += 1
        processes["detector"] = _start("detector", config, logs["detector"])
        wait_for(functools.partial(_ready, ports["detector"]), timeout=60, interval=0.3, what="detector back")
        time.sleep(INTERVAL_S * 6)  # it probes the outage again: that must not open anything again
        after = _targets(ports["detector"])
        for target_id in ("ada-as4", "ntp-portal"):
            assert (after[target_id]["state"], after[target_id]["since"]) == (
                before[target_id]["state"], before[target_id]["since"]), f"{target_id} resumed as it was"
        went_down = [e for e in changes(asyncio.run(availability(kafka)), "ada-as4") if e.state == ComponentState.DOWN]
        assert [e.previous_state for e in went_down] == [ComponentState.UP], "the change to down published once"

        ada.up()
        wait_for(lambda: receiver.of_type("luccs.procedure.closed"), timeout=60, what="the closed notice")
        time.sleep(INTERVAL_S * 4)
        opened = receiver.of_type("luccs.procedure.opened")
        closed = receiver.of_type("luccs.procedure.closed")
        chaos.add_procedure_notices(
            faults=kills + 1, opened=len(opened), closed=len(closed),
            detail=f"an outage and {kills} SIGKILLs of the detector (detecting, then with the procedure open)",
        )
        assert len(opened) == 1
        assert len(closed) == 1
        all_procedures = httpx.get(f"{procedure_url}/api/v1/procedures", timeout=5).json()["items"]
        assert [p["state"] for p in all_procedures] == ["closed"]
    finally:
        stop_processes(processes, logs)
        receiver.stop()
        ada.down()
        ntp.down()
