"""Dependencies of the API routes: the service objects and who is calling (401 without, 403 wrong)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure.handlers import ProcedureService
from services.procedure.models import EoRow
from services.procedure.registry import EoRegistry
from shared.config import Settings


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _service(request: Request) -> ProcedureService:
    service: ProcedureService = request.app.state.procedures
    return service


def _registry(request: Request) -> EoRegistry:
    registry: EoRegistry = request.app.state.registry
    return registry


def _sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    return sessions


def _bearer(request: Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "missing credentials: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


def _match(token: str, tokens: list[SecretStr]) -> str | None:
    """A short, non-secret name for the matching token (for the audit trail), or None."""
    for candidate in tokens:
        if hmac.compare_digest(candidate.get_secret_value().encode(), token.encode()):
            return "operator:" + hashlib.sha256(token.encode()).hexdigest()[:8]
    return None


async def require_operator(request: Request, settings: Annotated[Settings, Depends(_settings)]) -> str:
    token = _bearer(request)
    actor = _match(token, settings.api.operator_tokens)
    if actor is None:
        raise HTTPException(403, "this token is not an operator token")
    return actor


async def require_reader(request: Request, settings: Annotated[Settings, Depends(_settings)]) -> None:
    if not settings.api.read_requires_token:
        return
    token = _bearer(request)
    if _match(token, [*settings.api.operator_tokens, *settings.api.read_tokens]) is None:
        raise HTTPException(403, "this token may not read")


async def require_eo(request: Request, registry: Annotated[EoRegistry, Depends(_registry)]) -> EoRow:
    eo = await registry.authenticate(_bearer(request))
    if eo is None:
        raise HTTPException(403, "unknown EO API key")
    return eo


SettingsDep = Annotated[Settings, Depends(_settings)]
ServiceDep = Annotated[ProcedureService, Depends(_service)]
RegistryDep = Annotated[EoRegistry, Depends(_registry)]
SessionsDep = Annotated[async_sessionmaker[AsyncSession], Depends(_sessions)]
Operator = Annotated[str, Depends(require_operator)]
Reader = Depends(require_reader)
EoCaller = Annotated[EoRow, Depends(require_eo)]
