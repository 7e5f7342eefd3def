"""The detector's saved state on real SQLite files and a real PostgreSQL server, and across restarts of the
detector app over the real broker: state, since and counters resume; a change the broker never acknowledged
is published after the restart, once; targets no longer configured or registered are dropped.

Every PostgreSQL test gets a database of its own (and drops it), so it neither sees nor disturbs others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy import Connection, Float, insert, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import TypeEngine

from services.detector.app import create_app
from services.detector.domain import ProbeResult, TargetStatus, Transition
from services.detector.metrics import DetectorMetrics
from services.detector.migrate import VERSION_TABLE, alembic_config, current_revision, upgrade
from services.detector.models import Base, TargetStateRow
from services.detector.probes import Prober
from services.detector.service import Detector, SavedTarget
from services.detector.store import TargetStore, WriteBehind
from services.detector.targets import Target, from_settings
from services.procedure import migrate as procedure_migrate
from shared.config import ApiSettings, DetectorSettings, KafkaSettings, Settings
from shared.db import make_engine, session_factory
from shared.events import AvailabilityData, CloudEvent, Component, ComponentState, EventType, parse_event
from shared.kafka import ensure_topics
from tests.integration.test_detector_registry import publish_eo
from tests.support import BUREAU, BUREAU_TOKEN, eventually, free_port, pg_database

pytestmark = pytest.mark.integration

UP, DOWN, UNKNOWN = ComponentState.UP, ComponentState.DOWN, ComponentState.UNKNOWN
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
PROCEDURE_HEAD = ScriptDirectory.from_config(procedure_migrate.alembic_config()).get_current_head()
INSTANCE = "it-persist"
EORI, GONE_EORI = "LU10000000077", "LU10000000088"


# --- harness ------------------------------------------------------------------------------------------------




@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'detector.db'}"
        return
    async with pg_database(request.getfixturevalue("postgres_url"), "luccs_detector") as url:
        yield url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url)
    await upgrade(engine)
    yield engine
    await engine.dispose()


def detector_settings(url: str, **overrides: Any) -> DetectorSettings:
    values: dict[str, Any] = {
        "instance_id": INSTANCE, "interval_s": 1.0, "timeout_s": 0.5, "failure_threshold": 3,
        "success_threshold": 2, "heartbeat_s": 30.0, "eo_targets": False,
        "targets": [{"id": "ada", "component": "ada_b2g", "url": url}],
    }
    values.update(overrides)
    return DetectorSettings(**values)


class Broker:
    """Stands in for an unreachable broker before the restart."""

    async def send(self, _target_id: str, _event: CloudEvent[AvailabilityData]) -> None:
        raise ConnectionError("broker unreachable")


def detector(settings: DetectorSettings) -> Detector:
    return Detector(settings=settings, prober=Prober(), send=Broker().send,
                    metrics=DetectorMetrics.create(CollectorRegistry()))


def configured(detector: Detector) -> Target:
    target = from_settings(detector._settings.targets[0], detector._settings)
    detector.put(target)
    return target


def result(ok: bool, at: datetime, **extra: Any) -> ProbeResult:
    return ProbeResult(ok=ok, reason="ok" if ok else "refused", finished_at=at, latency_ms=12.5, **extra)


async def rows(engine: AsyncEngine, instance: str = INSTANCE) -> dict[str, TargetStateRow]:
    async with session_factory(engine)() as session:
        found = (await session.scalars(select(TargetStateRow).where(TargetStateRow.instance_id == instance))).all()
    return {row.target_id: row for row in found}




@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://detector", headers=BUREAU) as client:
            yield client


async def availability(kafka: KafkaSettings) -> list[tuple[str, AvailabilityData]]:
    """Every availability event on the topic so far (type and data), in order per target."""
    consumer = AIOKafkaConsumer(kafka.availability_topic, bootstrap_servers=kafka.bootstrap_servers,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    events: list[tuple[str, AvailabilityData]] = []
    try:
        empty = 0
        while empty < 3:  # bounded: a few empty polls once the end is reached
            batch = await consumer.getmany(timeout_ms=300)
            empty = 0 if batch else empty + 1
            for records in batch.values():
                for record in records:
                    assert record.value is not None
                    event = parse_event(record.value, AvailabilityData)
                    events.append((event.type, event.data))
    finally:
        await consumer.stop()
    return events


def changes(events: list[tuple[str, AvailabilityData]], target_id: str) -> list[AvailabilityData]:
    return [data for kind, data in events if data.target_id == target_id and kind == EventType.AVAILABILITY_CHANGED]


def at(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


# --- the schema ---------------------------------------------------------------------------------------------


async def test_the_migration_builds_the_models_in_a_database_shared_with_the_procedure_service(
    engine: AsyncEngine,
) -> None:
    await procedure_migrate.upgrade(engine)
    await upgrade(engine)  # again: a no-op
    assert await current_revision(engine) == HEAD

    def check(connection: Connection) -> None:
        def same_float(_c: Any, _f: Any, _w: Any, found: TypeEngine[Any], wanted: TypeEngine[Any]) -> bool | None:
            return False if isinstance(found, Float) and isinstance(wanted, Float) else None

        context = MigrationContext.configure(connection, opts={
            "compare_type": same_float, "version_table": VERSION_TABLE,
            "include_name": lambda name, type_, _p: type_ != "table" or name in Base.metadata.tables,
        })
        assert compare_metadata(context, Base.metadata) == []
        tables = set(inspect(connection).get_table_names())
        mine = tables - {t for t in tables if not t.startswith("detector_")}
        assert mine == set(Base.metadata.tables)
        versions = {table: connection.execute(text(f"SELECT version_num FROM {table}")).scalars().all()
                    for table in (VERSION_TABLE, "alembic_version")}
        assert versions == {VERSION_TABLE: [HEAD], "alembic_version": [PROCEDURE_HEAD]}, "each its own history"

    async with engine.connect() as connection:
        await connection.run_sync(check)


async def test_the_services_upgrades_started_together_in_one_process_each_build_their_own(tmp_path: Path) -> None:
    """As ``luccs-fallback all`` does: Alembic's globals would mix the runs up without the shared lock."""
    from services.notifier import migrate as notifier_migrate

    engines = {name: make_engine(f"sqlite:///{tmp_path / name}.db") for name in ("detector", "procedure", "notifier")}
    try:
        await asyncio.gather(upgrade(engines["detector"]), procedure_migrate.upgrade(engines["procedure"]),
                             notifier_migrate.upgrade(engines["notifier"]))

        def tables(connection: Connection) -> set[str]:
            return set(inspect(connection).get_table_names())

        found = {}
        for name, engine in engines.items():
            async with engine.connect() as connection:
                found[name] = await connection.run_sync(tables)
    finally:
        for engine in engines.values():
            await engine.dispose()
    assert found["detector"] == {*Base.metadata.tables, VERSION_TABLE}
    assert not any(t.startswith("detector_") for t in found["procedure"] | found["notifier"])


