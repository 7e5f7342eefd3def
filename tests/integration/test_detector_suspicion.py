"""Suspicion over the real broker: the first failed probe of an up target reaches the availability topic at
once, marked suspect, while the target is still up; the outage is then confirmed at the retry pace."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI

from services.detector.app import create_app
from services.detector.domain import phase
from shared.config import KafkaSettings, Settings
from shared.events import AvailabilityData, CloudEvent, EventType, parse_event
from shared.kafka import ensure_topics
from tests.integration.test_probes_servers import MAINTENANCE, LoopbackServer, Outcome, Reply, Request
from tests.support import eventually

pytestmark = pytest.mark.integration

INTERVAL_S = 10.0  # the regular pace would need 2 x 10 s more to confirm an outage after its first failure
RETRY_S = 0.2
TIMEOUT_S = 2.0
FAILURE_THRESHOLD = 3
# A target id whose first probe comes within 0.2 s of the start, so that the test waits one interval, not two.
TARGET_ID = next(i for n in itertools.count() if phase(i := f"ada-{n}") < 0.02)


class Portal:
    """An HTTP target that fails with a maintenance page once ``down``. Every failed answer after the first is
    held until :meth:`release` (or until the probe gives up at its timeout, which also fails it): the test
    sees what the first failure published while the target cannot have gone down yet."""

    def __init__(self) -> None:
        self.down = False
        self.failures = 0
        self.released = asyncio.Event()
        self.server = LoopbackServer(behaviour=self.answer)

    def answer(self, _request: Request) -> Awaitable[Outcome] | Outcome:
        if not self.down:
            return Reply()
        self.failures += 1
        return MAINTENANCE if self.failures == 1 else self._held()

    async def _held(self) -> Outcome:
        await self.released.wait()
        return MAINTENANCE

    def release(self) -> None:
        self.released.set()


class Topic:
    """Every availability event of one target, read from the topic's beginning as they arrive."""

    def __init__(self, bootstrap: str, topic: str, target_id: str) -> None:
        self.events: list[CloudEvent[AvailabilityData]] = []
        self._consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        self._target_id = target_id
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Topic:
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _read(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    if record.value is None:
                        continue
                    event = parse_event(record.value, AvailabilityData)
                    if event.data.target_id == self._target_id:
                        self.events.append(event)

    def first(self, **wanted: Any) -> CloudEvent[AvailabilityData] | None:
        return next((e for e in self.events if all(getattr(e.data, k) == v for k, v in wanted.items())), None)


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://detector") as client:
            yield client


async def state_of(client: httpx.AsyncClient) -> str:
    state: str = (await client.get(f"/api/v1/targets/{TARGET_ID}")).json()["state"]
    return state


@pytest.mark.timeout(180)
async def test_the_first_failure_travels_at_once_as_suspect_and_the_outage_is_confirmed_at_the_retry_pace(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    portal = Portal()
    await portal.server.start()
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
        detector={
            "instance_id": "it-suspicion", "interval_s": INTERVAL_S, "retry_interval_s": RETRY_S,
            "timeout_s": TIMEOUT_S, "failure_threshold": FAILURE_THRESHOLD, "success_threshold": 2,
            "heartbeat_s": 600.0, "eo_targets": False,
            "targets": [{"id": TARGET_ID, "component": "ada_b2g", "url": portal.server.url("/msh")}],
        },
    )
    await ensure_topics(settings.kafka)
    try:
        async with Topic(kafka_bootstrap, settings.kafka.availability_topic, TARGET_ID) as topic, \
                running(create_app(settings)) as client:
            # A new target is decided at the retry pace too: up after two probes, well within the first interval.
            await eventually(lambda: topic.first(state="up", previous_state="unknown"), what="up published")

            portal.down = True
            suspect = await eventually(lambda: topic.first(suspect=True), what="the first failure published")
            # Every later failure is held by the portal: the target cannot be down yet, and is not.
            assert await state_of(client) == "up"
            assert topic.first(state="down") is None
            portal.release()
            down = await eventually(lambda: topic.first(state="down"), what="the outage published")
    finally:
        portal.release()
        await portal.server.close()

    assert suspect.type == EventType.AVAILABILITY_HEARTBEAT, "a type every consumer already accepts"
    data = suspect.data
    assert (data.state, data.ok, data.reason, data.previous_state) == ("up", False, "http_503", None)
    assert (data.suspect, data.streak, data.threshold) == (True, 1, FAILURE_THRESHOLD)
    remaining = FAILURE_THRESHOLD - 1
    assert data.verdict_by == data.observed_at + remaining * timedelta(seconds=RETRY_S + TIMEOUT_S)

    assert down.type == EventType.AVAILABILITY_CHANGED
    assert (down.data.previous_state, down.data.suspect, down.data.verdict_by) == ("up", False, None)
    assert (down.data.streak, down.data.threshold) == (FAILURE_THRESHOLD, FAILURE_THRESHOLD)
    assert topic.events.index(suspect) < topic.events.index(down)
    # The two retries came before the target's next regular slot: at the regular pace the outage would
    # have been confirmed two whole intervals after its first failure.
    assert down.data.observed_at - data.observed_at < timedelta(seconds=INTERVAL_S)
