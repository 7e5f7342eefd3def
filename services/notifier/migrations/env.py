"""Alembic environment: runs on the connection handed over by services.notifier.migrate.

The notifier keeps its history in a version table of its own, so that it never reads the procedure
service's (``alembic_version``) where both are visible, and autogenerate only looks at the notifier's tables.
"""

from __future__ import annotations

from typing import Any

from alembic import context

from services.notifier.migrate import VERSION_TABLE
from services.notifier.models import Base


def _notifier_table(name: str | None, type_: str, _parent_names: Any) -> bool:
    return type_ != "table" or name in Base.metadata.tables


connection = context.config.attributes["connection"]
context.configure(
    connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE,
    include_name=_notifier_table, render_as_batch=True, compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
