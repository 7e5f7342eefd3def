"""Leadership of the procedure service on a real PostgreSQL database (and SQLite's one instance).

The worst case of a paused leader is the one where it does not notice: its own clock says its lease runs
on (here: the lease is ended in the database behind its back) while another instance took over. Its
decisions must then be refused by the fence inside their transaction, and its outbox must not publish.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from services.procedure import domain
from services.procedure.handlers import ProcedureService
from services.procedure.leadership import LEASE, Leadership, NotLeader, SecondInstance
from services.procedure.migrate import upgrade
from services.procedure.models import LeaseRow, ObservationRow, OutboxRow, ProcedureRow, TimelineRow
from services.procedure.outbox import Outbox
from services.procedure.recorder import active_view
from shared.config import KafkaSettings, ProcedureSettings, Settings
from shared.db import make_engine, session_factory
from shared.events import Scenario
from shared.kafka import Publisher
from tests.integration.test_procedure_service import ADA, DOWN, NTP, UP, _feed, _seen
from tests.support import pg_database

pytestmark = pytest.mark.integration


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[str]:
    async with pg_database(postgres_url) as url:
        engine = make_engine(url)
        await upgrade(engine)
        await engine.dispose()
        yield url


@contextlib.asynccontextmanager
async def _service(url: str, leadership: Leadership) -> AsyncIterator[ProcedureService]:
    settings = Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                        procedure=ProcedureSettings(stale_after_s=300))
    engine = make_engine(url)
    sessions = session_factory(engine)
    publisher = Publisher(settings.kafka, client_id="never-started")  # any send would fail: none is made
    outbox = Outbox(sessions, publisher, may_publish=leadership.holds)
    try:
        yield ProcedureService(settings=settings, sessions=sessions, outbox=outbox, leadership=leadership)
    finally:
        await publisher.stop()
        await engine.dispose()


async def _end_lease_behind_its_back(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(update(LeaseRow).where(LeaseRow.name == LEASE)
                                     .values(expires_at=func.clock_timestamp() - timedelta(seconds=1)))
    finally:
        await engine.dispose()


async def _count(url: str, model: type[object]) -> int:
    engine = make_engine(url)
    try:
        async with session_factory(engine)() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_one_instance_leads_and_another_takes_over_only_once_the_lease_ran_out(database: str) -> None:
    a = Leadership(database_url=database, instance_id="a", failover_s=5)
    b = Leadership(database_url=database, instance_id="b", failover_s=5)
    await a.start()
    await b.start()
    try:
        assert await a._acquire() and a.holds() and a.role == "leader"
        assert not await b._acquire() and b.role == "standby"
        leader = await b.leader()
        assert leader is not None and (leader.instance_id, leader.epoch) == ("a", a.epoch)

        await _end_lease_behind_its_back(database)
        assert await b.leader() is None  # nobody leads until someone takes the lease
        assert await b._acquire()
        assert b.epoch == (a.epoch or 0) + 1
        with pytest.raises(NotLeader):
            await a._renew()
        leader = await a.leader()
        assert leader is not None and leader.instance_id == "b"
    finally:
        await a.close()
        await b.close()


@pytest.mark.postgres
async def test_a_deposed_leader_that_did_not_notice_commits_and_publishes_nothing(database: str) -> None:
    a = Leadership(database_url=database, instance_id="a", failover_s=5)
    b = Leadership(database_url=database, instance_id="b", failover_s=5)
    await a.start()
    await b.start()
    try:
        async with _service(database, a) as zombie, _service(database, b) as leader:
            await _zombie_and_leader(database, a, b, zombie, leader)
    finally:
        await a.close()
        await b.close()


async def _zombie_and_leader(
    database: str, a: Leadership, b: Leadership, zombie: ProcedureService, leader: ProcedureService
) -> None:
    assert await a._acquire()
    await _end_lease_behind_its_back(database)
    assert await b._acquire()
    assert a.holds()  # its own clock has not noticed

    t0 = datetime.now(UTC)
    with pytest.raises(NotLeader):
        await _feed(zombie, _seen("ntp", NTP, UP, t0), _seen("ada", ADA, DOWN, t0))
    assert not a.holds()  # the refused fence makes it stand by at once
    assert [await _count(database, m) for m in (ObservationRow, ProcedureRow, OutboxRow)] == [0, 0, 0]
    with pytest.raises(NotLeader):
        await zombie.outbox._publish([(1, "topic", None, b"{}")])  # type: ignore[union-attr]

    # The real leader decides; an operator's command on the (former) zombie, a standby now, goes
    # through the database, and the leader's next decision reads what it changed.
    await _feed(leader, _seen("ntp", NTP, UP, t0), _seen("ada", ADA, DOWN, t0))
    (opened,) = [r for r in await _procedures(database) if r.state == "open"]

    def close(active: list[ProcedureRow]) -> domain.Decision:
        found = next(active_view(r) for r in active if r.id == opened.id)
        return domain.close(procedure=found, reason="closed by an operator on the standby")

    row, _ = await zombie.command(close, actor="operator")
    assert row is not None and row.state == "closed"
    await _feed(leader, _seen("ada", ADA, UP, t0 + timedelta(seconds=1)))  # nothing left to close
    procedures = await _procedures(database)
    assert [(p.id, p.state) for p in procedures] == [(opened.id, "closed")]
    assert await _count(database, TimelineRow) == 2  # opened by the leader, closed by the operator
    engine = make_engine(database)
    async with session_factory(engine)() as session:
        epochs = (await session.scalars(select(OutboxRow.epoch).order_by(OutboxRow.id))).all()
    await engine.dispose()
    assert epochs == [b.epoch, b.epoch]  # the command's row too: committed while b leads
    assert opened.scenario == Scenario.ADA_B2G_UNAVAILABLE.value


async def _procedures(url: str) -> list[ProcedureRow]:
    engine = make_engine(url)
    try:
        async with session_factory(engine)() as session:
            return list((await session.scalars(select(ProcedureRow).order_by(ProcedureRow.created_at))).all())
    finally:
        await engine.dispose()


async def test_sqlite_refuses_a_second_instance_and_the_one_instance_leads(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'procedure.db'}"
    engine = make_engine(url)
    await upgrade(engine)
    await engine.dispose()
    first = Leadership(database_url=url, instance_id="first", failover_s=5)
    second = Leadership(database_url=url, instance_id="second", failover_s=5)
    await first.start()
    try:
        with pytest.raises(SecondInstance, match="SQLite supports one instance"):
            await second.start()
        assert await first._acquire(force=True)
        leader = await first.leader()
        assert leader is not None and leader.instance_id == "first"
    finally:
        await first.close()
    await second.start()  # the first one stopped: the file is free
    await second.close()