async def test_saved_targets_come_back_as_they_were_saved(engine: AsyncEngine) -> None:
    at = datetime(2026, 11, 27, 9, 0, 0, 123000, tzinfo=UTC)
    last = ProbeResult(ok=True, reason="ebms_error", finished_at=at, latency_ms=812.25, detail="EBMS:0103 policy",
                       cert_expires_at=at + timedelta(days=12), ebms_error="EBMS:0103")
    saved = [
        SavedTarget(target_id="ada", component=Component.ADA_B2G, probe="as4", url="https://b2g.lu/as4",
                    status=TargetStatus(state=UP, since=at - timedelta(hours=3), consecutive_failures=0,
                                        consecutive_successes=7, last=last, degraded=True, consecutive_slow=4,
                                        consecutive_fast=0),
                    unpublished=Transition(DOWN, UP, at - timedelta(hours=3)), superseded=2, cert_warning=14),
        SavedTarget(target_id=f"eo:{EORI}", component=Component.EO_B2G, probe="as4", url="https://eo.lu/msh",
                    status=TargetStatus(state=UNKNOWN, consecutive_failures=1,
                                        last=ProbeResult(False, "timeout", at, None))),
        SavedTarget(target_id="ntp", component=Component.NTP, probe="tcp", url="ntp.lu:123",
                    status=TargetStatus(state=DOWN, since=at - timedelta(days=2), consecutive_successes=1,
                                        last=ProbeResult(True, "ok", at, 3.5), unconfirmed=True),
                    unpublished=Transition(UP, DOWN, at - timedelta(days=2))),  # held until confirmed
    ]
    store = TargetStore(session_factory(engine), instance_id=INSTANCE)
    other = TargetStore(session_factory(engine), instance_id="another-vantage-point")
    await store.save(saved, [])
    await other.save(saved[:1], [])
    assert sorted(await store.load(), key=lambda s: s.target_id) == saved
    await store.save([], ["ada"])
    assert [s.target_id for s in await store.load()] == [f"eo:{EORI}", "ntp"]
    assert [s.target_id for s in await other.load()] == ["ada"], "another instance's rows are its own"


