"""Database migrations of the detector (Alembic), run at start.

The detector's history is kept in a version table of its own (``alembic_version_detector``) and its tables
are named ``detector_*``: it may share one PostgreSQL database with the procedure service and the notifier
without taking their revisions or tables for its own.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.migrations import alembic_lock

__all__ = ["VERSION_TABLE", "alembic_config", "current_revision", "upgrade"]

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version_detector"
# Serialises concurrent upgrades of one PostgreSQL database (several detectors starting at once).
_LOCK_KEY = int.from_bytes(b"luccsDET", "big")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the detector's schema to ``revision`` (the latest by default); a no-op when it is already there.

    Holds :func:`~shared.migrations.alembic_lock`: another service's upgrade in this process waits for it.
    """

    def run(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        command.upgrade(alembic_config(connection), revision)

    async with alembic_lock(), engine.begin() as connection:
        await connection.run_sync(run)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The detector schema's revision in this database (None: no detector migration has run)."""

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(read)
