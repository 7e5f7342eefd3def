"""Alembic environment: runs on the connection handed over by services.detector.migrate.

The detector keeps its history in ``alembic_version_detector`` and autogenerate only looks at its own
tables (``detector_*``), so that it never proposes to drop the tables of a service sharing the database.
"""

from __future__ import annotations

from services.detector.migrate import VERSION_TABLE
from services.detector.models import Base
from shared.migrations import run_environment

run_environment(Base.metadata, version_table=VERSION_TABLE, own_tables_only=True)
