"""Database helpers: async SQLAlchemy engines for SQLite (default) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


async def upsert(
    session: AsyncSession, table: Table, rows: Sequence[Mapping[str, Any]], *, key: Sequence[str],
    update: bool = True, merge: Callable[[Any], Mapping[str, Any]] | None = None,
) -> None:
    """Insert ``rows`` or, where ``key`` already exists, update them (``update=False``: leave those alone),
    in one statement (SQLite and PostgreSQL). The one insert-or-update of every service.

    ``merge``: how an existing row is updated, given the proposed row (``excluded``): column name to SQL
    expression (default: every other column takes the proposed value)."""
    if not rows:
        return
    insert = sqlite_insert if session.get_bind().dialect.name == "sqlite" else postgresql_insert
    statement = insert(table)
    if merge is not None:
        resolved = statement.on_conflict_do_update(index_elements=list(key), set_=dict(merge(statement.excluded)))
    elif update:
        updates = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in key}
        resolved = statement.on_conflict_do_update(index_elements=list(key), set_=updates)
    else:
        resolved = statement.on_conflict_do_nothing(index_elements=list(key))
    # One statement, many parameter sets: compiled once and cached, whatever the number of rows.
    await session.execute(resolved, list(rows))
