"""Database migrations of the detector (Alembic), run at start.

The detector's history is kept in a version table of its own (``alembic_version_detector``) and its tables
are named ``detector_*``: it may share one PostgreSQL database with the procedure service and the notifier
without taking their revisions or tables for its own.
"""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import migrations

__all__ = ["VERSION_TABLE", "alembic_config", "current_revision", "upgrade"]

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version_detector"
# Serialises concurrent upgrades of one PostgreSQL database (several detectors starting at once).
_LOCK_KEY = int.from_bytes(b"luccsDET", "big")


def alembic_config(connection: Connection | None = None) -> Config:
    return migrations.alembic_config(MIGRATIONS, connection)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the detector's schema to ``revision`` (the latest by default); a no-op when it is already there."""
    await migrations.upgrade(engine, MIGRATIONS, lock_key=_LOCK_KEY, revision=revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The detector schema's revision in this database (None: no detector migration has run)."""
    return await migrations.current_revision(engine, VERSION_TABLE)
