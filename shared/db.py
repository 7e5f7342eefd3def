"""Database helpers: async SQLAlchemy engines for SQLite (default) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import DateTime, Dialect, Table, event, text
from sqlalchemy import Enum as SqlEnum
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.types import TypeDecorator

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}


def async_url(database_url: str) -> URL:
    """Accept plain ``sqlite:///`` and ``postgresql://`` URLs too, and pick the async driver for them."""
    url = make_url(database_url)
    if url.drivername in _ASYNC_DRIVERS:
        url = url.set(drivername=_ASYNC_DRIVERS[url.drivername])
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database {url.get_backend_name()!r}: use SQLite or PostgreSQL")
    return url


def make_engine(database_url: str) -> AsyncEngine:
    """Create an engine; a SQLite file gets its folder created and WAL journaling."""
    url = async_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def ping(engine: AsyncEngine) -> None:
    """Raise if the database does not answer (used by /readyz)."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


E = TypeVar("E", bound=StrEnum)


def closed_set(enum: type[E], length: int) -> SqlEnum:
    """A column type for a closed set of names (a :class:`~enum.StrEnum`): stored as the member's value, the
    very string of the contract, in a ``VARCHAR(length)`` (no database enum type, no CHECK constraint, so no
    migration); rows load as members, and a string that is not a member is refused before it is written."""
    return SqlEnum(
        enum, native_enum=False, create_constraint=False, validate_strings=True, length=length,
        values_callable=lambda members: [m.value for m in members],
    )


async def execute_plain(
    session: AsyncSession, sql: str, *, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Run ``sql`` once per row (executemany) straight at the driver: ``sql`` marks its parameters ``?``, the
    n-th binding a value of ``table``'s column ``columns[n]``; ``rows`` are tuples in that order.

    For the statements of a fan-out (100,000 delivery rows planned, thousands of outcomes recorded per
    batch): SQLAlchemy's executemany builds and type-processes a parameter dictionary per row, which cost
    more than the database's own work. Here each column's type processing (enum names, timestamps) runs
    once per distinct value (the rows of a fan-out share a few timestamps and names), and the driver gets
    plain tuples. Same values stored as through the ORM: the columns' own bind processors make them.
    """
    if not rows:
        return
    dialect = session.get_bind().dialect
    if dialect.paramstyle == "numeric_dollar":
        parts = sql.split("?")
        sql = "".join(part + (f"${n}" if n < len(parts) else "") for n, part in enumerate(parts, start=1))
    elif dialect.paramstyle != "qmark":
        raise NotImplementedError(f"paramstyle {dialect.paramstyle}")
    processors = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns]
    memo: list[dict[Any, Any]] = [{} for _ in columns]

    def plain(n: int, value: Any) -> Any:
        processor = processors[n]
        if processor is None or value is None:
            return value
        seen = memo[n]
        if value not in seen:
            seen[value] = processor(value)
        return seen[value]

    width = range(len(columns))
    if any(processors):
        rows = [tuple(plain(n, row[n]) for n in width) for row in rows]
    connection = await session.connection()
    await connection.exec_driver_sql(sql, list(rows))


def insert_sql(table: Table, columns: Sequence[str], *, skip_conflicts_on: Sequence[str] = ()) -> str:
    """For :func:`execute_plain`: insert a row of ``columns`` into ``table``; with ``skip_conflicts_on``,
    nothing where a row with the same values there exists (SQLite and PostgreSQL share the syntax)."""
    # Only the table's own names go into the text (table.c raises KeyError for any other).
    names, keys = [table.c[n].name for n in columns], [table.c[n].name for n in skip_conflicts_on]
    sql = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"  # noqa: S608
    return sql + f" ON CONFLICT ({', '.join(keys)}) DO NOTHING" if keys else sql


async def upsert(
    session: AsyncSession, table: Table, rows: Sequence[Mapping[str, Any]], *, key: Sequence[str],
    update: bool = True,
) -> None:
    """Insert ``rows`` or, where ``key`` already exists, update them (``update=False``: leave those alone),
    in one statement (SQLite and PostgreSQL). The one insert-or-update of every service."""
    if not rows:
        return
    insert = sqlite_insert if session.get_bind().dialect.name == "sqlite" else postgresql_insert
    statement = insert(table)
    if update:
        updates = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in key}
        resolved = statement.on_conflict_do_update(index_elements=list(key), set_=updates)
    else:
        resolved = statement.on_conflict_do_nothing(index_elements=list(key))
    # One statement, many parameter sets: compiled once and cached, whatever the number of rows.
    await session.execute(resolved, list(rows))
