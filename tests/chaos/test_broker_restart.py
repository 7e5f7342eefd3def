"""The broker goes away for 30 s in the middle of an outage, and the outage ends while it is away.

Nobody touches the services: when the broker is back they must converge by themselves (the procedure
closes, the EO is told once), with nothing lost and nothing sent twice.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.config import KafkaSettings
from tests.e2e.test_pipeline import _command, _config, _ready, _register_eo
from tests.integration.test_broker_script import Broker
from tests.support import ChaosReport, ToggleServer, WebhookReceiver, free_port, stop_processes, wait_for

pytestmark = pytest.mark.e2e

BROKER_DOWN_S = 30


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(tmp_path / "var")
    started = broker.run("start")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield broker
    finally:
        broker.run("stop", timeout=60)


def _states(procedure_url: str) -> dict[str, str]:
    try:
        status = httpx.get(f"{procedure_url}/api/v1/status", timeout=5).json()
    except httpx.HTTPError:
        return {}
    return {c["component"]: c["state"] for c in status["components"]}


@pytest.mark.timeout(420)
def test_outage_ending_while_the_broker_is_down_converges_without_help(
    private_broker: Broker, tmp_path: Path, chaos: ChaosReport
) -> None:
    bootstrap = f"127.0.0.1:{private_broker.port}"
    prefix = "chaos-broker"
    ada, ntp = ToggleServer(), ToggleServer()
    ada.up()
    ntp.up()
    receiver = WebhookReceiver().start()
    ports = {name: free_port() for name in ("detector", "procedure", "notifier")}
    config = _config(tmp_path, kafka=bootstrap, prefix=prefix, ada=ada, ntp=ntp, ports=ports)
    asyncio.run(_register_eo(KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix), receiver.url()))
    procedure_url = f"http://127.0.0.1:{ports['procedure']}"
    processes: dict[str, subprocess.Popen[bytes]] = {}
    faults = 0
    try:
        for name in ports:
            with (tmp_path / f"{name}.log").open("wb") as log:
                processes[name] = subprocess.Popen([*_command(), name, "--config", str(config)], stdout=log,
                                                   stderr=subprocess.STDOUT)
        for name, port in ports.items():
            wait_for(functools.partial(_ready, port), timeout=90, interval=0.3, what=f"{name} /readyz")
        wait_for(lambda: _states(procedure_url) == {"ada_b2g": "up", "ntp": "up"}, timeout=30, what="all up")

        ada.down()
        faults += 1
        wait_for(lambda: receiver.of_type("luccs.procedure.opened"), timeout=30, what="the opened notice")

        stopped = private_broker.run("stop", timeout=60)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        faults += 1
        broker_down_at = time.monotonic()
        ada.up()  # the outage ends while nobody can hear about it
        time.sleep(max(0.0, BROKER_DOWN_S - (time.monotonic() - broker_down_at)))
        assert receiver.of_type("luccs.procedure.closed") == []
        started = private_broker.run("start")
        assert started.returncode == 0, started.stdout + started.stderr

        wait_for(lambda: receiver.of_type("luccs.procedure.closed"), timeout=120, interval=0.5,
                 what="the closed notice after the broker came back")
        wait_for(lambda: _states(procedure_url) == {"ada_b2g": "up", "ntp": "up"}, timeout=30, what="all up again")
        for name, port in ports.items():
            wait_for(functools.partial(_ready, port), timeout=60, interval=0.5, what=f"{name} ready again")
        time.sleep(3)  # room for a duplicate to show up
        opened = receiver.of_type("luccs.procedure.opened")
        closed = receiver.of_type("luccs.procedure.closed")
        keys = {hook.headers["Idempotency-Key"] for hook in opened + closed}
        chaos.add_procedure_notices(
            faults=faults, opened=len(opened), closed=len(closed),
            detail=f"an outage, then the broker down {BROKER_DOWN_S} s while it ends; {len(keys)} distinct keys",
        )
        assert len(opened) == 1
        assert len(closed) == 1
        assert opened[0].event["data"]["procedure_id"] == closed[0].event["data"]["procedure_id"]
        still_open = httpx.get(f"{procedure_url}/api/v1/procedures", params={"state": "open"}, timeout=5)
        assert still_open.json()["items"] == []
    finally:
        stop_processes(processes, {name: tmp_path / f"{name}.log" for name in ports})
        receiver.stop()
        ada.down()
        ntp.down()
