"""Dependencies of the API routes: the service objects. Who is calling: ``shared.auth.Caller``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure.commands import ProcedureCommands
from services.procedure.handlers import ProcedureService
from services.procedure.notifier_summary import NotifierSummary
from services.procedure.registry import EoRegistry
from shared.config import Settings


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _service(request: Request) -> ProcedureService:
    service: ProcedureService = request.app.state.procedures
    return service


def _commands(request: Request) -> ProcedureCommands:
    commands: ProcedureCommands = request.app.state.commands
    return commands


def _registry(request: Request) -> EoRegistry:
    registry: EoRegistry = request.app.state.registry
    return registry


def _sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    return sessions


def _clock(request: Request) -> Callable[[], datetime]:
    clock: Callable[[], datetime] = request.app.state.clock
    return clock


def _notifier_summary(request: Request) -> NotifierSummary | None:
    summary: NotifierSummary | None = request.app.state.notifier_summary
    return summary


SettingsDep = Annotated[Settings, Depends(_settings)]
ServiceDep = Annotated[ProcedureService, Depends(_service)]
CommandsDep = Annotated[ProcedureCommands, Depends(_commands)]
RegistryDep = Annotated[EoRegistry, Depends(_registry)]
SessionsDep = Annotated[async_sessionmaker[AsyncSession], Depends(_sessions)]
ClockDep = Annotated[Callable[[], datetime], Depends(_clock)]
"""What time it is for the service (injected, so that tests control it)."""


NotifierSummaryDep = Annotated[NotifierSummary | None, Depends(_notifier_summary)]