# --- write-behind ---------------------------------------------------------------------------------------


async def test_counters_are_written_behind_and_a_state_change_at_once(engine: AsyncEngine) -> None:
    """With a one-minute batch interval, only the state change can be saved within the test's second."""
    d = detector(detector_settings("http://127.0.0.1:9/health"))
    target = configured(d)
    write_behind = WriteBehind(detector=d, store=TargetStore(session_factory(engine), instance_id=INSTANCE),
                               interval_s=60)
    now = datetime.now(UTC)
    loop = asyncio.create_task(write_behind.run())
    try:
        await asyncio.sleep(0.1)
        d.record(target, result(False, now))
        d.record(target, result(False, now + timedelta(seconds=1)))
        await asyncio.sleep(0.5)
        assert await rows(engine) == {}, "counters wait for the batch"
        d.record(target, result(False, now + timedelta(seconds=2)))
        row = (await eventually(lambda: rows(engine), timeout=1, what="the change saved at once"))["ada"]
        assert (row.state, row.since, row.consecutive_failures, row.unpublished_from) == (
            "down", now + timedelta(seconds=2), 3, "unknown")
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_a_restart_resumes_state_since_and_counters(engine: AsyncEngine) -> None:
    settings = detector_settings("http://127.0.0.1:9/health")
    before = detector(settings)
    target = configured(before)
    now = datetime.now(UTC)
    for i, ok in enumerate([False, False, False, False, True]):  # down, then one success of two
        before.record(target, result(ok, now - timedelta(seconds=5 - i)))
    assert await WriteBehind(detector=before, store=TargetStore(session_factory(engine), instance_id=INSTANCE)).flush()

    after = detector(settings)
    after.resume_from(await TargetStore(session_factory(engine), instance_id=INSTANCE).load())
    configured(after)
    after.forget_unclaimed(registry=False)
    assert after.statuses["ada"] == before.statuses["ada"]
    status = after.statuses["ada"]
    assert (status.state, status.since, status.consecutive_failures, status.consecutive_successes) == (
        DOWN, now - timedelta(seconds=3), 0, 1)
    after.record(after.targets["ada"], result(True, now))
    assert (after.statuses["ada"].state, after.statuses["ada"].since) == (UP, now), "the detection went on"


class Recorder:
    """Stands in for the broker: keeps what is sent while ``up``, refuses it otherwise."""

    def __init__(self) -> None:
        self.up = True
        self.sent: list[CloudEvent[AvailabilityData]] = []

    async def send(self, _target_id: str, event: CloudEvent[AvailabilityData]) -> None:
        if not self.up:
            raise ConnectionError("broker unreachable")
        self.sent.append(event)

    def summary(self) -> list[tuple[str, str, str | None]]:
        return [(e.type, e.data.state.value, e.data.previous_state and e.data.previous_state.value)
                for e in self.sent]


