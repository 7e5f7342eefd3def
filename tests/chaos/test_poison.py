"""Poison messages on every consumed topic, against the three services running as processes.

Each consumed topic gets three faults (bytes that are not JSON, JSON of the wrong schema, a valid
CloudEvent of a type the topic does not carry) and then a valid message. Every fault must reach the
dead-letter topic with its reason and original bytes, once per consumer reading the topic; every service
must stay alive and ready, and the valid messages after the faults must still be processed.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import BaseModel, SecretStr

from shared.config import KafkaSettings
from shared.events import (
    AdvisoryData,
    AdvisoryKind,
    AvailabilityData,
    CloudEvent,
    Component,
    ComponentState,
    DeadLetterData,
    EoData,
    EventType,
    Language,
    ProcedureData,
    ProcedureState,
    Scenario,
    Scope,
    parse_event,
)
from shared.kafka import Publisher, ensure_topics
from tests.e2e.test_pipeline import _command
from tests.support import BUREAU, BUREAU_TOKEN, ChaosReport, WebhookReceiver, free_port, stop_processes, wait_for

pytestmark = pytest.mark.e2e

EORI = "LU99000000000001"
SECRET = "chaos-webhook-secret"
INSTANCE = "chaos-detector"
ADVISORY_ID = "chaos-advisory"
NOT_JSON = b"\x00\xffthis is { not json"


@dataclass
class Running:
    kafka: KafkaSettings
    ports: dict[str, int]
    receiver: WebhookReceiver
    logs: dict[str, Path]

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"


def _config(tmp: Path, *, kafka: str, prefix: str, ports: dict[str, int]) -> Path:
    path = tmp / "luccs.toml"
    # No configured targets: the only availability observations are the ones this test publishes. EO
    # endpoints are probed rarely and need many failures, so no EO procedure opens during the test.
    path.write_text(
        f"""
data_dir = "{tmp / 'data'}"

[logging]
level = "INFO"

[kafka]
bootstrap_servers = "{kafka}"
topic_prefix = "{prefix}"

[api]
bureau_tokens = ["{BUREAU_TOKEN}"]

[detector]
instance_id = "{INSTANCE}"
port = {ports['detector']}
interval_s = 60
timeout_s = 1
failure_threshold = 10

[procedure]
port = {ports['procedure']}
stale_after_s = 600
notifier_url = "http://127.0.0.1:{ports['notifier']}"

[notifier]
port = {ports['notifier']}
allow_insecure_webhooks = true
allow_private_webhooks = true
webhook_timeout_s = 2
backoff_base_s = 0.2
backoff_max_s = 1
servicedesk_email = "servicedesk@example.invalid"
registry_catchup_s = 10

