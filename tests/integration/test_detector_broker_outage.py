"""A broker outage: the detector keeps probing and, when the broker is back, publishes the latest state.

Uses a private broker (deploy/kafka/kafka.sh in a tmp data dir, on free ports; the shared test broker is
never touched) so that the broker can really be stopped and started again under a running detector.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI

from services.detector.app import create_app
from shared.config import KafkaSettings, Settings
from shared.events import AvailabilityData, CloudEvent, parse_event
from tests.integration.test_broker_script import Broker
from tests.integration.test_probes_servers import MAINTENANCE, LoopbackServer, Reply, Request
from tests.support import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(tmp_path / "var")
    try:
        started = broker.run("start", timeout=420)
        assert started.returncode == 0, started.stdout + started.stderr
        yield broker
    finally:
        broker.run("stop", timeout=60)  # never leak a broker


class Switchable:
    """An HTTP target whose health the test switches."""

    def __init__(self) -> None:
        self.healthy = True
        self.server = LoopbackServer(behaviour=self.answer)

    def answer(self, _request: Request) -> Reply:
        return Reply() if self.healthy else MAINTENANCE


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://d") as client:
        yield client




async def state_of(client: httpx.AsyncClient, target_id: str) -> str:
    state: str = (await client.get(f"/api/v1/targets/{target_id}")).json()["state"]
    return state


async def all_events(bootstrap: str, topic: str) -> list[CloudEvent[AvailabilityData]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    events: list[CloudEvent[AvailabilityData]] = []
    try:
        for _ in range(10):  # bounded: read until a few empty polls
            batch = await consumer.getmany(timeout_ms=500)
            events += [parse_event(r.value, AvailabilityData) for rs in batch.values() for r in rs if r.value]
    finally:
        await consumer.stop()
    return events


@pytest.mark.timeout(900)
async def test_probing_goes_on_and_the_latest_state_is_published_when_the_broker_returns(
    private_broker: Broker, tmp_path: Path
) -> None:
    bootstrap = f"127.0.0.1:{private_broker.port}"
    portal, b2g = Switchable(), Switchable()
    await portal.server.start()
    await b2g.server.start()
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_prefix="outage"),
        detector={
            "instance_id": "outage-test", "interval_s": 0.2, "timeout_s": 0.5, "failure_threshold": 2,
            "success_threshold": 2, "heartbeat_s": 2.0, "eo_targets": False, "publish_timeout_s": 2.0,
            "targets": [
                {"id": "ntp", "component": "ntp", "url": portal.server.url()},
                {"id": "ada", "component": "ada_b2g", "url": b2g.server.url()},
            ],
        },
    )
    topic = settings.kafka.availability_topic
    try:
        async with running(create_app(settings)) as client:
            await eventually(lambda: _both(client, "up"))
            await eventually(lambda: _published_up(bootstrap, topic))

            stopped = await asyncio.to_thread(private_broker.run, "stop", 60)
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr

            # While the broker is away: NTP goes down for good; ADA B2G goes down and comes back.
            portal.healthy = False
            b2g.healthy = False
            await eventually(lambda: _both(client, "down"))
            b2g.healthy = True
            await eventually(lambda: _is(client, "ada", "up"))
            await eventually(lambda: _not_ready(client))  # the failed publications show in /readyz

            started = await asyncio.to_thread(private_broker.run, "start", 420)
            assert started.returncode == 0, started.stdout + started.stderr
            await eventually(lambda: _ready(client), timeout=120)
            events = await eventually(lambda: _events_after_outage(bootstrap, topic), timeout=60)
    finally:
        await portal.server.close()
        await b2g.server.close()

    ntp_down = [e for e in events if e.data.target_id == "ntp" and e.data.state == "down"]
    assert ntp_down, "NTP's outage reached the broker"
    assert ntp_down[0].type == "luccs.availability.changed"
    assert ntp_down[0].data.previous_state == "up"
    ada = [e for e in events if e.data.target_id == "ada"]
    assert all(e.data.state == "up" for e in ada), "ADA's outage was over before the broker came back"
    assert not any(e.type == "luccs.availability.changed" for e in ada)
    assert any("superseded while the broker was unreachable" in (e.data.detail or "") for e in ada)


async def _both(client: httpx.AsyncClient, state: str) -> bool:
    return await state_of(client, "ntp") == state and await state_of(client, "ada") == state


async def _is(client: httpx.AsyncClient, target_id: str, state: str) -> bool:
    return await state_of(client, target_id) == state


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


async def _not_ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 503


async def _published_up(bootstrap: str, topic: str) -> bool:
    events = await all_events(bootstrap, topic)
    return {e.data.target_id for e in events if e.data.state == "up"} == {"ntp", "ada"}


async def _events_after_outage(bootstrap: str, topic: str) -> list[CloudEvent[AvailabilityData]] | None:
    events = await all_events(bootstrap, topic)
    if not any(e.data.target_id == "ntp" and e.data.state == "down" for e in events):
        return None
    # Only what was published after the first "up" of each target: the outage's aftermath.
    first_up: dict[str, int] = {}
    for i, event in enumerate(events):
        if event.data.state == "up":
            first_up.setdefault(event.data.target_id, i)
    return [e for i, e in enumerate(events) if i > first_up.get(e.data.target_id, -1)]
