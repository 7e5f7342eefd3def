"""The demo as a user runs it: the simulator and ``luccs-fallback all`` as processes, on a copy of the demo
configuration moved to free ports, a real broker; the ADA's AS4 endpoint is switched off and on through
the simulator's control API and its webhook receiver must get the scenario-2 notices.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import free_port, stop_processes, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "deploy" / "demo" / "luccs.toml"
TOKEN = "demo-operator-token"
EORI = "LU20000000001"
SIMULATED = ("control", "ada-as4", "ntp", "receiver", "eo-1")


def _command() -> list[str]:
    script = Path(sys.executable).with_name("luccs-fallback")
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]


def _replace(text: str, pattern: str, replacement: str) -> str:
    changed, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert count == 1, f"the demo configuration no longer has exactly one match of {pattern!r}"
    return changed


def demo_config_copy(tmp: Path, *, kafka: str, prefix: str, services: dict[str, int], sim: dict[str, int]) -> Path:
    """deploy/demo/luccs.toml with its data, broker, topics and ports moved; everything else as the demo has it."""
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    text = _replace(text, r'^data_dir = .*$', f'data_dir = "{tmp / "data"}"')
    text = _replace(text, r'^bootstrap_servers = .*$', f'bootstrap_servers = "{kafka}"')
    text = _replace(text, r'^topic_prefix = .*$', f'topic_prefix = "{prefix}"')
    for name, default in (("detector", 8001), ("procedure", 8002), ("notifier", 8003)):
        text = _replace(text, rf"^port = {default}$", f"port = {services[name]}")
    text = _replace(text, r"127\.0\.0\.1:9101/", f"127.0.0.1:{sim['ada-as4']}/")
    text = _replace(text, r"127\.0\.0\.1:9102/", f"127.0.0.1:{sim['ntp']}/")
    path = tmp / "luccs.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _distinct_free_ports(names: tuple[str, ...]) -> dict[str, int]:
    while True:
        ports = {name: free_port() for name in names}
        if len(set(ports.values())) == len(ports):
            return ports


@dataclass
class Demo:
    services: dict[str, int]
    sim: dict[str, int]
    logs: dict[str, Path]

    def url(self, service: str, path: str) -> str:
        port = self.services.get(service) or self.sim[service]
        return f"http://127.0.0.1:{port}{path}"

    def notices(self, path: str, event_type: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = httpx.get(
            self.url("control", "/receiver/notices"), params={"path": path}, timeout=5
        ).json()["items"]
        return [n for n in items if n["event_type"] == event_type and n["status"] == 200]

    def states(self) -> dict[str, str]:
        status = httpx.get(self.url("procedure", "/api/v1/status"), timeout=5).json()
        return {c["component"]: c["state"] for c in status["components"]}

    def switch(self, endpoint: str, mode: str) -> None:
        answer = httpx.post(self.url("control", f"/control/{endpoint}/{mode}"), timeout=5)
        assert answer.status_code == 200, answer.text


@pytest.fixture
def demo(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Iterator[Demo]:
    services = _distinct_free_ports(("detector", "procedure", "notifier"))
    sim = _distinct_free_ports(SIMULATED)
    while set(sim.values()) & set(services.values()):
        sim = _distinct_free_ports(SIMULATED)
    config = demo_config_copy(tmp_path, kafka=kafka_bootstrap, prefix=topic_prefix, services=services, sim=sim)
    logs = {"simulator": tmp_path / "simulator.log", "all": tmp_path / "all.log"}
    overrides = [arg for name, port in sim.items() for arg in ("--port", f"{name}={port}")]
    commands = {
        "simulator": [*_command(), "simulator", "--eos", "1", *overrides],
        "all": [*_command(), "all", "--config", str(config)],
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    running = Demo(services=services, sim=sim, logs=logs)
    try:
        for name, command in commands.items():
            with logs[name].open("wb") as log:
                processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        wait_for(functools.partial(_ok, running.url("control", "/healthz")), timeout=15, what="simulator control")
        for name in services:
            wait_for(functools.partial(_ok, running.url(name, "/readyz")), timeout=45, interval=0.3,
                     what=f"{name} /readyz")
        wait_for(lambda: running.states() == {"ada_b2g": "up", "ntp": "up"}, timeout=20,
                 what="both components up")
        yield running
    finally:
        stop_processes(processes, logs)


def test_ada_as4_refusing_opens_scenario_2_and_its_recovery_closes_it(demo: Demo) -> None:
    created = httpx.post(
        demo.url("procedure", "/api/v1/eos"), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10,
        json={
            "eori": EORI, "name": "Demo Test SARL", "language": "fr",
            "webhook_url": demo.url("receiver", "/hooks/fr"), "webhook_secret": "demo-webhook-secret-fr",
            "as4_endpoint": demo.url("eo-1", "/as4"),
        },
    )
    assert created.status_code == 201, created.text
    # The EO has reached the other services through the registry topic once the detector probes its endpoint.
    wait_for(lambda: _state_of(demo, f"eo:{EORI}") == "up", timeout=20, what="the EO's AS4 endpoint probed up")

    demo.switch("ada-as4", "refuse")
    opened = wait_for(lambda: demo.notices("/hooks/fr", "luccs.procedure.opened"), timeout=30,
                      what="the scenario-2 notice at the receiver")
    notice = opened[0]
    assert notice["scenario"] == "ADA_B2G_UNAVAILABLE"
    assert notice["language"] == "fr"
    assert notice["subject"]
    assert "NTP" in notice["message"]
    assert notice["idempotency_key"]
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", notice["signature"])
    assert demo.states()["ada_b2g"] == "down"
    procedure_id = notice["procedure_id"]
    open_procedures = httpx.get(demo.url("procedure", "/api/v1/procedures"), params={"state": "open"}, timeout=5)
    assert [p["procedure_id"] for p in open_procedures.json()["items"]] == [procedure_id]

    demo.switch("ada-as4", "ok")
    closed = wait_for(lambda: demo.notices("/hooks/fr", "luccs.procedure.closed"), timeout=30,
                      what="the closed notice at the receiver")
    assert closed[0]["procedure_id"] == procedure_id
    assert closed[0]["scenario"] == "ADA_B2G_UNAVAILABLE"
    assert httpx.get(demo.url("procedure", "/api/v1/procedures"), params={"state": "open"},
                     timeout=5).json()["items"] == []


def _state_of(demo: Demo, target_id: str) -> str | None:
    # An EO's endpoint is EO data: the detector shows it only to a token allowed to read it.
    answer = httpx.get(demo.url("detector", f"/api/v1/targets/{target_id}"), timeout=5,
                       headers={"Authorization": f"Bearer {TOKEN}"})
    state: str | None = answer.json()["state"] if answer.status_code == 200 else None
    return state


def test_the_demo_configuration_is_valid() -> None:
    from shared.config import load_settings

    settings = load_settings(DEMO_CONFIG)
    assert [t.id for t in settings.detector.targets] == ["ada-as4", "ntp"]
    assert [t.probe for t in settings.detector.targets] == ["as4", "http"]
    assert settings.notifier.allow_insecure_webhooks
    assert settings.notifier.allow_private_webhooks
    assert settings.detector.instance_id == "demo-detector"
