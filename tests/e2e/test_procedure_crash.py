"""SIGKILL the procedure service between committing a decision and publishing it: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from shared.config import KafkaSettings
from shared.events import AvailabilityData, CloudEvent, Component, ComponentState, EventType, ProcedureData, parse_event
from shared.kafka import Publisher, ensure_topics
from tests.support import ChaosReport, free_port, wait_for

pytestmark = pytest.mark.e2e


def _seen(target: str, component: Component, state: ComponentState, at: datetime) -> CloudEvent[AvailabilityData]:
    return CloudEvent[AvailabilityData](
        source="/tests", type=EventType.AVAILABILITY_CHANGED, subject=target,
        data=AvailabilityData(target_id=target, component=component, detector_instance="d1", state=state,
                              since=at, observed_at=at, probe="http", ok=state == ComponentState.UP, reason="test"),
    )


async def _publish(settings: KafkaSettings, *events: CloudEvent[AvailabilityData]) -> None:
    publisher = Publisher(settings, client_id="crash-test")
    await publisher.start()
    try:
        for event in events:
            await publisher.publish(settings.availability_topic, event, key=event.data.target_id)
    finally:
        await publisher.stop()


async def _procedure_events(
    settings: KafkaSettings, *, settle_s: float, at_least: int = 0, timeout_s: float = 60
) -> list[CloudEvent[ProcedureData]]:
    """Everything on the procedures topic: at least ``at_least`` events, then until nothing new arrives for
    ``settle_s`` (so that a duplicate would be seen)."""
    consumer = AIOKafkaConsumer(settings.procedures_topic, bootstrap_servers=settings.bootstrap_servers,
                                auto_offset_reset="earliest")
    await consumer.start()
    found: list[CloudEvent[ProcedureData]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        quiet_since = loop.time()
        while (len(found) < at_least or loop.time() - quiet_since < settle_s) and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            new = [parse_event(r.value, ProcedureData) for rs in batch.values() for r in rs if r.value]
            if new:
                found += new
                quiet_since = loop.time()
    finally:
        await consumer.stop()
    return found


def _start(config: Path, log: Path, *, fault: bool) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tests.e2e.crashing_procedure"] if fault else [
        str(Path(sys.executable).with_name("luccs-fallback"))
    ]
    with log.open("ab") as out:
        return subprocess.Popen([*command, "procedure", "--config", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2])


def test_kill_after_commit_before_publish_publishes_exactly_once(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, chaos: ChaosReport
) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    asyncio.run(ensure_topics(settings))
    port = free_port()
    config = tmp_path / "luccs.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\n[kafka]\nbootstrap_servers = "{kafka_bootstrap}"\ntopic_prefix = "{topic_prefix}"\n'
        f"[procedure]\nport = {port}\nstale_after_s = 300\n",
        encoding="utf-8",
    )
    log = tmp_path / "procedure.log"
    t0 = datetime.now(UTC)
    asyncio.run(_publish(settings, _seen("ntp", Component.NTP, ComponentState.UP, t0),
                         _seen("ada", Component.ADA_B2G, ComponentState.DOWN, t0)))

    crashing = _start(config, log, fault=True)
    try:
        assert crashing.wait(timeout=90) == -9, log.read_text()[-3000:]
    finally:
        if crashing.poll() is None:
            crashing.kill()
    assert asyncio.run(_procedure_events(settings, settle_s=1.0)) == []  # committed, not yet published

    restarted = _start(config, log, fault=False)
    try:
        wait_for(lambda: _ready(port), timeout=60, what="procedure /readyz after restart")
        opened = asyncio.run(_procedure_events(settings, settle_s=3.0, at_least=1))
        assert [(e.type, e.data.scenario) for e in opened] == [(EventType.PROCEDURE_OPENED, "ADA_B2G_UNAVAILABLE")]

        asyncio.run(_publish(settings, _seen("ada", Component.ADA_B2G, ComponentState.UP, t0 + timedelta(seconds=5))))
        # The restarted consumer gets the partitions once the killed member's session has expired.
        events = asyncio.run(_procedure_events(settings, settle_s=3.0, at_least=2))
        kinds = [e.type for e in events]
        chaos.add(faults=1, messages=len(events),
                  losses=int(EventType.PROCEDURE_OPENED not in kinds) + int(EventType.PROCEDURE_CLOSED not in kinds),
                  duplicates=len(events) - len({e.id for e in events}) + max(0, len(events) - 2),
                  detail="SIGKILL of the procedure service between commit and publish; "
                         f"events after the restart: {', '.join(kinds)}")
        assert [e.type for e in events] == [EventType.PROCEDURE_OPENED, EventType.PROCEDURE_CLOSED]
        assert events[0].id == opened[0].id
    finally:
        restarted.terminate()
        restarted.wait(timeout=20)


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