async def save_and_restart(engine: AsyncEngine, before: Detector, broker: Recorder) -> Detector:
    """Save what changed, then start a detector of the same instance from the database (as the app does)."""
    store = TargetStore(session_factory(engine), instance_id=INSTANCE)
    assert await WriteBehind(detector=before, store=store).flush()
    after = Detector(settings=before._settings, prober=Prober(), send=broker.send,
                     metrics=DetectorMetrics.create(CollectorRegistry()))
    after.resume_from(await store.load())
    configured(after)
    after.forget_unclaimed(registry=False)
    return after


async def test_a_state_resumed_unconfirmed_stays_so_across_a_quick_second_restart(engine: AsyncEngine) -> None:
    """The reviewer's case: up saved long ago, resumed unconfirmed, one fresh failure saved, a restart within
    the resume window: the old up must not be published as current, and the detection goes on."""
    broker = Recorder()
    settings = detector_settings("http://127.0.0.1:9/health")  # windows: detection 3 s, resume 6 s
    before = Detector(settings=settings, prober=Prober(), send=broker.send,
                      metrics=DetectorMetrics.create(CollectorRegistry()))
    target = configured(before)
    now = datetime.now(UTC)
    long_ago = now - timedelta(hours=1)
    for i in range(2):
        before.record(target, result(True, long_ago + timedelta(seconds=i)))
    assert await before.latest.flush()
    assert broker.summary() == [(EventType.AVAILABILITY_CHANGED, "up", "unknown")]

    first = await save_and_restart(engine, before, broker)
    assert first.statuses["ada"].unconfirmed
    first.record(first.targets["ada"], result(False, now))  # in fact down
    assert first.statuses["ada"].unconfirmed

    second = await save_and_restart(engine, first, broker)  # within seconds
    status = second.statuses["ada"]
    assert (status.state, status.unconfirmed, status.consecutive_failures) == (UP, True, 1)
    second.record(second.targets["ada"], result(False, now + timedelta(seconds=1)))
    assert await second.latest.flush()
    assert len(broker.sent) == 1, "nothing published for the old up"
    second.record(second.targets["ada"], result(False, now + timedelta(seconds=2)))  # the third failure
    assert await second.latest.flush()
    assert broker.summary()[1:] == [(EventType.AVAILABILITY_CHANGED, "down", "up")]


async def test_a_held_change_stays_held_across_a_quick_second_restart(engine: AsyncEngine) -> None:
    """A change unpublished before a long stop is held until fresh probes confirm it, restarts or not."""
    broker = Recorder()
    settings = detector_settings("http://127.0.0.1:9/health")
    before = Detector(settings=settings, prober=Prober(), send=broker.send,
                      metrics=DetectorMetrics.create(CollectorRegistry()))
    target = configured(before)
    now = datetime.now(UTC)
    long_ago = now - timedelta(hours=2)
    for i in range(2):
        before.record(target, result(True, long_ago + timedelta(seconds=i)))
    assert await before.latest.flush()  # consumers know it up
    broker.up = False
    for i in range(2, 5):
        before.record(target, result(False, long_ago + timedelta(seconds=i)))  # down, never published
    assert not await before.latest.flush()
    broker.up = True
    held = Transition(UP, DOWN, long_ago + timedelta(seconds=4))

    first = await save_and_restart(engine, before, broker)
    row = (await rows(engine))["ada"]
    assert (row.unconfirmed, row.unpublished_from) == (False, "up"), "saved before the long stop"
    first.record(first.targets["ada"], result(False, now))
    assert (first.statuses["ada"].unconfirmed, len(first.latest)) == (True, 0)

    second = await save_and_restart(engine, first, broker)
    row = (await rows(engine))["ada"]
    assert (row.unconfirmed, row.unpublished_from) == (True, "up")
    assert (second.statuses["ada"].unconfirmed, len(second.latest)) == (True, 0), "still held"
    assert await second.latest.flush()
    assert len(broker.sent) == 1
    assert second.snapshot("ada").unpublished == held  # type: ignore[union-attr]
    for i in (1, 2):  # three fresh failures: down confirmed, the held change goes out
        second.record(second.targets["ada"], result(False, now + timedelta(seconds=i)))
    assert await second.latest.flush()
    [change] = broker.sent[1:]
    assert (change.type, change.data.previous_state, change.data.state, change.data.since) == (
        EventType.AVAILABILITY_CHANGED, UP, DOWN, held.at)


