"""Unit tests of the pure database helpers (shared/db.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite

from shared.db import UTCDateTime, async_url


@pytest.mark.parametrize(
    ("given", "driver", "database"),
    [
        ("sqlite:///var/procedure.db", "sqlite+aiosqlite", "var/procedure.db"),
        ("sqlite:////srv/luccs/notifier.db", "sqlite+aiosqlite", "/srv/luccs/notifier.db"),
        ("sqlite://", "sqlite+aiosqlite", None),
        ("sqlite:///:memory:", "sqlite+aiosqlite", ":memory:"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite", "x.db"),
    ],
)
def test_sqlite_urls_get_the_aiosqlite_driver(given: str, driver: str, database: str | None) -> None:
    url = async_url(given)
    assert url.drivername == driver
    assert url.database == database


@pytest.mark.parametrize(
    "given",
    [
        "postgresql://luccs:pw@db.example:5433/procedure",
        "postgres://luccs:pw@db.example:5433/procedure",
        "postgresql+asyncpg://luccs:pw@db.example:5433/procedure",
    ],
)
def test_postgresql_urls_get_the_asyncpg_driver(given: str) -> None:
    url = async_url(given)
    assert url.drivername == "postgresql+asyncpg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "luccs",
        "pw",
        "db.example",
        5433,
        "procedure",
    )


def test_query_parameters_are_kept() -> None:
    url = async_url("postgresql://u@h/db?ssl=require")
    assert url.query == {"ssl": "require"}


@pytest.mark.parametrize(
    "given",
    ["mysql://u:p@h/db", "mysql+aiomysql://u:p@h/db", "oracle://u:p@h/db", "mssql+pyodbc://u:p@h/db"],
)
def test_other_databases_are_rejected(given: str) -> None:
    with pytest.raises(ValueError, match="unsupported database"):
        async_url(given)


DIALECT = sqlite.dialect()


def test_utc_datetime_refuses_naive_values() -> None:
    with pytest.raises(ValueError, match="naive"):
        UTCDateTime().process_bind_param(datetime(2024, 3, 1, 12, 0), DIALECT)


def test_utc_datetime_stores_utc() -> None:
    cet = timezone(timedelta(hours=1))
    stored = UTCDateTime().process_bind_param(datetime(2024, 3, 1, 13, 0, tzinfo=cet), DIALECT)
    assert stored == datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    assert stored is not None
    assert stored.utcoffset() == timedelta(0)


def test_utc_datetime_reads_naive_values_as_utc() -> None:
    loaded = UTCDateTime().process_result_value(datetime(2024, 3, 1, 12, 0), DIALECT)
    assert loaded == datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    assert loaded is not None
    assert loaded.tzinfo is UTC


def test_utc_datetime_passes_none_through() -> None:
    assert UTCDateTime().process_bind_param(None, DIALECT) is None
    assert UTCDateTime().process_result_value(None, DIALECT) is None
