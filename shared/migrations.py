"""What the services' Alembic migrations share: one run at a time, the config, the revision, the upgrade.

Alembic keeps the running migration's context in module globals (``alembic.context``, ``alembic.op``).
Two runs interleaved on one event loop, as when ``luccs-fallback all`` starts every service at once, would
use each other's: a service's tables created in another service's database, or a ``KeyError`` mid-run.
Every service's ``upgrade`` takes this lock around its Alembic commands, and on PostgreSQL an advisory
lock of its own, so that processes upgrading one database (a migrate job, services starting) take turns.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command, context
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, MetaData, text
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "alembic_config", "alembic_lock", "current_revision", "revision_of", "run_environment", "run_locked", "upgrade",
]

T = TypeVar("T")

_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def alembic_lock() -> asyncio.Lock:
    """The lock of the running event loop that Alembic commands run under (one per loop: tests run many)."""
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock


def alembic_config(migrations: Path, connection: Connection | None = None) -> Config:
    """The Alembic config of the migrations in ``migrations``, run on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.attributes["connection"] = connection
    return config


def revision_of(connection: Connection, version_table: str = "alembic_version") -> str | None:
    """The revision recorded in ``version_table`` (None: no migration has run)."""
    return MigrationContext.configure(connection, opts={"version_table": version_table}).get_current_revision()


async def current_revision(engine: AsyncEngine, version_table: str = "alembic_version") -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(revision_of, version_table)


async def run_locked(engine: AsyncEngine, lock_key: int, run: Callable[[Connection], T]) -> T:
    """Run ``run`` in one transaction, holding this process's Alembic lock and, on PostgreSQL, the advisory
    lock ``lock_key`` (held until the transaction ends)."""

    def locked(connection: Connection) -> T:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
        return run(connection)

    async with alembic_lock(), engine.begin() as connection:
        return await connection.run_sync(locked)


async def upgrade(engine: AsyncEngine, migrations: Path, *, lock_key: int, revision: str = "head") -> None:
    """Bring the schema of ``migrations`` to ``revision``; a no-op when it is already there."""
    await run_locked(engine, lock_key, lambda connection: command.upgrade(alembic_config(migrations, connection),
                                                                          revision))


def run_environment(
    metadata: MetaData, *, version_table: str = "alembic_version", own_tables_only: bool = False
) -> None:
    """The body of a service's Alembic ``env.py``: run the migrations on the connection the service's
    ``upgrade`` handed over, history in ``version_table``. With ``own_tables_only``, autogenerate looks at
    ``metadata``'s tables only, so that it never proposes to drop the tables of a service sharing the database."""

    def own_table(name: str | None, type_: str, _parent_names: Any) -> bool:
        return type_ != "table" or name in metadata.tables

    context.configure(
        connection=context.config.attributes["connection"], target_metadata=metadata, version_table=version_table,
        include_name=own_table if own_tables_only else None, render_as_batch=True, compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
