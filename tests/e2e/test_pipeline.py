"""The whole pipeline as a user runs it: three service processes, a real broker, real loopback servers.

The detector watches two local HTTP servers standing in for the ADA AS4 entry point and NTP; the test
switches them off and on and watches what an EO's webhook receiver gets.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from shared.config import KafkaSettings
from shared.events import CloudEvent, EoData, EventType, Language
from shared.kafka import Publisher, ensure_topics
from shared.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify
from tests.support import ToggleServer, WebhookReceiver, free_port, stop_processes, wait_for

pytestmark = pytest.mark.e2e

INTERVAL_S = 0.5
FAILURE_THRESHOLD = 3
EORI = "LU12345678901234"
SECRET = "e2e-webhook-secret"
OPERATOR_TOKEN = "e2e-operator-token"


@dataclass
class System:
    ada: ToggleServer
    ntp: ToggleServer
    receiver: WebhookReceiver
    procedure_url: str
    notifier_url: str
    logs: dict[str, Path]

    def component_states(self) -> dict[str, str]:
        status = httpx.get(f"{self.procedure_url}/api/v1/status", timeout=5).json()
        return {c["component"]: c["state"] for c in status["components"]}

    def procedures(self, state: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = httpx.get(
            f"{self.procedure_url}/api/v1/procedures", params={"state": state}, timeout=5
        ).json()["items"]
        return items


async def _register_eo(settings: KafkaSettings, webhook_url: str) -> None:
    await ensure_topics(settings)
    publisher = Publisher(settings, client_id="e2e-test")
    await publisher.start()
    try:
        event = CloudEvent[EoData](
            source="/tests/e2e",
            type=EventType.EO_UPSERTED,
            subject=EORI,
            data=EoData(
                eori=EORI, name="Test Trading SARL", language=Language.FR, email=None,
                webhook_url=webhook_url, webhook_secret=SecretStr(SECRET), as4_endpoint=None,
            ),
        )
        await publisher.publish(settings.eos_topic, event, key=EORI)
    finally:
        await publisher.stop()


def _config(
    tmp: Path, *, kafka: str, prefix: str, ada: ToggleServer, ntp: ToggleServer, ports: dict[str, int],
    retry_interval_s: float = INTERVAL_S / 5,
) -> Path:
    path = tmp / "luccs.toml"
    path.write_text(
        f"""
data_dir = "{tmp / 'data'}"

[logging]
level = "INFO"

[kafka]
bootstrap_servers = "{kafka}"
topic_prefix = "{prefix}"

[api]
operator_tokens = ["{OPERATOR_TOKEN}"]

[detector]
instance_id = "e2e-detector"
port = {ports['detector']}
interval_s = {INTERVAL_S}
retry_interval_s = {retry_interval_s}
timeout_s = 0.4
failure_threshold = {FAILURE_THRESHOLD}
success_threshold = 2
heartbeat_s = 2

[[detector.targets]]
id = "ada-as4"
component = "ada_b2g"
url = "{ada.url}"

[[detector.targets]]
id = "ntp-portal"
component = "ntp"
url = "{ntp.url}"

[procedure]
port = {ports['procedure']}
stale_after_s = 30

