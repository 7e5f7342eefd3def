"""Read API of the procedure service (the system of record): status and procedures."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure.handlers import ACTIVE_STATES, ProcedureService
from services.procedure.models import ProcedureRow, TimelineRow
from shared.events import ProcedureState

router = APIRouter(prefix="/api/v1", tags=["procedures"])


def _service(request: Request) -> ProcedureService:
    service: ProcedureService = request.app.state.procedures
    return service


def _sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    return sessions


def _procedure(row: ProcedureRow) -> dict[str, Any]:
    return {
        "procedure_id": row.id,
        "scenario": row.scenario,
        "scope": row.scope,
        "eori": row.eori,
        "state": row.state,
        "reason": row.reason,
        "opened_at": row.opened_at,
        "closed_at": row.closed_at,
        "updated_at": row.updated_at,
    }


def _cursor(raw: str | None) -> int:
    if raw is None:
        return 0
    if not raw.isdigit():
        raise HTTPException(400, "invalid cursor: use the 'next' value of the previous page")
    return int(raw)


@router.get("/status", summary="Every component's state with its evidence, and the active procedures")
async def status(request: Request) -> dict[str, Any]:
    views = await _service(request).views(now=datetime.now(UTC))
    async with _sessions(request)() as session:
        active = (await session.scalars(select(ProcedureRow).where(ProcedureRow.state.in_(ACTIVE_STATES)))).all()
    return {
        "components": [
            {
                "component": view.component,
                "state": view.state,
                "evidence": [
                    {
                        "target_id": o.target_id,
                        "detector_instance": o.detector_instance,
                        "state": o.state,
                        "observed_at": o.observed_at,
                        "reason": o.reason,
                    }
                    for o in view.evidence
                ],
            }
            for view in views.values()
        ],
        "procedures": [_procedure(row) for row in active],
    }


@router.get("/procedures", summary="Procedures, newest first")
async def list_procedures(
    request: Request,
    state: Annotated[ProcedureState | None, Query(description="open, closed or proposed")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(description="'next' of the previous page")] = None,
) -> dict[str, Any]:
    offset = _cursor(cursor)
    query = select(ProcedureRow).order_by(ProcedureRow.updated_at.desc(), ProcedureRow.id)
    if state is not None:
        query = query.where(ProcedureRow.state == state.value)
    async with _sessions(request)() as session:
        rows = (await session.scalars(query.offset(offset).limit(limit + 1))).all()
    more = len(rows) > limit
    return {"items": [_procedure(r) for r in rows[:limit]], "next": str(offset + limit) if more else None}


@router.get("/procedures/{procedure_id}", summary="One procedure with its timeline (the audit trail)")
async def get_procedure(request: Request, procedure_id: str) -> dict[str, Any]:
    async with _sessions(request)() as session:
        row = await session.get(ProcedureRow, procedure_id)
        if row is None:
            raise HTTPException(404, f"no procedure {procedure_id!r}")
        timeline = (
            await session.scalars(
                select(TimelineRow).where(TimelineRow.procedure_id == procedure_id).order_by(TimelineRow.id)
            )
        ).all()
    return _procedure(row) | {
        "timeline": [
            {
                "at": t.at,
                "kind": t.kind,
                "scenario": t.scenario,
                "previous_scenario": t.previous_scenario,
                "reason": t.reason,
                "event_id": t.event_id,
                "evidence": t.evidence,
            }
            for t in timeline
        ]
    }
