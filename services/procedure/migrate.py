"""Database migrations of the procedure service (Alembic), run at start or by `luccs-fallback migrate`."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import migrations

MIGRATIONS = Path(__file__).with_name("migrations")
# Serialises concurrent upgrades of one PostgreSQL database (the migrate job and the service starting).
_LOCK_KEY = int.from_bytes(b"luccsPRC", "big")


def alembic_config(connection: Connection | None = None) -> Config:
    return migrations.alembic_config(MIGRATIONS, connection)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (the latest by default); a no-op when it is already there."""
    await migrations.upgrade(engine, MIGRATIONS, lock_key=_LOCK_KEY, revision=revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The procedure schema's revision in this database (None: no migration has run)."""
    return await migrations.current_revision(engine)
