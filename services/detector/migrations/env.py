"""Alembic environment: runs on the connection handed over by services.detector.migrate.

The detector keeps its history in ``alembic_version_detector`` and autogenerate only looks at its own
tables (``detector_*``), so that it never proposes to drop the tables of a service sharing the database.
"""

from __future__ import annotations

from typing import Any

from alembic import context

from services.detector.migrate import VERSION_TABLE
from services.detector.models import Base


def _detector_table(name: str | None, type_: str, _parent_names: Any) -> bool:
    return type_ != "table" or name in Base.metadata.tables


connection = context.config.attributes["connection"]
context.configure(
    connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE,
    include_name=_detector_table, render_as_batch=True, compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
