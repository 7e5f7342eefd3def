"""A schema-valid but poisoned observation: one availability message dated in the future.

A detector whose clock jumped ahead (or any producer on the topic) publishes an observation with
``observed_at`` years ahead. The procedure service keeps the newest observation per target and detector
instance by ``observed_at``, and calls an observation fresh while ``observed_at >= now - stale_after_s``:
the future-dated one is then fresh forever and every real, later observation from that detector for that
target is dropped as "older". The component is pinned in that state, and a procedure opened on it never
closes. Expected instead: such a message is dead-lettered (or clamped to its arrival time) and the real
observations keep deciding.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from services.procedure.app import create_app
from shared.config import KafkaSettings, ProcedureSettings, Settings
from shared.events import AvailabilityData, CloudEvent, Component, ComponentState, EventType
from shared.kafka import Publisher, ensure_topics
from tests.support import ChaosReport, serving

pytestmark = pytest.mark.integration

DETECTOR = "skewed-detector"


def _observation(target_id: str, component: Component, state: ComponentState, at: datetime) -> bytes:
    return CloudEvent[AvailabilityData](
        source="/tests/chaos", type=EventType.AVAILABILITY_CHANGED, subject=target_id,
        data=AvailabilityData(
            target_id=target_id, component=component, detector_instance=DETECTOR, state=state,
            previous_state=None, since=at, observed_at=at, probe="http", ok=state is ComponentState.UP,
            reason="ok" if state is ComponentState.UP else "refused",
        ),
    ).to_bytes()


def _settings(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
        procedure=ProcedureSettings(notifier_url=None, stale_after_s=60),
    )


@pytest.fixture
async def procedure(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[tuple[str, Settings]]:
    settings = _settings(tmp_path, kafka_bootstrap, topic_prefix)
    async with _serving(settings) as url:
        yield url, settings


@contextlib.asynccontextmanager
async def _serving(settings: Settings) -> AsyncIterator[str]:
    async with serving(create_app(settings)) as client:
        yield str(client.base_url).rstrip("/")


async def _states(client: httpx.AsyncClient) -> dict[str, str]:
    status = (await client.get("/api/v1/status")).json()
    return {c["component"]: c["state"] for c in status["components"]}


async def _wait_states(client: httpx.AsyncClient, wanted: dict[str, str], timeout: float) -> dict[str, str]:
    states: dict[str, str] = {}
    try:
        async with asyncio.timeout(timeout):
            while (states := await _states(client)) != wanted:
                await asyncio.sleep(0.2)
    except TimeoutError:
        pass
    return states


async def test_a_future_dated_observation_does_not_pin_the_component(
    procedure: tuple[str, Settings], chaos: ChaosReport
) -> None:
    url, settings = procedure
    topic = settings.kafka.availability_topic
    now = datetime.now(UTC)
    publisher = Publisher(settings.kafka, client_id="chaos-skew")
    await publisher.start()
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        try:
            await publisher.publish_raw(topic, _observation("ntp", Component.NTP, ComponentState.UP, now), key="ntp")
            skewed = now + timedelta(days=3650)
            await publisher.publish_raw(
                topic, _observation("ada", Component.ADA_B2G, ComponentState.DOWN, skewed), key="ada"
            )
            # Whatever the service made of the skewed message, the real observations that follow decide.
            await asyncio.sleep(2)
            await publisher.publish_raw(
                topic, _observation("ada", Component.ADA_B2G, ComponentState.UP, datetime.now(UTC)), key="ada"
            )
        finally:
            await publisher.stop()
        states = await _wait_states(client, {"ada_b2g": "up", "ntp": "up"}, timeout=10)
        chaos.add(faults=1, messages=3, losses=int(states.get("ada_b2g") != "up"), duplicates=0,
                  detail=f"an observation dated 10 years ahead, then a real one; components {states}")
        assert states == {"ada_b2g": "up", "ntp": "up"}
        assert (await client.get("/api/v1/procedures", params={"state": "open"})).json()["items"] == []


async def test_a_future_dated_observation_read_late_does_not_outrank_later_ones(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, chaos: ChaosReport
) -> None:
    # The service reads the skewed message only after the real one behind it was sent (it was down, or
    # behind its topic): counted as made on reading, the skewed DOWN would look newer than the real UP.
    settings = _settings(tmp_path, kafka_bootstrap, topic_prefix)
    await ensure_topics(settings.kafka)
    topic = settings.kafka.availability_topic
    publisher = Publisher(settings.kafka, client_id="chaos-skew")
    await publisher.start()
    try:
        now = datetime.now(UTC)
        await publisher.publish_raw(topic, _observation("ntp", Component.NTP, ComponentState.UP, now), key="ntp")
        await publisher.publish_raw(
            topic, _observation("ada", Component.ADA_B2G, ComponentState.DOWN, now + timedelta(days=3650)), key="ada"
        )
        await asyncio.sleep(0.05)
        await publisher.publish_raw(
            topic, _observation("ada", Component.ADA_B2G, ComponentState.UP, datetime.now(UTC)), key="ada"
        )
    finally:
        await publisher.stop()
    await asyncio.sleep(1.5)  # the messages wait on the topic, as for a service that is behind
    async with _serving(settings) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        states = await _wait_states(client, {"ada_b2g": "up", "ntp": "up"}, timeout=30)
        opened = (await client.get("/api/v1/procedures")).json()["items"]
    chaos.add(faults=1, messages=3, losses=int(states.get("ada_b2g") != "up"), duplicates=0,
              detail=f"a skewed observation read after a real one sent later; components {states}")
    assert states == {"ada_b2g": "up", "ntp": "up"}
    assert opened == []
