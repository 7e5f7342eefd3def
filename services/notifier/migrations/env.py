"""Alembic environment: runs on the connection handed over by services.notifier.migrate.

The notifier keeps its history in a version table of its own, so that it never reads the procedure
service's (``alembic_version``) where both are visible, and autogenerate only looks at the notifier's tables.
"""

from __future__ import annotations

from services.notifier.migrate import VERSION_TABLE
from services.notifier.models import Base
from shared.migrations import run_environment

run_environment(Base.metadata, version_table=VERSION_TABLE, own_tables_only=True)
