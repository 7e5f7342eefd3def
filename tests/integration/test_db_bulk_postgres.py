"""The bulk writes of ``shared.db`` on PostgreSQL refuse a value too long for its column, as any insert does.

They cast their parameters (``unnest`` arrays, shared constants) to the columns' types; an explicit cast to
``VARCHAR(n)`` cuts a longer value silently, so a cast with the length kept would store a truncated value
where SQLite stores it whole and a plain insert fails.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import insert_columns, insert_plain, update_plain
from tests.support import scratch_table


@pytest.fixture
async def table(postgres_url: str) -> AsyncIterator[tuple[Table, AsyncSession]]:
    table = Table(f"short_{uuid.uuid4().hex[:10]}", MetaData(), Column("id", String(3), primary_key=True),
                  Column("tag", String(3)), Column("n", Integer))
    async with scratch_table(postgres_url, table) as session:
        yield table, session


async def test_a_value_too_long_is_refused_not_cut(table: tuple[Table, AsyncSession]) -> None:
    short, session = table
    await insert_columns(session, short, columns={"id": ["a", "b"]}, constants={"tag": "ok", "n": 1})
    with pytest.raises(DBAPIError, match="too long"):
        await insert_columns(session, short, columns={"id": ["c"]}, constants={"tag": "toolong", "n": 1})
    await session.rollback()
    with pytest.raises(DBAPIError, match="too long"):
        await insert_columns(session, short, columns={"id": ["toolong"]}, constants={"n": 1})
    await session.rollback()
    with pytest.raises(DBAPIError, match="too long"):
        await insert_plain(session, short, columns=("id", "tag", "n"), rows=[("d", "toolong", 1)])
    await session.rollback()
    await insert_plain(session, short, columns=("id", "tag", "n"), rows=[("e", "abc", 2)])
    with pytest.raises(DBAPIError, match="too long"):
        await update_plain(session, short, set_columns=("tag",), keys=("id",), rows=[("toolong", "e")])
