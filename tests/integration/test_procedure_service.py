"""The procedure service's decisions, persistence and outbox on SQLite and PostgreSQL, and its relay on Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.procedure.handlers import ProcedureService
from services.procedure.models import Base, OutboxRow, ProcedureRow, TimelineRow
from shared.config import KafkaSettings, Settings
from shared.db import make_engine, session_factory
from shared.events import (
    AvailabilityData,
    CloudEvent,
    Component,
    ComponentState,
    EventType,
    ProcedureData,
    parse_event,
)
from shared.kafka import Publisher, ensure_topics

pytestmark = pytest.mark.integration

_RECORD: ConsumerRecord[bytes, bytes] = ConsumerRecord(
    topic="t", partition=0, offset=0, timestamp=0, timestamp_type=0, key=None, value=None, checksum=None,
    serialized_key_size=0, serialized_value_size=0, headers=(),
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'procedure.db'}")
    else:
        # Tests run one at a time: each starts from freshly created tables.
        engine = make_engine(request.getfixturevalue("postgres_url"))
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.run_sync(Base.metadata.create_all)
    yield engine
    await engine.dispose()


def _settings(prefix: str = "luccs", bootstrap: str = "127.0.0.1:1") -> Settings:
    return Settings(kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix))


def _seen(target: str, component: Component, state: ComponentState, at: datetime) -> CloudEvent[AvailabilityData]:
    return CloudEvent[AvailabilityData](
        source="/tests",
        type=EventType.AVAILABILITY_CHANGED,
        subject=target,
        data=AvailabilityData(
            target_id=target, component=component, detector_instance="d1", state=state, since=at,
            observed_at=at, probe="http", ok=state == ComponentState.UP, reason="test",
        ),
    )


async def _outbox(sessions: async_sessionmaker[AsyncSession]) -> list[CloudEvent[ProcedureData]]:
    async with sessions() as session:
        rows = (await session.scalars(select(OutboxRow).order_by(OutboxRow.id))).all()
    return [parse_event(r.payload, ProcedureData) for r in rows]


async def test_scenario_2_then_3_then_closed_each_once(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    service = ProcedureService(settings=_settings(), sessions=sessions)
    t0 = datetime.now(UTC)
    await service.on_availability(_seen("ada", Component.ADA_B2G, ComponentState.UP, t0), _RECORD)
    await service.on_availability(_seen("ntp", Component.NTP, ComponentState.UP, t0), _RECORD)
    assert await _outbox(sessions) == []

    down = _seen("ada", Component.ADA_B2G, ComponentState.DOWN, t0 + timedelta(seconds=1))
    await service.on_availability(down, _RECORD)
    await service.on_availability(down, _RECORD)  # redelivered: changes nothing
    later = t0 + timedelta(seconds=2)
    await service.on_availability(_seen("ntp", Component.NTP, ComponentState.DOWN, later), _RECORD)
    await service.on_availability(_seen("ada", Component.ADA_B2G, ComponentState.UP, later), _RECORD)
    # An older, out-of-order message must not reopen anything.
    await service.on_availability(down, _RECORD)

    events = await _outbox(sessions)
    assert [e.type for e in events] == [
        EventType.PROCEDURE_OPENED, EventType.PROCEDURE_UPDATED, EventType.PROCEDURE_CLOSED
    ]
    assert [e.data.scenario for e in events] == ["ADA_B2G_UNAVAILABLE", "LUCCS_UNAVAILABLE", "LUCCS_UNAVAILABLE"]
    assert events[1].data.previous_scenario == "ADA_B2G_UNAVAILABLE"
    assert len({e.data.procedure_id for e in events}) == 1
    assert "NTP" in events[2].data.reason  # closed with NTP still down: advisory wording
    assert events[0].data.evidence and all(ev.detector_instance == "d1" for ev in events[0].data.evidence)

    async with sessions() as session:
        procedure = await session.get(ProcedureRow, events[0].data.procedure_id)
        assert procedure is not None and procedure.state == "closed" and procedure.closed_at is not None
        kinds = (await session.scalars(select(TimelineRow.kind).order_by(TimelineRow.id))).all()
        assert kinds == ["open", "update", "close"]


async def test_database_refuses_a_second_active_national_procedure(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    now = datetime.now(UTC)

    def row() -> ProcedureRow:
        return ProcedureRow(
            id=str(uuid.uuid4()), scenario="ADA_B2G_UNAVAILABLE", scope="national", eori=None, state="open",
            reason="test", opened_at=now, closed_at=None, updated_at=now,
        )

    async with sessions.begin() as session:
        session.add(row())
    with pytest.raises(IntegrityError):
        async with sessions.begin() as session:
            session.add(row())


async def test_outbox_relay_publishes_in_order_and_marks_rows(
    engine: AsyncEngine, kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = _settings(topic_prefix, kafka_bootstrap)
    await ensure_topics(settings.kafka)
    sessions = session_factory(engine)
    service = ProcedureService(settings=settings, sessions=sessions)
    t0 = datetime.now(UTC)
    await service.on_availability(_seen("ntp", Component.NTP, ComponentState.UP, t0), _RECORD)
    await service.on_availability(_seen("ada", Component.ADA_B2G, ComponentState.DOWN, t0), _RECORD)
    later = t0 + timedelta(seconds=1)
    await service.on_availability(_seen("ada", Component.ADA_B2G, ComponentState.UP, later), _RECORD)
    expected = [e.id for e in await _outbox(sessions)]
    assert len(expected) == 2

    publisher = Publisher(settings.kafka, client_id="test")
    await publisher.start()
    relay = asyncio.create_task(service.relay_outbox(publisher, poll_s=0.1))
    consumer = AIOKafkaConsumer(
        settings.kafka.procedures_topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    received: list[str] = []
    try:
        async with asyncio.timeout(20):
            while len(received) < 2:
                batch = await consumer.getmany(timeout_ms=200)
                received += [parse_event(r.value, ProcedureData).id for rs in batch.values() for r in rs if r.value]
            while await service.outbox_backlog():
                await asyncio.sleep(0.05)
    finally:
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay
        await consumer.stop()
        await publisher.stop()
    assert received == expected
