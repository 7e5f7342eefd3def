"""Alembic environment: runs on the connection handed over by services.procedure.migrate."""

from __future__ import annotations

from services.procedure.models import Base
from shared.migrations import run_environment

run_environment(Base.metadata)
