"""The partial indexes of the delivery log and of the reach (notifier migration 0006) on a real SQLite file
and a real PostgreSQL server: how they are defined, and that the dispatcher's claims, its settling probe, the
escalation watch and the search for unreached EOs use them with their values bound as the services bind them
(on PostgreSQL in a generic plan, the one a statement prepared once and run many times ends up with)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.notifier.dispatch import due_in_order, still_due_of
from services.notifier.models import DeliveryRow, ReachRow
from services.notifier.reach import overdue_escalations
from tests.integration.test_notifier_delivery import migrated_notifier_engine

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
_D = DeliveryRow.__table__


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A notifier database at the head revision."""
    async with migrated_notifier_engine(request, tmp_path) as migrated:
        yield migrated


async def _definitions(engine: AsyncEngine, table: str) -> dict[str, str]:
    """The indexes of ``table``, each by name with the SQL that defines it."""
    async with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            query = f"SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = '{table}'"
        else:
            query = f"SELECT indexname, indexdef FROM pg_indexes WHERE tablename = '{table}'"
        rows: list[Any] = list((await connection.exec_driver_sql(query)).all())
        return {name: sql or "" for name, sql in rows}


async def _plan(engine: AsyncEngine, statement: Any) -> str:
    """The plan of ``statement`` with its parameters bound, one line."""
    compiled = statement.compile(dialect=engine.dialect)
    async with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # The values do not change SQLite's plan: a time as text, as sqlite3 no longer adapts one itself.
            params = tuple(str(value) if isinstance(value, datetime) else value
                           for value in (compiled.params[name] for name in compiled.positiontup or ()))
            rows = (await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled.string}", params)).all()
            return " / ".join(str(row[-1]) for row in rows)
        # A generic plan: the parameters unknown while planning, as once asyncpg's prepared statement has run
        # five times.
        values = ", ".join(_pg_literal(compiled.params[name]) for name in compiled.positiontup or ())
        await connection.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        await connection.exec_driver_sql("SET enable_seqscan = off")  # an empty table: a scan would always win
        await connection.exec_driver_sql(f"PREPARE probe AS {compiled.string}")
        try:
            rows = (await connection.exec_driver_sql(f"EXPLAIN EXECUTE probe({values})")).all()
        finally:
            await connection.exec_driver_sql("DEALLOCATE probe")  # the pooled connection keeps its session
        return " / ".join(str(row[0]) for row in rows)


def _pg_literal(value: Any) -> str:
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


async def test_the_indexes_searched_for_due_watched_or_unreached_rows_are_partial(engine: AsyncEngine) -> None:
    found = await _definitions(engine, "deliveries")
    for name in ("ix_deliveries_due", "ix_deliveries_event_due"):
        assert "WHERE" in found[name] and "'pending'" in found[name] and "'retrying'" in found[name], found[name]
        assert "'delivered'" not in found[name] and "'dead'" not in found[name], found[name]
    assert "WHERE" in found["ix_deliveries_escalate_at"] and "IS NOT NULL" in found["ix_deliveries_escalate_at"]
    assert "WHERE" not in found["ix_deliveries_procedure_status"], "the fan-out counts count every status"
    assert "ix_deliveries_procedure_id" not in found, "(procedure_id, status) serves its searches"
    assert "ix_deliveries_event" not in found
    unreached = (await _definitions(engine, "procedure_reach"))["ix_procedure_reach_unreached"]
    assert "WHERE" in unreached and "reached_at IS NULL" in unreached, unreached


async def test_the_dispatcher_and_the_escalation_watch_search_the_partial_indexes(engine: AsyncEngine) -> None:
    claim = due_in_order("pending", NOW, (_D.c.id,), limit=100)
    assert "ix_deliveries_due" in await _plan(engine, claim)
    assert "ix_deliveries_due" in await _plan(engine, claim.with_for_update(skip_locked=True))
    assert "ix_deliveries_event_due" in await _plan(engine, still_due_of("e-1"))
    assert "ix_deliveries_escalate_at" in await _plan(engine, overdue_escalations(NOW, 100))
    unreached = select(ReachRow.eori).where(ReachRow.procedure_id == "p-1", ReachRow.reached_at.is_(None))
    assert "ix_procedure_reach_unreached" in await _plan(engine, unreached)
