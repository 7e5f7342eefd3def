"""Unit tests of the pure database helpers (shared/db.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import cast

import pytest
from sqlalchemy import Table, create_engine, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.schema import CreateTable

from shared.db import UTCDateTime, async_url, closed_set
from shared.events import ProcedureState


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


class _Row(DeclarativeBase):
    pass


class _Procedure(_Row):
    __tablename__ = "procedure"

    id: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[ProcedureState] = mapped_column(closed_set(ProcedureState, 10))


def test_a_closed_set_column_stores_the_contract_strings_and_loads_members() -> None:
    engine = create_engine("sqlite://")  # in memory: the column type's own round trip, no server
    _Row.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([_Procedure(id=1, state=ProcedureState.OPEN), _Procedure(id=2, state="proposed")])
        session.commit()
        stored = session.execute(text("SELECT id, state FROM procedure ORDER BY id")).all()
        loaded = session.scalars(select(_Procedure.state).order_by(_Procedure.id)).all()
        found = session.scalars(select(_Procedure.id).where(_Procedure.state == "open")).all()
    assert [tuple(r) for r in stored] == [(1, "open"), (2, "proposed")]  # the value, not the member's name
    assert loaded == [ProcedureState.OPEN, ProcedureState.PROPOSED]
    assert all(type(state) is ProcedureState for state in loaded)
    assert found == [1]


def test_a_closed_set_column_refuses_a_string_outside_the_set() -> None:
    engine = create_engine("sqlite://")
    _Row.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(_Procedure(id=1, state="sideways"))
        with pytest.raises(StatementError, match="sideways"):
            session.commit()


def test_a_closed_set_column_is_a_plain_varchar_of_the_given_length() -> None:
    column_type = closed_set(ProcedureState, 10)
    on_postgresql = make_url("postgresql+asyncpg://").get_dialect()()
    assert column_type.compile(dialect=DIALECT) == "VARCHAR(10)"
    assert column_type.compile(dialect=on_postgresql) == "VARCHAR(10)"
    ddl = str(CreateTable(cast(Table, _Procedure.__table__)).compile(dialect=on_postgresql))
    assert "CHECK" not in ddl and "CREATE TYPE" not in ddl  # nothing a migration would have to add
