"""shared.db's plain values for the fan-out statements: each column through its type's bind processing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select
from sqlalchemy.dialects import sqlite

from shared.db import (
    UTCDateTime,
    _plain_columns,
    _plain_rows,
    closed_set,
    insert_columns,
    make_engine,
    session_factory,
)
from shared.events import DeliveryStatus

_TABLE = Table(
    "plain_example", MetaData(),
    Column("id", String(36), primary_key=True),
    Column("status", closed_set(DeliveryStatus, 16)),
    Column("at", UTCDateTime()),
    Column("attempts", Integer),
)
_NAMES = ["id", "status", "at", "attempts"]
_NOON = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
_ROWS = [
    ("a", DeliveryStatus.PENDING, _NOON, 0),
    ("b", DeliveryStatus.DELIVERED, _NOON.astimezone(timezone(timedelta(hours=1))), 1),
    ("c", DeliveryStatus.PENDING, None, None),
    ("d", DeliveryStatus.DEAD, _NOON + timedelta(seconds=1), 6),
]


@pytest.mark.parametrize("dialect_name", ["sqlite", "postgresql"])
def test_each_value_is_what_its_column_type_would_bind(dialect_name: str) -> None:
    dialect = create_engine("sqlite://" if dialect_name == "sqlite" else "postgresql+asyncpg://").dialect
    processors = [_TABLE.c[n].type.dialect_impl(dialect).bind_processor(dialect) for n in _NAMES]
    expected = [
        tuple(p(v) if p is not None and v is not None else v for v, p in zip(row, processors, strict=True))
        for row in _ROWS
    ]
    assert _plain_rows(dialect, _TABLE, _NAMES, _ROWS) == expected
    assert _plain_columns(dialect, _TABLE, _NAMES, _ROWS) == [list(c) for c in zip(*expected, strict=True)]


def test_the_enum_is_stored_as_its_contract_string_and_a_time_in_utc() -> None:
    (row,) = _plain_rows(sqlite.dialect(), _TABLE, _NAMES, _ROWS[1:2])
    assert row[0] == "b" and row[1] == "delivered" and row[3] == 1
    assert row[2] is not None and "12:00:00" in str(row[2])


def test_rows_of_different_widths_are_refused() -> None:
    with pytest.raises(ValueError, match=r"shorter|longer"):
        _plain_columns(sqlite.dialect(), _TABLE, _NAMES, [("a", DeliveryStatus.PENDING, _NOON, 0), ("b",)])


async def test_columns_and_constants_are_stored_as_the_orm_would_and_conflicts_are_left(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_TABLE.metadata.create_all)
        sessions = session_factory(engine)
        async with sessions.begin() as session:
            await insert_columns(session, _TABLE, columns={"id": ["a", "b"], "attempts": [0, 1]},
                                 constants={"status": DeliveryStatus.PENDING, "at": _NOON})
            await session.execute(_TABLE.insert(), [{"id": "c", "status": DeliveryStatus.DEAD, "at": _NOON,
                                                     "attempts": 6}])
        async with sessions.begin() as session:  # "b" is there already: left as it is, "e" added
            await insert_columns(session, _TABLE, columns={"id": ["b", "e"], "attempts": [9, 2]},
                                 constants={"status": DeliveryStatus.DELIVERED, "at": _NOON + timedelta(hours=1)},
                                 skip_conflicts_on=("id",))
        async with sessions() as session:
            rows = (await session.execute(select(_TABLE).order_by(_TABLE.c.id))).all()
    finally:
        await engine.dispose()
    assert [tuple(row) for row in rows] == [
        ("a", DeliveryStatus.PENDING, _NOON, 0),
        ("b", DeliveryStatus.PENDING, _NOON, 1),
        ("c", DeliveryStatus.DEAD, _NOON, 6),
        ("e", DeliveryStatus.DELIVERED, _NOON + timedelta(hours=1), 2),
    ]


async def test_columns_of_different_lengths_are_refused(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    try:
        async with session_factory(engine).begin() as session:
            with pytest.raises(ValueError, match="different lengths"):
                await insert_columns(session, _TABLE, columns={"id": ["a", "b"], "attempts": [0]}, constants={})
    finally:
        await engine.dispose()
