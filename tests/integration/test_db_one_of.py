"""``shared.db.one_of``: ``column IN values`` as one parameter, on SQLite (``json_each``) and PostgreSQL (``ANY``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import one_of
from tests.support import scratch_table

pytestmark = pytest.mark.integration

IDS = ["a", "b'quote", 'c"double', "d\\slash", "é-ünï", "f,g", "[h]", "x" * 100]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def table(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Table, AsyncSession]]:
    sqlite = f"sqlite:///{tmp_path / 'one_of.db'}"
    url = sqlite if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    table = Table(f"one_of_{uuid.uuid4().hex[:10]}", MetaData(), Column("id", String(100), primary_key=True),
                  Column("n", Integer))
    async with scratch_table(url, table, [{"id": i, "n": 0} for i in IDS]) as session:
        yield table, session


async def test_one_of_selects_and_updates_exactly_the_listed_rows(table: tuple[Table, AsyncSession]) -> None:
    rows, session = table
    dialect = session.get_bind().dialect
    wanted = [IDS[1], IDS[2], IDS[3], IDS[4], IDS[7], "not there"]
    found = (await session.scalars(select(rows.c.id).where(one_of(rows.c.id, wanted, dialect)))).all()
    assert sorted(found) == sorted(wanted[:-1])
    await session.execute(update(rows).where(one_of(rows.c.id, wanted, dialect)).values(n=1))
    changed = (await session.scalars(select(rows.c.id).where(rows.c.n == 1))).all()
    assert sorted(changed) == sorted(wanted[:-1])
    assert (await session.scalars(select(rows.c.id).where(one_of(rows.c.id, [], dialect)))).all() == []