[notifier]
port = {ports['notifier']}
allow_insecure_webhooks = true
allow_private_webhooks = true
webhook_timeout_s = 2
backoff_base_s = 0.2
backoff_max_s = 1
""",
        encoding="utf-8",
    )
    return path


def _command() -> list[str]:
    script = Path(sys.executable).with_name("luccs-fallback")
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]


@pytest.fixture(scope="module")
def system(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    tmp = tmp_path_factory.mktemp("e2e")
    prefix = f"e2e-{os.getpid()}-{int(time.time())}"
    ada, ntp = ToggleServer(), ToggleServer()
    ada.up()
    ntp.up()
    receiver = WebhookReceiver().start()
    ports = {name: free_port() for name in ("detector", "procedure", "notifier")}
    config = _config(tmp, kafka=kafka_bootstrap, prefix=prefix, ada=ada, ntp=ntp, ports=ports)
    asyncio.run(_register_eo(KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix), receiver.url()))

    processes: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: tmp / f"{name}.log" for name in ports}
    try:
        for name in ports:
            with logs[name].open("wb") as log:
                processes[name] = subprocess.Popen(
                    [*_command(), name, "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
                )
        for name, port in ports.items():
            wait_for(functools.partial(_ready, port), timeout=90, interval=0.3, what=f"{name} /readyz")
        sys_ = System(
            ada=ada, ntp=ntp, receiver=receiver,
            procedure_url=f"http://127.0.0.1:{ports['procedure']}",
            notifier_url=f"http://127.0.0.1:{ports['notifier']}",
            logs=logs,
        )
        wait_for(
            lambda: sys_.component_states() == {"ada_b2g": "up", "ntp": "up"},
            timeout=30, what="both components up at the procedure service",
        )
        yield sys_
    finally:
        stop_processes(processes, logs)
        receiver.stop()
        ada.down()
        ntp.down()


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _assert_signed(hook: Any) -> None:
    assert verify(SECRET, hook.body, hook.headers[SIGNATURE_HEADER], now=int(time.time()))
    assert not verify("another-secret", hook.body, hook.headers[SIGNATURE_HEADER], now=int(time.time()))
    assert hook.headers[IDEMPOTENCY_HEADER]


def test_ntp_only_outage_opens_nothing(system: System) -> None:
    before = len(system.receiver.received)
    system.ntp.down()
    try:
        wait_for(lambda: system.component_states()["ntp"] == "down", timeout=20, what="NTP seen down")
        # Give a wrongly opened procedure time to reach the receiver: several probe rounds.
        time.sleep(FAILURE_THRESHOLD * INTERVAL_S * 3)
        assert system.procedures("open") == []
        assert len(system.receiver.received) == before
    finally:
        system.ntp.up()
    wait_for(lambda: system.component_states()["ntp"] == "up", timeout=20, what="NTP back up")


def test_ada_b2g_outage_opens_scenario_2_once_and_closes_it(system: System) -> None:
    system.ada.down()
    opened = wait_for(
        lambda: system.receiver.of_type("luccs.procedure.opened"), timeout=30, what="an opened webhook"
    )
    hook = opened[0]
    _assert_signed(hook)
    event = hook.event
    assert event["specversion"] == "1.0"
    assert event["data"]["scenario"] == "ADA_B2G_UNAVAILABLE"
    assert event["data"]["scope"] == "national"
    assert event["data"]["language"] == "fr"
    assert "NTP" in event["data"]["message"]
    procedure_id = event["data"]["procedure_id"]
    assert [p["procedure_id"] for p in system.procedures("open")] == [procedure_id]

    system.ada.up()
    closed = wait_for(
        lambda: system.receiver.of_type("luccs.procedure.closed"), timeout=30, what="a closed webhook"
    )
    _assert_signed(closed[0])
    assert closed[0].event["data"]["procedure_id"] == procedure_id
    assert closed[0].event["data"]["closed_at"] is not None

    # Nothing more arrives: exactly one opened and one closed.
    time.sleep(FAILURE_THRESHOLD * INTERVAL_S * 2)
    assert len(system.receiver.of_type("luccs.procedure.opened")) == 1
    assert len(system.receiver.of_type("luccs.procedure.closed")) == 1
    assert system.procedures("open") == []
    detail = httpx.get(f"{system.procedure_url}/api/v1/procedures/{procedure_id}", timeout=5).json()
    assert [entry["kind"] for entry in detail["timeline"]] == ["open", "close"]
    assert detail["timeline"][0]["evidence"], "the opening keeps its evidence"
    deliveries = httpx.get(
        f"{system.notifier_url}/api/v1/deliveries", params={"procedure_id": procedure_id}, timeout=5,
        headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},  # EO data: never without a token
    ).json()["items"]
    assert sorted(d["status"] for d in deliveries) == ["delivered", "delivered"]


# --- one outage, one story ---------------------------------------------------------------------------------


def _national_story(system: System, since: int) -> list[tuple[str, str]]:
    """The national notices the EO got since ``since``: (event type, scenario), in the order decided."""
    hooks = sorted(system.receiver.received[since:], key=lambda h: h.event["time"])
    return [(h.event["type"], h.event["data"]["scenario"]) for h in hooks if h.event["data"]["scope"] == "national"]


def _both_up_and_nothing_open(system: System) -> None:
    wait_for(lambda: system.component_states() == {"ada_b2g": "up", "ntp": "up"}, timeout=30, what="both up")
    wait_for(lambda: system.procedures("open") == [], timeout=30, what="no open procedure")


def test_a_joint_failure_tells_scenario_3_only_and_a_joint_return_closes_directly(system: System) -> None:
    _both_up_and_nothing_open(system)
    since = len(system.receiver.received)
    system.ada.down()
    system.ntp.down()
    wait_for(lambda: system.component_states() == {"ada_b2g": "down", "ntp": "down"}, timeout=30, what="both down")
    wait_for(lambda: _national_story(system, since), timeout=30, what="the EO told of the outage")
    time.sleep(FAILURE_THRESHOLD * INTERVAL_S * 2)  # room for a contradictory notice to arrive
    assert _national_story(system, since) == [("luccs.procedure.opened", "LUCCS_UNAVAILABLE")]

    since = len(system.receiver.received)
    system.ada.up()
    system.ntp.up()
    wait_for(lambda: _national_story(system, since), timeout=30, what="the EO told of the return")
    _both_up_and_nothing_open(system)
    time.sleep(FAILURE_THRESHOLD * INTERVAL_S * 2)
    assert _national_story(system, since) == [("luccs.procedure.closed", "LUCCS_UNAVAILABLE")]


def test_a_suspect_ntp_that_recovers_lets_scenario_2_open_once(system: System) -> None:
    _both_up_and_nothing_open(system)
    since = len(system.receiver.received)
    system.ntp.fail_next(FAILURE_THRESHOLD - 1)  # NTP blips as ADA B2G fails: suspect, never down
    system.ada.down()
    wait_for(lambda: _national_story(system, since), timeout=30, what="the EO told of the outage")
    time.sleep(FAILURE_THRESHOLD * INTERVAL_S * 2)
    assert _national_story(system, since) == [("luccs.procedure.opened", "ADA_B2G_UNAVAILABLE")]
    assert system.component_states() == {"ada_b2g": "down", "ntp": "up"}

    since = len(system.receiver.received)
    system.ada.up()
    wait_for(lambda: _national_story(system, since), timeout=30, what="the EO told of the return")
    _both_up_and_nothing_open(system)
    assert _national_story(system, since) == [("luccs.procedure.closed", "ADA_B2G_UNAVAILABLE")]