async def test_rows_saved_at_revision_0001_come_back_confirmed(database_url: str) -> None:
    """Databases at 0001 exist: their rows stay readable after 0002 (which adds ``unconfirmed``)."""
    engine = make_engine(database_url)
    try:
        await upgrade(engine, "0001")
        at = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
        saved = SavedTarget(target_id="ada", component=Component.ADA_B2G, probe="as4", url="https://b2g.lu/as4",
                            status=TargetStatus(state=DOWN, since=at, consecutive_failures=4,
                                                last=ProbeResult(False, "refused", at, 5.0)),
                            unpublished=Transition(UP, DOWN, at))
        values = TargetStore(session_factory(engine), instance_id=INSTANCE)._row(saved, at)
        del values["unconfirmed"]  # not a column at 0001
        async with engine.begin() as connection:
            await connection.execute(insert(TargetStateRow), [values])
        await upgrade(engine)
        assert await current_revision(engine) == HEAD
        assert await TargetStore(session_factory(engine), instance_id=INSTANCE).load() == [saved]
    finally:
        await engine.dispose()


async def test_a_row_this_version_cannot_read_is_skipped_and_the_others_load(engine: AsyncEngine) -> None:
    """Rows another version wrote (a rolling upgrade, a downgrade) may hold a state, component or probe kind
    this one does not know: that target starts afresh, its neighbours still resume (the columns are plain
    strings on purpose, see ``TargetStateRow``)."""
    at = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    store = TargetStore(session_factory(engine), instance_id=INSTANCE)

    def saved(target_id: str) -> SavedTarget:
        return SavedTarget(target_id=target_id, component=Component.NTP, probe="tcp", url="ntp.lu:123",
                           status=TargetStatus(state=UP, since=at, last=ProbeResult(True, "ok", at, 5.0)))

    good = saved("good")
    await store.save([good], [])
    unknown = {"state": "flapping", "component": "ics2", "probe": "quic", "unpublished_from": "flapping"}
    async with engine.begin() as connection:
        for column, value in unknown.items():
            values = store._row(saved(f"bad-{column}"), at)
            values[column] = value
            await connection.execute(insert(TargetStateRow), [values])

    assert await store.load() == [good]


async def test_rows_of_other_instances_not_saved_for_the_retention_are_swept_a_bounded_batch_at_a_time(
    engine: AsyncEngine,
) -> None:
    now = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    status = TargetStatus(state=UP, since=now, last=ProbeResult(True, "ok", now, 5.0))

    async def saved_by(instance: str, age: timedelta, count: int) -> None:
        store = TargetStore(session_factory(engine), instance_id=instance, clock=lambda: now - age)
        await store.save([SavedTarget(target_id=f"t{i}", component=Component.NTP, probe="tcp", url="ntp.lu:123",
                                      status=status) for i in range(count)], [])

    await saved_by("pod-old-1", timedelta(days=8), 4)
    await saved_by("pod-old-2", timedelta(days=30), 3)
    await saved_by("pod-recent", timedelta(days=6), 2)  # within the retention: perhaps back soon
    await saved_by(INSTANCE, timedelta(days=30), 2)  # its own rows: never swept, loaded at its start
    store = TargetStore(session_factory(engine), instance_id=INSTANCE, retention=timedelta(days=7),
                        clock=lambda: now)
    assert [await store.sweep(limit=5), await store.sweep(limit=5), await store.sweep(limit=5)] == [5, 2, 0]
    left = {instance: set(await rows(engine, instance)) for instance in ("pod-old-1", "pod-old-2", "pod-recent")}
    assert left == {"pod-old-1": set(), "pod-old-2": set(), "pod-recent": {"t0", "t1"}}
    assert set(await rows(engine)) == {"t0", "t1"}


# --- the app over the real broker -----------------------------------------------------------------------


