"""One subject's procedures are read in the order decided, by every consumer, over the real broker.

The procedures topic has several partitions. Keyed by procedure id, a national procedure closed and the
next one opened could land on two partitions, and a consumer catching up (a restarted notifier) could read
the new procedure's ``opened`` before the old one's ``closed``: an EO's last notice would say "back to
normal" while a procedure is open. Keyed by subject (``national``, or the EORI for scenario 1) they share a
partition. Here the procedure service decides open, close, open again and a scenario 1 beside them; a
notifier that starts afterwards replays the topic from the beginning and plans the notices in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy import select

from services.notifier.app import NotifierParts
from services.notifier.models import DeliveryRow, NoticeRow
from services.procedure.handlers import ProcedureService
from services.procedure.migrate import upgrade
from services.procedure.outbox import Outbox
from shared.config import KafkaSettings, ProcedureSettings, Settings
from shared.db import make_engine, session_factory
from shared.events import (
    Component,
    ComponentState,
    EventType,
    Language,
    ProcedureData,
    parse_event,
)
from shared.kafka import EventConsumer, Publisher, ensure_topics
from tests.integration.test_notifier_delivery import notifier_settings, register, running_notifier
from tests.integration.test_procedure_service import _RECORD, _seen
from tests.support import WebhookReceiver, eventually

pytestmark = pytest.mark.integration

UP, DOWN = ComponentState.UP, ComponentState.DOWN
ADA, NTP, EO_B2G = Component.ADA_B2G, Component.NTP, Component.EO_B2G
EORI = "LU00000000000042"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hooks = WebhookReceiver().start()
    yield hooks
    hooks.stop()


@contextlib.asynccontextmanager
async def _procedure_service(kafka: KafkaSettings, tmp_path: Path) -> AsyncIterator[ProcedureService]:
    """The procedure service with its outbox publishing to the real broker."""
    engine = make_engine(f"sqlite:///{tmp_path / 'procedure.db'}")
    await upgrade(engine)
    publisher = Publisher(kafka, client_id="test-order")
    await publisher.start()
    outbox = Outbox(session_factory(engine), publisher, poll_s=0.05)
    service = ProcedureService(
        settings=Settings(kafka=kafka, procedure=ProcedureSettings(stale_after_s=30)),
        sessions=session_factory(engine), outbox=outbox,
    )
    task = asyncio.create_task(outbox.run())
    try:
        yield service
        await eventually(lambda: _drained(outbox), what="the outbox to publish every decision")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await publisher.stop()
        await engine.dispose()


async def _drained(outbox: Outbox) -> bool:
    return await outbox.backlog() == 0


async def _decide_close_and_reopen(service: ProcedureService) -> None:
    t0 = datetime.now(UTC) - timedelta(seconds=10)
    steps = [
        [_seen("ada", ADA, UP, t0), _seen("ntp", NTP, UP, t0)],
        [_seen("ada", ADA, DOWN, t0 + timedelta(seconds=1))],                    # national #1 opened
        [_seen("eo", EO_B2G, DOWN, t0 + timedelta(seconds=2), eori=EORI)],       # scenario 1 beside it
        [_seen("ada", ADA, UP, t0 + timedelta(seconds=3))],                      # national #1 closed
        [_seen("eo", EO_B2G, UP, t0 + timedelta(seconds=4), eori=EORI)],         # scenario 1 closed
        [_seen("ada", ADA, DOWN, t0 + timedelta(seconds=5))],                    # national #2 opened
    ]
    for batch in steps:
        await service.on_availability_batch([(event, _RECORD) for event in batch])


async def _topic(kafka: KafkaSettings, count: int) -> list[tuple[bytes | None, bytes]]:
    consumer = AIOKafkaConsumer(kafka.procedures_topic, bootstrap_servers=kafka.bootstrap_servers,
                                auto_offset_reset="earliest")
    await consumer.start()
    found: list[tuple[bytes | None, bytes]] = []
    try:
        async with asyncio.timeout(30):
            while len(found) < count:
                batch = await consumer.getmany(timeout_ms=200)
                found += [(r.key, r.value) for rs in batch.values() for r in rs if r.value is not None]
    finally:
        await consumer.stop()
    return found


async def test_procedure_events_are_keyed_by_their_subject(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    assert kafka.partitions > 1  # else any keying would keep the order
    await ensure_topics(kafka)
    async with _procedure_service(kafka, tmp_path) as service:
        await _decide_close_and_reopen(service)
    records = await _topic(kafka, 5)
    keyed = [(key, parse_event(value, ProcedureData)) for key, value in records]
    for key, event in keyed:
        assert key == (event.data.eori or "national").encode()
    national = [e for k, e in keyed if k == b"national"]
    assert [(e.type, e.data.procedure_id) for e in national] == [
        (EventType.PROCEDURE_OPENED, national[0].data.procedure_id),
        (EventType.PROCEDURE_CLOSED, national[0].data.procedure_id),
        (EventType.PROCEDURE_OPENED, national[2].data.procedure_id),
    ]
    assert national[0].data.procedure_id != national[2].data.procedure_id


async def test_a_notifier_replaying_the_topic_plans_the_notices_in_the_order_decided(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    await ensure_topics(kafka)
    async with _procedure_service(kafka, tmp_path) as service:
        await _decide_close_and_reopen(service)
    decided = [parse_event(value, ProcedureData) for _key, value in await _topic(kafka, 5)]
    national_ids = {e.data.procedure_id for e in decided if e.data.eori is None}

    # Only now does a notifier start: it replays the whole topic, as a restarted one catching up does.
    settings = notifier_settings(kafka_bootstrap, topic_prefix, f"sqlite:///{tmp_path / 'notifier.db'}")
    async with running_notifier(settings) as parts:
        await register(parts, EORI, receiver.url(f"/{EORI}"), Language.EN)
        deadletters = Publisher(kafka, client_id="test-order-deadletters")
        await deadletters.start()
        consumer = EventConsumer(
            settings=kafka, topic=kafka.procedures_topic, group_id=f"{topic_prefix}.notifier",
            data_model=ProcedureData, handler=parts.planner.on_procedure, publisher=deadletters,
        )
        task = asyncio.create_task(consumer.run())
        try:
            await eventually(lambda: _planned(parts, 5), what="the five procedure events planned")
            await eventually(lambda: len(receiver.received) >= 5, what="five webhooks received")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await deadletters.stop()
        async with parts.sessions() as session:
            rows = (await session.execute(
                select(DeliveryRow.event_type, DeliveryRow.procedure_id, NoticeRow.message)
                .join(NoticeRow, NoticeRow.id == DeliveryRow.notice_id)
                .where(DeliveryRow.eori == EORI, DeliveryRow.channel == "webhook")
                .order_by(DeliveryRow.created_at, DeliveryRow.id)
            )).all()
    national = [r for r in rows if r.procedure_id in national_ids]
    assert [r.event_type for r in national] == [
        EventType.PROCEDURE_OPENED, EventType.PROCEDURE_CLOSED, EventType.PROCEDURE_OPENED,
    ]
    first, closed, reopened = national
    assert first.procedure_id == closed.procedure_id != reopened.procedure_id
    # The newest notice is the open procedure's: it tells the EO to lodge in NTP.
    assert "NTP" in reopened.message
    assert sorted(hook.path for hook in receiver.received) == [f"/{EORI}"] * 5


async def _planned(parts: NotifierParts, count: int) -> bool:
    async with parts.sessions() as session:
        rows = (await session.scalars(select(DeliveryRow.event_id).where(DeliveryRow.eori == EORI))).all()
    return len(set(rows)) >= count
