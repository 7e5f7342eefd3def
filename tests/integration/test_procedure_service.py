"""The procedure service's decisions, persistence and outbox on SQLite and PostgreSQL, and its relay on Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.procedure import domain
from services.procedure.domain import VERDICT_GRACE
from services.procedure.handlers import ProcedureService
from services.procedure.migrate import upgrade
from services.procedure.models import AdvisoryRow, Base, OutboxRow, ProcedureRow, TimelineRow
from services.procedure.outbox import Outbox
from services.procedure.recorder import Recorder, active_view
from shared.config import KafkaSettings, ProcedureSettings, Settings
from shared.db import make_engine, session_factory
from shared.events import (
    AdvisoryData,
    AvailabilityData,
    CloudEvent,
    Component,
    ComponentState,
    EventType,
    ProcedureData,
    Scenario,
    parse_event,
)
from shared.kafka import Publisher, ensure_topics
from tests.support import eventually

pytestmark = pytest.mark.integration

UP, DOWN = ComponentState.UP, ComponentState.DOWN
ADA, NTP, EO = Component.ADA_B2G, Component.NTP, Component.EO_B2G
_RECORD: ConsumerRecord[bytes, bytes] = ConsumerRecord(
    topic="t", partition=0, offset=0, timestamp=0, timestamp_type=0, key=None, value=None, checksum=None,
    serialized_key_size=0, serialized_value_size=0, headers=(),
)


async def _drop_everything(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.execute(text("DROP TABLE IF EXISTS alembic_version"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'procedure.db'}")
    else:
        # Tests run one at a time: each starts from an empty schema, built by the migrations.
        engine = make_engine(request.getfixturevalue("postgres_url"))
        await _drop_everything(engine)
    await upgrade(engine)
    yield engine
    await engine.dispose()


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def _service(engine: AsyncEngine, clock: Callable[[], datetime], *, prefix: str = "luccs",
             bootstrap: str = "127.0.0.1:1", mode: str = "auto", outbox: Outbox | None = None,
             tick_s: float = 2.0) -> ProcedureService:
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix),
        procedure=ProcedureSettings(mode=mode, stale_after_s=30, tick_s=tick_s),
    )
    return ProcedureService(settings=settings, sessions=session_factory(engine), clock=clock, outbox=outbox)


def _seen(target: str, component: Component, state: ComponentState, at: datetime,
          eori: str | None = None) -> CloudEvent[AvailabilityData]:
    return CloudEvent[AvailabilityData](
        source="/tests", type=EventType.AVAILABILITY_CHANGED, subject=target,
        data=AvailabilityData(
            target_id=target, component=component, eori=eori, detector_instance="d1", state=state, since=at,
            observed_at=at, probe="http", ok=state == UP, reason="test",
        ),
    )


async def _feed(service: ProcedureService, *events: CloudEvent[AvailabilityData]) -> None:
    await service.on_availability_batch([(event, _RECORD) for event in events])


async def _outbox(sessions: async_sessionmaker[AsyncSession], topic_part: str = "procedures") -> list[bytes]:
    async with sessions() as session:
        rows = (await session.scalars(select(OutboxRow).order_by(OutboxRow.id))).all()
    return [r.payload or b"" for r in rows if f".{topic_part}." in r.topic]


async def _procedure_events(sessions: async_sessionmaker[AsyncSession]) -> list[CloudEvent[ProcedureData]]:
    return [parse_event(raw, ProcedureData) for raw in await _outbox(sessions)]


async def test_migrations_build_exactly_the_models(engine: AsyncEngine) -> None:
    def diff(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))

    async with engine.connect() as connection:
        assert await connection.run_sync(diff) == []
    await upgrade(engine)  # a second upgrade is a no-op


async def test_scenario_2_then_3_then_closed_each_once(engine: AsyncEngine) -> None:
    clock = Clock()
    service = _service(engine, clock)
    sessions = session_factory(engine)
    t0 = clock.now
    await _feed(service, _seen("ada", ADA, UP, t0), _seen("ntp", NTP, UP, t0))
    assert await _procedure_events(sessions) == []

    down = _seen("ada", ADA, DOWN, t0 + timedelta(seconds=1))
    await _feed(service, down)
    await _feed(service, down)  # redelivered: changes nothing
    later = t0 + timedelta(seconds=2)
    await _feed(service, _seen("ntp", NTP, DOWN, later))
    await _feed(service, _seen("ada", ADA, UP, later))
    await _feed(service, down)  # an older, out-of-order message must not reopen anything

    events = await _procedure_events(sessions)
    assert [e.type for e in events] == [
        EventType.PROCEDURE_OPENED, EventType.PROCEDURE_UPDATED, EventType.PROCEDURE_CLOSED
    ]
    assert [e.data.scenario for e in events] == ["ADA_B2G_UNAVAILABLE", "LUCCS_UNAVAILABLE", "LUCCS_UNAVAILABLE"]
    assert events[1].data.previous_scenario == "ADA_B2G_UNAVAILABLE"
    assert events[1].data.components == {ADA: DOWN, NTP: DOWN}
    assert len({e.data.procedure_id for e in events}) == 1
    assert "NTP" in events[2].data.reason
    assert events[0].data.evidence
    assert all(ev.detector_instance == "d1" for ev in events[0].data.evidence)

    async with sessions() as session:
        procedure = await session.get(ProcedureRow, events[0].data.procedure_id)
        assert procedure is not None
        assert procedure.state == "closed"
        assert procedure.closed_at is not None
        kinds = (await session.scalars(select(TimelineRow.kind).order_by(TimelineRow.id))).all()
        assert kinds == ["open", "update", "close"]
    # Closed with NTP still down: the Servicedesk gets the NTP-only advisory.
    advisories = [parse_event(raw, AdvisoryData) for raw in await _outbox(sessions, "advisories")]
    assert [(a.type, a.data.kind) for a in advisories] == [(EventType.ADVISORY_RAISED, "ntp_unavailable")]


async def test_a_batch_is_decided_once_and_state_survives_a_restart(engine: AsyncEngine) -> None:
    clock = Clock()
    t0 = clock.now
    service = _service(engine, clock)
    await _feed(service, _seen("ada", ADA, UP, t0), _seen("ntp", NTP, UP, t0),
                _seen("ada", ADA, DOWN, t0 + timedelta(seconds=1)))
    sessions = session_factory(engine)
    assert [e.type for e in await _procedure_events(sessions)] == [EventType.PROCEDURE_OPENED]

    restarted = _service(engine, clock)
    await restarted.load()
    assert restarted.views().national[ADA].state == DOWN
    await _feed(restarted, _seen("ada", ADA, DOWN, t0 + timedelta(seconds=1)))  # redelivered after restart
    await restarted.tick()
    assert [e.type for e in await _procedure_events(sessions)] == [EventType.PROCEDURE_OPENED]


async def test_confirm_mode_proposes_then_withdraws_on_recovery(engine: AsyncEngine) -> None:
    clock = Clock()
    t0 = clock.now
    service = _service(engine, clock, mode="confirm")
    sessions = session_factory(engine)
    await _feed(service, _seen("ntp", NTP, UP, t0), _seen("ada", ADA, DOWN, t0))
    await _feed(service, _seen("ada", ADA, UP, t0 + timedelta(seconds=1)))
    events = await _procedure_events(sessions)
    assert [e.type for e in events] == [EventType.PROCEDURE_PROPOSED, EventType.PROCEDURE_CLOSED]
    assert events[1].data.opened_at is None  # withdrawn: it never opened, so no EO is told


async def test_operator_confirms_a_proposal_and_declares_clash(engine: AsyncEngine) -> None:
    clock = Clock()
    service = _service(engine, clock, mode="confirm")
    sessions = session_factory(engine)
    await _feed(service, _seen("ntp", NTP, UP, clock.now), _seen("ada", ADA, DOWN, clock.now))
    async with sessions() as session:
        (proposed,) = (await session.scalars(select(ProcedureRow))).all()

    row, _ = await service.command(
        lambda active: domain.confirm(procedure=active_view(active[0]), reason="seen it"), actor="operator:x"
    )
    assert row is not None
    assert (row.id, row.state) == (proposed.id, "open")
    with pytest.raises(domain.Rejected):
        await service.command(
            lambda active: domain.declare(scenario=Scenario.LUCCS_UNAVAILABLE, eori=None, reason="x",
                                          active=[active_view(r) for r in active]),
            actor="operator:x",
        )
    assert [e.type for e in await _procedure_events(sessions)] == [
        EventType.PROCEDURE_PROPOSED, EventType.PROCEDURE_OPENED
    ]


async def test_eo_endpoint_outage_opens_scenario_1_beside_the_national_one(engine: AsyncEngine) -> None:
    clock = Clock()
    t0 = clock.now
    service = _service(engine, clock)
    sessions = session_factory(engine)
    await _feed(service, _seen("ada", ADA, DOWN, t0), _seen("ntp", NTP, UP, t0),
                _seen("eo:LU1", EO, DOWN, t0, eori="LU1"), _seen("eo:LU2", EO, UP, t0, eori="LU2"))
    await _feed(service, _seen("eo:LU1", EO, UP, t0 + timedelta(seconds=1), eori="LU1"))
    events = await _procedure_events(sessions)
    assert [(e.type, e.data.scenario, e.data.eori) for e in events] == [
        (EventType.PROCEDURE_OPENED, "ADA_B2G_UNAVAILABLE", None),
        (EventType.PROCEDURE_OPENED, "EO_B2G_UNAVAILABLE", "LU1"),
        (EventType.PROCEDURE_CLOSED, "EO_B2G_UNAVAILABLE", "LU1"),
    ]
    assert events[1].data.components[NTP] == UP  # the notifier may advise NTP


async def test_silence_makes_components_unknown_and_raises_blind_advisory_only(engine: AsyncEngine) -> None:
    clock = Clock()
    service = _service(engine, clock)
    sessions = session_factory(engine)
    await _feed(service, _seen("ada", ADA, DOWN, clock.now), _seen("ntp", NTP, UP, clock.now))
    clock.advance(31)  # past stale_after_s: nobody sees anything any more
    await service.tick()
    assert service.views().national[ADA].state == ComponentState.UNKNOWN
    procedures = await _procedure_events(sessions)
    assert [e.type for e in procedures] == [EventType.PROCEDURE_OPENED]  # unknown closes nothing
    async with sessions() as session:
        kinds = (await session.scalars(select(AdvisoryRow.kind).where(AdvisoryRow.active.is_(True)))).all()
    assert kinds == ["monitoring_blind"]


async def test_database_refuses_a_second_active_national_procedure(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    now = datetime.now(UTC)

    def row() -> ProcedureRow:
        return ProcedureRow(
            id=str(uuid.uuid4()), scenario="ADA_B2G_UNAVAILABLE", scope="national", eori=None, state="open",
            origin="detected", auto_close=True, reason="test", created_at=now, opened_at=now, closed_at=None,
            updated_at=now,
        )

    async with sessions.begin() as session:
        session.add(row())
    with pytest.raises(IntegrityError):
        async with sessions.begin() as session:
            session.add(row())


async def test_outbox_relay_publishes_in_order_and_marks_rows(
    engine: AsyncEngine, kafka_bootstrap: str, topic_prefix: str
) -> None:
    clock = Clock()
    service = _service(engine, clock, prefix=topic_prefix, bootstrap=kafka_bootstrap)
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    await ensure_topics(settings)
    sessions = session_factory(engine)
    t0 = clock.now
    await _feed(service, _seen("ntp", NTP, UP, t0), _seen("ada", ADA, DOWN, t0))
    await _feed(service, _seen("ada", ADA, UP, t0 + timedelta(seconds=1)))
    expected = [e.id for e in await _procedure_events(sessions)]
    assert len(expected) == 2

    publisher = Publisher(settings, client_id="test")
    await publisher.start()
    outbox = Outbox(sessions, publisher, poll_s=0.1)
    relay = asyncio.create_task(outbox.run())
    consumer = AIOKafkaConsumer(settings.procedures_topic, bootstrap_servers=kafka_bootstrap,
                                auto_offset_reset="earliest")
    await consumer.start()
    received: list[str] = []
    try:
        async with asyncio.timeout(20):
            while len(received) < 2:
                batch = await consumer.getmany(timeout_ms=200)
                received += [parse_event(r.value, ProcedureData).id for rs in batch.values() for r in rs if r.value]
            while await outbox.backlog():
                await asyncio.sleep(0.05)
    finally:
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay
        await consumer.stop()
        await publisher.stop()
    assert received == expected


async def test_a_decision_records_a_bounded_evidence(engine: AsyncEngine) -> None:
    clock = Clock()
    t0 = clock.now
    service = _service(engine, clock)
    sessions = session_factory(engine)
    ntp = [_seen(f"ntp{n}", NTP, UP, t0 + timedelta(milliseconds=n)) for n in range(40)]
    await _feed(service, *ntp, _seen("ada", ADA, DOWN, t0))
    (opened,) = await _procedure_events(sessions)
    by_component = {c: [e for e in opened.data.evidence if e.component == c] for c in (ADA, NTP)}
    assert [e.target_id for e in by_component[ADA]] == ["ada"]
    # The newest of the forty NTP targets, not all of them: events and timeline stay small.
    assert [e.target_id for e in by_component[NTP]] == [f"ntp{n}" for n in range(39, 39 - domain.MAX_EVIDENCE, -1)]


async def test_the_next_decision_sees_what_an_operator_command_did(engine: AsyncEngine) -> None:
    clock = Clock()
    t0 = clock.now
    service = _service(engine, clock)
    sessions = session_factory(engine)
    await _feed(service, _seen("ntp", NTP, UP, t0), _seen("ada", ADA, UP, t0))
    # Declared by hand while everything is up, closing by itself once the system sees it so.
    row, _ = await service.command(
        lambda active: domain.declare(scenario=Scenario.ADA_B2G_UNAVAILABLE, eori=None, reason="by hand",
                                      active=[active_view(r) for r in active]),
        actor="operator:x",
    )
    assert row is not None
    await _feed(service, _seen("ada", ADA, UP, t0 + timedelta(seconds=1)))
    events = await _procedure_events(sessions)
    assert [(e.type, e.data.procedure_id) for e in events] == [
        (EventType.PROCEDURE_OPENED, row.id), (EventType.PROCEDURE_CLOSED, row.id)
    ]


async def test_a_failed_decision_is_decided_again_on_redelivery(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    t0 = clock.now
    service = _service(engine, clock)
    sessions = session_factory(engine)
    batch = (_seen("ntp", NTP, UP, t0), _seen("ada", ADA, DOWN, t0))
    failing = True
    real_apply = Recorder.apply

    async def apply_once_failing(self: Recorder, *args: Any, **kwargs: Any) -> ProcedureRow:
        nonlocal failing
        if failing:
            failing = False
            raise ConnectionError("database gone mid-transaction")
        return await real_apply(self, *args, **kwargs)

    monkeypatch.setattr(Recorder, "apply", apply_once_failing)
    with pytest.raises(ConnectionError):
        await _feed(service, *batch)
    assert await _procedure_events(sessions) == []
    assert service.views().national[ADA].state == ComponentState.UNKNOWN  # the status shows what was decided
    await _feed(service, *batch)  # the consumer redelivers the poll
    await _feed(service, _seen("ada", ADA, DOWN, t0 + timedelta(seconds=1)))
    assert [e.type for e in await _procedure_events(sessions)] == [EventType.PROCEDURE_OPENED]


class FlakyPublisher(Publisher):
    """Publishes to the real broker, slowly, except that it refuses the first ``failures`` publications."""

    def __init__(self, settings: KafkaSettings, *, failures: int, delay_s: float = 0.0) -> None:
        super().__init__(settings, client_id="test-flaky")
        self.failures = failures
        self.delay_s = delay_s

    async def publish_many(self, messages: Sequence[tuple[str, str | None, bytes | None]]) -> None:
        await asyncio.sleep(self.delay_s)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker away")
        await super().publish_many(messages)


@contextlib.asynccontextmanager
async def _publishing(
    engine: AsyncEngine, kafka_bootstrap: str, topic_prefix: str, *, failures: int = 0, delay_s: float = 0.0,
    poll_s: float = 30,
) -> AsyncIterator[tuple[ProcedureService, FlakyPublisher]]:
    """A procedure service whose outbox publishes to the real broker, running; nothing left by a previous run."""
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    await ensure_topics(settings)
    publisher = FlakyPublisher(settings, failures=failures, delay_s=delay_s)
    await publisher.start()
    outbox = Outbox(session_factory(engine), publisher, poll_s=poll_s)
    service = _service(engine, Clock(), prefix=topic_prefix, bootstrap=kafka_bootstrap, outbox=outbox)
    assert await outbox.drain() == 0  # from now on the queue publishes on its own
    task = asyncio.create_task(outbox.run())
    try:
        yield service, publisher
        async with asyncio.timeout(10):
            while await outbox.backlog():
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await publisher.stop()


async def _on_the_topic(kafka_bootstrap: str, topic_prefix: str, count: int) -> list[bytes]:
    topic = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix).procedures_topic
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(20):
            while len(values) < count:
                batch = await consumer.getmany(timeout_ms=200)
                values += [r.value for rs in batch.values() for r in rs if r.value is not None]
        await asyncio.sleep(0.5)  # room for a duplicate to show up
        batch = await consumer.getmany(timeout_ms=200)
        values += [r.value for rs in batch.values() for r in rs if r.value is not None]
    finally:
        await consumer.stop()
    return values


async def test_decisions_are_published_without_the_relay_poll_and_marked(
    engine: AsyncEngine, kafka_bootstrap: str, topic_prefix: str
) -> None:
    t0 = datetime.now(UTC)
    async with _publishing(engine, kafka_bootstrap, topic_prefix) as (service, _):
        await _feed(service, _seen("ntp", NTP, UP, t0), _seen("ada", ADA, DOWN, t0))
    recorded = await _outbox(session_factory(engine))
    assert [parse_event(raw, ProcedureData).type for raw in recorded] == [EventType.PROCEDURE_OPENED]
    assert await _on_the_topic(kafka_bootstrap, topic_prefix, 1) == recorded


async def test_after_a_failed_publication_no_event_overtakes_an_older_one(
    engine: AsyncEngine, kafka_bootstrap: str, topic_prefix: str
) -> None:
    t0 = datetime.now(UTC)
    # Slow, and refused for the first two tries, while decisions keep coming.
    async with _publishing(engine, kafka_bootstrap, topic_prefix, failures=2, delay_s=0.05, poll_s=0.05) as (
        service, publisher
    ):
        # Opened, updated to scenario 3, back to 2, closed, opened again.
        steps = [(ADA, DOWN), (NTP, DOWN), (NTP, UP), (ADA, UP), (ADA, DOWN)]
        await _feed(service, _seen("ntp", NTP, UP, t0))
        for n, (component, state) in enumerate(steps, start=1):
            await _feed(service, _seen(component.value, component, state, t0 + timedelta(seconds=n)))
            await asyncio.sleep(0.03)
    assert publisher.failures == 0
    recorded = await _outbox(session_factory(engine))
    assert len(recorded) == 5
    assert await _on_the_topic(kafka_bootstrap, topic_prefix, 5) == recorded  # each once, in the order decided


# --- one outage, one story: a decision waits for a verdict on its way ---------------------------------------


def _suspect(target: str, component: Component, state: ComponentState, at: datetime,
             verdict_in_s: float) -> CloudEvent[AvailabilityData]:
    event = _seen(target, component, state, at)
    return event.model_copy(update={
        "type": EventType.AVAILABILITY_HEARTBEAT,
        "data": event.data.model_copy(update={
            "suspect": True, "ok": state != UP, "streak": 1, "threshold": 3,
            "verdict_by": at + timedelta(seconds=verdict_in_s),
        }),
    })


async def test_a_joint_failure_opens_scenario_3_directly_and_remembers_the_suspicion(engine: AsyncEngine) -> None:
    clock = Clock()
    service = _service(engine, clock)
    sessions = session_factory(engine)
    t0 = clock.now
    await _feed(service, _seen("ada", ADA, UP, t0), _seen("ntp", NTP, UP, t0))
    await _feed(service, _suspect("ntp", NTP, UP, clock.advance(0.5), verdict_in_s=2))
    await _feed(service, _seen("ada", ADA, DOWN, clock.advance(0.5)))
    assert await _procedure_events(sessions) == []
    assert service.recheck_at == t0 + timedelta(seconds=2.5) + VERDICT_GRACE

    restarted = _service(engine, clock)  # a restart (or a standby) knows NTP's verdict is on its way
    await restarted.load()
    await restarted.tick()
    assert await _procedure_events(sessions) == []

    await _feed(restarted, _seen("ntp", NTP, DOWN, clock.advance(1)))
    events = await _procedure_events(sessions)
    assert [(e.type, e.data.scenario) for e in events] == [(EventType.PROCEDURE_OPENED, Scenario.LUCCS_UNAVAILABLE)]
    assert not any(e.suspect for e in events[0].data.evidence)  # decided on verdicts, not on suspicion
    assert restarted.recheck_at is None


async def test_a_suspect_ntp_that_recovers_opens_scenario_2_when_its_verdict_is_due(engine: AsyncEngine) -> None:
    # The real clock and the service's own tick loop, with a periodic tick far away: only the wait's end wakes it.
    service = _service(engine, lambda: datetime.now(UTC), tick_s=600)
    sessions = session_factory(engine)
    t0 = datetime.now(UTC)
    await _feed(service, _seen("ada", ADA, UP, t0), _seen("ntp", NTP, UP, t0))
    ticks = asyncio.create_task(service.run_ticks())
    try:
        await _feed(service, _suspect("ntp", NTP, UP, datetime.now(UTC), verdict_in_s=0.5),
                    _seen("ada", ADA, DOWN, datetime.now(UTC)))
        assert await _procedure_events(sessions) == []
        await eventually(lambda: _opened(sessions), what="the procedure opened once the verdict was due")
    finally:
        ticks.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticks
    events = await _procedure_events(sessions)
    assert [(e.type, e.data.scenario) for e in events] == [(EventType.PROCEDURE_OPENED, Scenario.ADA_B2G_UNAVAILABLE)]
    assert datetime.now(UTC) >= t0 + timedelta(seconds=0.5) + VERDICT_GRACE


async def _opened(sessions: async_sessionmaker[AsyncSession]) -> bool:
    return bool(await _procedure_events(sessions))
