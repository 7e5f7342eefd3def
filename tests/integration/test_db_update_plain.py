"""``shared.db.update_plain`` leaves every row as one UPDATE per given row, in order, would, on SQLite (rows
sharing their values as one statement per group) and PostgreSQL (``unnest``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, event, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import GROUPED_MIN_ROWS, update_plain
from tests.support import scratch_table

pytestmark = pytest.mark.integration

KEYS = ["a", "b'quote", 'c"double', "d\\slash", "é-ünï", "f,g", "[h]", "x" * 100, *(f"k{n:03d}" for n in range(40))]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def table(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Table, AsyncSession]]:
    sqlite = f"sqlite:///{tmp_path / 'update_plain.db'}"
    url = sqlite if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    table = Table(f"update_plain_{uuid.uuid4().hex[:10]}", MetaData(),
                  Column("scope", String(10), primary_key=True), Column("id", String(100), primary_key=True),
                  Column("tag", String(20)), Column("n", Integer), Column("done", Integer))
    rows = [{"scope": scope, "id": key, "tag": "new", "n": 0, "done": 0} for scope in ("one", "two") for key in KEYS]
    async with scratch_table(url, table, rows) as session:
        yield table, session


async def _state(session: AsyncSession, table: Table) -> dict[tuple[str, str], tuple[Any, ...]]:
    rows = (await session.execute(select(table.c.scope, table.c.id, table.c.tag, table.c.n, table.c.done))).all()
    return {(row.scope, row.id): (row.tag, row.n, row.done) for row in rows}


def _applied(before: dict[tuple[str, str], tuple[Any, ...]], updates: list[tuple[Any, ...]], *,
             only_new: bool) -> dict[tuple[str, str], tuple[Any, ...]]:
    """What one UPDATE per row, in order, leaves: ``(tag, n, scope, id)`` rows, ``done = 1`` set too (also_set),
    only where the tag is still ``new`` (only_where) if ``only_new``."""
    after = dict(before)
    for tag, n, scope, key in updates:
        if (scope, key) in after and (not only_new or after[(scope, key)][0] == "new"):
            after[(scope, key)] = (tag, n, 1)
    return after


@contextmanager
def _statements(session: AsyncSession) -> Iterator[list[tuple[str, bool]]]:
    """The statements the session's engine runs meanwhile, each with whether it ran as an executemany."""
    seen: list[tuple[str, bool]] = []
    engine = session.get_bind()

    def note(_conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, executemany: bool) -> None:
        seen.append((statement, executemany))

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


async def test_a_batch_sharing_values_ends_as_one_update_per_row(table: tuple[Table, AsyncSession]) -> None:
    rows, session = table
    before = await _state(session, rows)
    updates: list[tuple[Any, ...]] = [
        *(("delivered", 1, "one", key) for key in KEYS[:30]),  # one large group (the quoted keys among them)
        *(("delivered", 2, "one", key) for key in KEYS[30:33]),  # a group too small to be grouped
        *(("delivered", 1, "two", key) for key in KEYS[10:30]),  # the same values, another scope
        *((f"own-{n}", n, "two", key) for n, key in enumerate(KEYS[30:40])),  # values of their own
        ("delivered", 1, "one", "not there"),
    ]
    with _statements(session) as seen:
        await update_plain(session, rows, set_columns=("tag", "n"), keys=("scope", "id"), rows=updates,
                           also_set="done = 1")
    await session.commit()
    assert await _state(session, rows) == _applied(before, updates, only_new=False)
    if session.get_bind().dialect.name == "sqlite":
        grouped = [statement for statement, many in seen if "json_each" in statement and not many]
        assert len(grouped) == 2  # ("delivered", 1) in each scope
        assert sum(1 for _, many in seen if many) == 1  # the rest: one executemany


async def test_only_where_holds_for_grouped_rows(table: tuple[Table, AsyncSession]) -> None:
    rows, session = table
    await update_plain(session, rows, set_columns=("tag", "n"), keys=("scope", "id"),
                       rows=[("seen", 5, "one", key) for key in KEYS[:5]])
    before = await _state(session, rows)
    updates = [("reached", 9, "one", key) for key in KEYS[:GROUPED_MIN_ROWS * 2]]
    await update_plain(session, rows, set_columns=("tag", "n"), keys=("scope", "id"), rows=updates,
                       also_set="done = 1", only_where="tag = 'new'")
    await session.commit()
    after = await _state(session, rows)
    assert after == _applied(before, updates, only_new=True)
    assert after[("one", KEYS[0])] == ("seen", 5, 0)  # left as it was: not 'new' any more


async def test_a_key_given_twice_keeps_the_order_of_the_rows(table: tuple[Table, AsyncSession]) -> None:
    rows, session = table
    before = await _state(session, rows)
    # A row of values of its own first, then a group with the same key: run group first, the row after, the
    # earlier row would win.
    updates: list[tuple[Any, ...]] = [("early", 7, "one", KEYS[0])]
    updates += [("late", 1, "one", key) for key in KEYS[:GROUPED_MIN_ROWS * 2]]
    await update_plain(session, rows, set_columns=("tag", "n"), keys=("scope", "id"), rows=updates,
                       also_set="done = 1")
    await session.commit()
    after = await _state(session, rows)
    assert after == _applied(before, updates, only_new=False)
    assert after[("one", KEYS[0])] == ("late", 1, 1)