[smtp]
host = "127.0.0.1"
port = {ports['smtp']}
timeout_s = 1
""",
        encoding="utf-8",
    )
    return path


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def running(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Iterator[Running]:
    prefix = f"chaos-{topic_prefix}"
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    asyncio.run(ensure_topics(kafka))
    receiver = WebhookReceiver().start()
    # smtp: a free port nobody listens on, so the Servicedesk's e-mail is planned and then retried.
    ports = {name: free_port() for name in ("detector", "procedure", "notifier", "smtp")}
    config = _config(tmp_path, kafka=kafka_bootstrap, prefix=prefix, ports=ports)
    services = ("procedure", "notifier", "detector")
    logs = {name: tmp_path / f"{name}.log" for name in services}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in services:
            with logs[name].open("wb") as log:
                processes[name] = subprocess.Popen(
                    [*_command(), name, "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
                )
        for name in services:
            wait_for(functools.partial(_ready, ports[name]), timeout=90, interval=0.3, what=f"{name} /readyz")
        yield Running(kafka=kafka, ports=ports, receiver=receiver, logs=logs)
    finally:
        stop_processes(processes, logs)
        receiver.stop()


def _event(event_type: str, data: BaseModel, subject: str) -> CloudEvent[Any]:
    return CloudEvent[Any](source="/tests/chaos", type=event_type, subject=subject, data=data)


def _availability(target_id: str, component: Component, state: ComponentState) -> CloudEvent[Any]:
    now = datetime.now(UTC)
    return _event(
        EventType.AVAILABILITY_CHANGED,
        AvailabilityData(
            target_id=target_id, component=component, detector_instance="chaos-injector", state=state,
            previous_state=ComponentState.UNKNOWN, since=now, observed_at=now, probe="http",
            ok=state is ComponentState.UP, reason="ok" if state is ComponentState.UP else "refused",
        ),
        target_id,
    )


def _eo(webhook_url: str, as4_port: int) -> CloudEvent[Any]:
    return _event(
        EventType.EO_UPSERTED,
        EoData(
            eori=EORI, name="Chaos Trading SARL", language=Language.EN, email=None, webhook_url=webhook_url,
            webhook_secret=SecretStr(SECRET), as4_endpoint=f"http://127.0.0.1:{as4_port}/as4",
        ),
        EORI,
    )


def _procedure() -> CloudEvent[Any]:
    now = datetime.now(UTC)
    return _event(
        EventType.PROCEDURE_OPENED,
        ProcedureData(
            procedure_id=f"chaos-{uuid.uuid4().hex[:8]}", scenario=Scenario.ADA_B2G_UNAVAILABLE, scope=Scope.NATIONAL,
            state=ProcedureState.OPEN, reason="chaos template", opened_at=now,
        ),
        "chaos",
    )


def _advisory(advisory_id: str) -> CloudEvent[Any]:
    return _event(
        EventType.ADVISORY_RAISED,
        AdvisoryData(
            advisory_id=advisory_id, kind=AdvisoryKind.NTP_UNAVAILABLE, active=True, components=[Component.NTP],
            reason="chaos: NTP down", raised_at=datetime.now(UTC),
        ),
        advisory_id,
    )


def _poison(valid: CloudEvent[Any], *, tombstone: bool) -> list[bytes | None]:
    """Not JSON; JSON whose data does not fit the topic's schema; a valid event of a type the topic never carries;
    and a tombstone (null value) where the topic has no use for one (on the EO registry it is a deletion)."""
    document = json.loads(valid.to_bytes())
    wrong_schema = dict(document, id=str(uuid.uuid4()), data={"unexpected": True})
    wrong_type = dict(document, id=str(uuid.uuid4()), type=EventType.DELIVERY_RECORDED.value)
    faults: list[bytes | None] = [NOT_JSON, json.dumps(wrong_schema).encode(), json.dumps(wrong_type).encode()]
    return [*faults, None] if tombstone else faults


async def _publish(kafka: KafkaSettings, messages: list[tuple[str, str, bytes | None]]) -> None:
    publisher = Publisher(kafka, client_id="chaos-test")
    await publisher.start()
    try:
        for topic, key, value in messages:
            await publisher.publish_raw(topic, value, key=key)
    finally:
        await publisher.stop()


async def _dead_letters(
    kafka: KafkaSettings, wanted: set[tuple[str, str, bytes | None]], timeout_s: float
) -> list[DeadLetterData]:
    """Read the dead-letter topic until every (source topic, reading service, original value) is there."""
    consumer = AIOKafkaConsumer(
        kafka.deadletter_topic, bootstrap_servers=kafka.bootstrap_servers, auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    letters: list[DeadLetterData] = []
    try:
        async with asyncio.timeout(timeout_s):
            while not wanted <= _seen(letters):
                batch = await consumer.getmany(timeout_ms=300)
                for records in batch.values():
                    letters.extend(parse_event(r.value, DeadLetterData).data for r in records if r.value is not None)
    except TimeoutError:
        missing = wanted - _seen(letters)
        raise AssertionError(f"dead letters missing after {timeout_s}s: {sorted(missing)[:5]} ...") from None
    finally:
        await consumer.stop()
    return letters


def _who(group: str) -> str:
    """Which service a dead letter's consumer group (or follower name) belongs to."""
    for service in ("detector", "notifier", "procedure"):
        if f".{service}" in group:
            return service
    return group


def _original(letter: DeadLetterData) -> bytes | None:
    return base64.b64decode(letter.value) if letter.value is not None else None


def _seen(letters: list[DeadLetterData]) -> set[tuple[str, str, bytes | None]]:
    return {
        (letter.source_topic, _who(letter.consumer_group), _original(letter))
        for letter in letters
    }


