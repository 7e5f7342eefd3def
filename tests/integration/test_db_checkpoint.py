"""SQLite's write-ahead log: a commit after ``defer_checkpoint`` leaves the log uncopied (the database file does
not grow) until ``checkpoint``; the connection goes back to the pool with automatic checkpoints restored."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, event

from shared.db import WAL_AUTOCHECKPOINT_PAGES, checkpoint, defer_checkpoint, insert_columns, session_factory
from tests.support import scratch_table

pytestmark = pytest.mark.integration

ROWS = 40_000  # about 2,000 pages of 4 KiB: over WAL_AUTOCHECKPOINT_PAGES


def _table() -> Table:
    return Table(f"checkpoint_{uuid.uuid4().hex[:8]}", MetaData(), Column("id", Integer, primary_key=True),
                 Column("text", String(200)))


@pytest.mark.parametrize("deferred", [True, False], ids=["deferred", "as-ever"])
async def test_a_deferred_commit_leaves_the_log_to_the_checkpoint(tmp_path: Path, deferred: bool) -> None:
    database = tmp_path / "checkpoint.db"
    table = _table()
    async with scratch_table(f"sqlite:///{database}", table) as session:
        sessions = session_factory(session.bind)
        empty = database.stat().st_size
        async with session.begin():
            if deferred:
                assert await defer_checkpoint(session)
            driver = (await (await session.connection()).get_raw_connection()).driver_connection
            await insert_columns(session, table, columns={"id": list(range(ROWS)), "text": ["x" * 150] * ROWS},
                                 constants={})
        committed = database.stat().st_size
        await checkpoint(sessions)
        checkpointed = database.stat().st_size
        async with sessions() as later:
            connection = await later.connection()
            assert (await connection.get_raw_connection()).driver_connection is driver  # the one pooled
            pages = (await connection.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar()
        assert pages == WAL_AUTOCHECKPOINT_PAGES
        assert checkpointed > empty + ROWS * 100  # the rows are in the database file now
        if deferred:
            assert committed == empty  # the commit wrote the log alone
        else:
            assert committed == checkpointed  # the commit copied the log itself


@pytest.mark.postgres
async def test_nothing_to_defer_or_checkpoint_on_postgresql(postgres_url: str) -> None:
    """No statement at all: ``checkpoint`` logs a failure rather than raising, so a PRAGMA sent to PostgreSQL
    would only show here."""
    table = _table()
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    async with scratch_table(postgres_url, table) as session:
        engine = session.bind.sync_engine
        async with session.begin():
            event.listen(engine, "before_cursor_execute", note)
            try:
                assert not await defer_checkpoint(session)
                await checkpoint(session_factory(session.bind))
            finally:
                event.remove(engine, "before_cursor_execute", note)
    assert seen == []