async def test_an_unpublished_change_survives_a_restart_and_is_published_once(
    database_url: str, engine: AsyncEngine, kafka_bootstrap: str, topic_prefix: str
) -> None:
    refused = f"http://127.0.0.1:{free_port()}/health"  # nothing listens: every probe fails, as before
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    await ensure_topics(kafka)

    # Before: the target goes down while the broker is away; the change is saved, then the process dies.
    before = detector(detector_settings(refused))
    target = configured(before)
    now = datetime.now(UTC)
    for i in range(3):
        before.record(target, result(False, now - timedelta(seconds=2 - i)))
    assert not await before.latest.flush()
    assert await WriteBehind(detector=before, store=TargetStore(session_factory(engine), instance_id=INSTANCE)).flush()
    assert (await rows(engine))["ada"].unpublished_from == "unknown"

    settings = Settings(kafka=kafka, detector=detector_settings(refused, database_url=database_url),
                        api=ApiSettings(bureau_tokens=[SecretStr(BUREAU_TOKEN)]))
    async with running(create_app(settings)) as client:
        view = (await client.get("/api/v1/targets/ada")).json()
        assert (view["state"], at(view["since"]), view["unconfirmed"]) == ("down", now, False)
        await eventually(lambda: _published(engine), what="the change published and its saved copy cleared")
        await eventually(lambda: _heartbeat_after(kafka, now), what="the first fresh probe published at once")
    restarted = datetime.now(UTC)
    async with running(create_app(settings)) as client:  # and once more: nothing left to publish
        await eventually(lambda: _heartbeat_after(kafka, restarted), what="the first fresh probe published at once")

    events = await availability(kafka)
    [change] = changes(events, "ada")
    assert (change.previous_state, change.state, change.since, change.observed_at) == (UNKNOWN, DOWN, now, now)
    assert {data.since for _, data in events} == {now}, "every later event keeps the outage's since"


async def _published(engine: AsyncEngine) -> bool:
    row = (await rows(engine)).get("ada")
    return row is not None and row.unpublished_from is None


async def _heartbeat_after(kafka: KafkaSettings, after: datetime) -> bool:
    return any(kind == EventType.AVAILABILITY_HEARTBEAT and data.observed_at > after
               for kind, data in await availability(kafka))


async def test_targets_no_longer_configured_or_registered_are_dropped_at_start(
    database_url: str, engine: AsyncEngine, kafka_bootstrap: str, topic_prefix: str
) -> None:
    refused = f"http://127.0.0.1:{free_port()}/health"
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    await ensure_topics(kafka)
    await publish_eo(kafka, EORI, refused)
    now = datetime.now(UTC)
    down = TargetStatus(state=DOWN, since=now - timedelta(hours=1), consecutive_failures=40,
                        last=result(False, now - timedelta(seconds=1)))

    def saved(target_id: str, component: Component) -> SavedTarget:
        return SavedTarget(target_id=target_id, component=component, probe="http", url=refused, status=down)

    await TargetStore(session_factory(engine), instance_id=INSTANCE).save(
        [saved("ada", Component.ADA_B2G), saved("old-ntp", Component.NTP),
         saved(f"eo:{EORI}", Component.EO_B2G), saved(f"eo:{GONE_EORI}", Component.EO_B2G)], [])
    await TargetStore(session_factory(engine), instance_id="another").save([saved("old-ntp", Component.NTP)], [])

    settings = Settings(kafka=kafka, detector=detector_settings(refused, database_url=database_url, eo_targets=True),
                        api=ApiSettings(bureau_tokens=[SecretStr(BUREAU_TOKEN)]))
    async with running(create_app(settings)) as client:
        await eventually(lambda: _ready(client), what="ready (EO registry replayed)")
        await eventually(lambda: _saved_ids(engine, {"ada", f"eo:{EORI}"}), what="only the present targets kept")
        registered = (await client.get(f"/api/v1/targets/eo:{EORI}")).json()
        assert (registered["state"], at(registered["since"])) == ("down", down.since)
    assert set(await rows(engine, "another")) == {"old-ntp"}, "another instance's rows are left alone"


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


async def _saved_ids(engine: AsyncEngine, expected: set[str]) -> bool:
    return set(await rows(engine)) == expected
