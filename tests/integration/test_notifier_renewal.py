"""The lease renewal (``dispatch.renewal``) extends this notifier's own due claims among the ids it is given and
nothing else, and on SQLite finds them by their ids: through the index of due rows it walked the whole backlog
of a national fan-out for each chunk of ids, holding the one writer for a second and a half."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.notifier.dispatch import _D, renewal
from services.notifier.migrate import upgrade
from services.notifier.models import NoticeRow
from shared.db import make_engine, session_factory
from shared.events import EventType
from tests.integration.test_notifier_delivery import migrated_notifier_engine

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
UNTIL = NOW + timedelta(minutes=5)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with migrated_notifier_engine(request, tmp_path) as migrated:
        yield migrated


def _row(n: int, notice_id: int, *, status: str, claimed_by: str | None) -> dict[str, Any]:
    return dict(
        id=f"delivery-{n}", event_id="e", event_type=EventType.PROCEDURE_OPENED, procedure_id="P",
        notice_id=notice_id, audience="eo", recipient_key=f"k{n}", eori=f"LU{n}", channel="webhook",
        recipient=f"https://hooks.example/{n}", lane="hooks.example:443", idempotency_key=f"i{n}", status=status,
        attempts=0, next_attempt_at=NOW, created_at=NOW, updated_at=NOW, claimed_by=claimed_by,
        claimed_until=NOW + timedelta(seconds=30) if claimed_by else None,
    )


async def test_the_renewal_extends_only_this_notifiers_due_claims_among_the_ids(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    async with sessions.begin() as session:
        notice_id = (await session.execute(insert(NoticeRow).values(
            event_id="e", audience="eo", language="fr", variant="", subject="s", message="m", webhook_body=b"{}",
        ).returning(NoticeRow.id))).scalar_one()
        rows = [
            _row(0, notice_id, status="pending", claimed_by="me"),  # renewed
            _row(1, notice_id, status="retrying", claimed_by="me"),  # renewed
            _row(2, notice_id, status="delivered", claimed_by="me"),  # recorded meanwhile: left
            _row(3, notice_id, status="pending", claimed_by="other"),  # another notifier's: left
            _row(4, notice_id, status="pending", claimed_by="me"),  # not among the ids: left
        ]
        for row in rows:
            await session.execute(insert(_D).values(**row))
    async with sessions.begin() as session:
        await session.execute(renewal(["delivery-0", "delivery-1", "delivery-2", "delivery-3", "nowhere"], "me",
                                      UNTIL, session.get_bind().dialect))
    async with sessions() as session:
        leases = dict((await session.execute(select(_D.c.id, _D.c.claimed_until))).all())
    assert {key for key, until in leases.items() if until == UNTIL} == {"delivery-0", "delivery-1"}


async def test_on_sqlite_the_renewal_looks_its_rows_up_by_id(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'notifier.db'}")
    try:
        await upgrade(engine)
        statement = renewal(["a", "b"], "me", UNTIL, engine.dialect)
        sql = str(statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
        async with engine.connect() as connection:
            plan = " / ".join(row[-1] for row in (await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")).all())
    finally:
        await engine.dispose()
    assert "sqlite_autoindex_deliveries_1 (id=?)" in plan, plan
    assert "ix_deliveries_due" not in plan, plan