def test_poison_on_every_consumed_topic_is_dead_lettered_and_everything_carries_on(
    running: Running, chaos: ChaosReport
) -> None:
    kafka, receiver = running.kafka, running.receiver
    as4_port = free_port()  # nobody listens: the EO's own endpoint is refused, but only probed every 60 s
    topics_and_readers = {
        kafka.availability_topic: (["procedure"], _availability("chaos-ada", Component.ADA_B2G, ComponentState.DOWN)),
        kafka.procedures_topic: (["notifier"], _procedure()),
        kafka.advisories_topic: (["notifier"], _advisory("chaos-template")),
        kafka.eos_topic: (["notifier", "detector"], _eo(receiver.url("/hook"), as4_port)),
    }
    poison: list[tuple[str, str, bytes | None]] = []
    wanted: set[tuple[str, str, bytes | None]] = set()
    for topic, (readers, template) in topics_and_readers.items():
        for index, value in enumerate(_poison(template, tombstone=topic != kafka.eos_topic)):
            poison.append((topic, f"poison-{index}", value))
            wanted |= {(topic, reader, value) for reader in readers}
    asyncio.run(_publish(kafka, poison))

    # The valid messages after the poison. First the EO, and only once both of its readers have it
    # the outage that must be fanned out to it.
    asyncio.run(_publish(kafka, [(kafka.eos_topic, EORI, _eo(receiver.url("/hook"), as4_port).to_bytes())]))
    wait_for(
        lambda: httpx.get(
            f"{running.url('detector')}/api/v1/targets/eo:{EORI}", headers=BUREAU, timeout=5
        ).status_code == 200,
        timeout=30, what="the detector to add the EO registered after the poison",
    )
    letters = asyncio.run(_dead_letters(kafka, wanted, timeout_s=60))
    chaos.add(faults=len(poison), messages=len(letters), losses=len(wanted - _seen(letters)),
              duplicates=len(letters) - len(_seen(letters)),
              detail=f"poison on {len(topics_and_readers)} topics; {len(wanted)} dead letters expected "
                     f"(one per reading service), {len(letters)} seen")
    time.sleep(2)  # the notifier's EO consumer handled the poison; give the valid record behind it a moment
    ntp_up = _availability("chaos-ntp", Component.NTP, ComponentState.UP)
    ada_down = _availability("chaos-ada", Component.ADA_B2G, ComponentState.DOWN)
    asyncio.run(_publish(kafka, [
        (kafka.availability_topic, "chaos-ntp", ntp_up.to_bytes()),
        (kafka.availability_topic, "chaos-ada", ada_down.to_bytes()),
        (kafka.advisories_topic, ADVISORY_ID, _advisory(ADVISORY_ID).to_bytes()),
    ]))

    # Availability (procedure) after poison: the status reflects it and scenario 2 opens ...
    def states() -> dict[str, str]:
        status = httpx.get(f"{running.url('procedure')}/api/v1/status", timeout=5).json()
        return {c["component"]: c["state"] for c in status["components"]}

    wait_for(lambda: states() == {"ada_b2g": "down", "ntp": "up"}, timeout=30, what="the valid availability events")
    # ... and procedures and EO registry (notifier) after poison: the opening reaches the EO's webhook.
    opened = wait_for(lambda: receiver.of_type("luccs.procedure.opened"), timeout=30, what="the opened webhook")
    assert opened[0].event["data"]["scenario"] == "ADA_B2G_UNAVAILABLE"
    assert opened[0].event["data"]["language"] == "en"
    # Advisories (notifier) after poison: the Servicedesk's notice is planned.
    wait_for(
        lambda: httpx.get(
            f"{running.url('notifier')}/api/v1/deliveries", params={"procedure_id": ADVISORY_ID}, headers=BUREAU,
            timeout=5,
        ).json()["items"],
        timeout=30, what="the Servicedesk's delivery of the valid advisory",
    )

    for letter in letters:
        assert letter.reason.strip(), letter
    by_value = {(letter.source_topic, _original(letter)): letter for letter in letters}
    for topic, _key, value in poison:
        reason = by_value[(topic, value)].reason
        if value is None:
            assert "tombstone" in reason, reason
        elif value == NOT_JSON:
            assert "unparseable" in reason or "json" in reason.lower(), reason
        elif b'"unexpected"' in value:
            assert "schema validation failed" in reason, reason
        else:
            assert "unexpected event type" in reason, reason
    for service, port in running.ports.items():
        if service == "smtp":
            continue
        for probe in ("/healthz", "/readyz"):
            response = httpx.get(f"http://127.0.0.1:{port}{probe}", timeout=5)
            assert response.status_code == 200, (service, probe, response.text)
