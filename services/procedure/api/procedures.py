"""Status, procedures, operator commands, EO self-reports and the live stream."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure import domain
from services.procedure.api.deps import ClockDep, ServiceDep, SessionsDep
from services.procedure.domain import Rejected
from services.procedure.handlers import ProcedureService, find_active
from services.procedure.models import ProcedureRow
from services.procedure.queries import procedure_detail, procedure_view, status_snapshot
from services.procedure.recorder import active_view
from services.procedure.schemas import BroadcastBody, BroadcastSent, Declare, EoReport, Eori, Note, Reason
from shared.auth import Caller, refuse
from shared.events import Broadcast, LocalisedText, ProcedureState, Scenario, Scope
from shared.roles import Role

router = APIRouter(prefix="/api/v1")


def _encode_cursor(row: ProcedureRow) -> str:
    return base64.urlsafe_b64encode(f"{row.created_at.isoformat()}|{row.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, _, procedure_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(created), procedure_id
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, "invalid cursor: use the 'next' value of the previous page") from exc


@router.get("/status", tags=["status"],
            summary="Every component's state, since when and on what evidence; active procedures and advisories "
                    "(EO endpoints and scenario-1 procedures only for who may read them)")
async def status(caller: Caller, service: ServiceDep, sessions: SessionsDep) -> dict[str, Any]:
    return await status_snapshot(service, sessions, reader=caller)


@router.get("/procedures", tags=["procedures"],
            summary="Procedures, newest first (scenario-1 ones only for who may read that EO's)")
async def list_procedures(
    caller: Caller,
    sessions: SessionsDep,
    state: Annotated[ProcedureState | None, Query(description="open, closed or proposed")] = None,
    scenario: Scenario | None = None,
    eori: Eori | None = None,
    since: Annotated[datetime | None, Query(description="created at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="created before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(description="'next' of the previous page")] = None,
) -> dict[str, Any]:
    if not caller.may_read_eo(eori):
        raise refuse(caller, "read another EO's procedures")
    query = select(ProcedureRow).order_by(ProcedureRow.created_at.desc(), ProcedureRow.id.desc())
    if not caller.reads_every_eo:
        query = query.where(or_(ProcedureRow.eori.is_(None), ProcedureRow.eori == caller.eori))
    for column, value in ((ProcedureRow.state, state), (ProcedureRow.scenario, scenario), (ProcedureRow.eori, eori)):
        if value is not None:
            query = query.where(column == value)
    if any(t is not None and t.tzinfo is None for t in (since, until)):
        raise HTTPException(400, "times need a timezone, e.g. 2026-11-27T08:00:00Z")
    if since is not None:
        query = query.where(ProcedureRow.created_at >= since)
    if until is not None:
        query = query.where(ProcedureRow.created_at < until)
    if cursor is not None:
        created, procedure_id = _decode_cursor(cursor)
        query = query.where(or_(ProcedureRow.created_at < created,
                                and_(ProcedureRow.created_at == created, ProcedureRow.id < procedure_id)))
    async with sessions() as session:
        rows = (await session.scalars(query.limit(limit + 1))).all()
    return {
        "items": [procedure_view(r) for r in rows[:limit]],
        "next": _encode_cursor(rows[limit - 1]) if len(rows) > limit else None,
    }


@router.get("/procedures/{procedure_id}", tags=["procedures"],
            summary="One procedure with its timeline (the audit trail, with evidence)")
async def get_procedure(procedure_id: str, caller: Caller, sessions: SessionsDep) -> dict[str, Any]:
    found = await procedure_detail(sessions, procedure_id)
    if found is None:
        raise HTTPException(404, f"no procedure {procedure_id!r}")
    if not caller.may_read_eo(found["eori"]):
        raise refuse(caller, "read another EO's procedure")
    return found


def _rejected(exc: Exception) -> HTTPException:
    return HTTPException(409 if isinstance(exc, Rejected) else 422, str(exc))


@router.post("/procedures", tags=["operator"], status_code=201,
             summary="Declare a procedure by hand (scenario 1 needs the EO's eori)")
async def declare(body: Declare, caller: Caller, service: ServiceDep) -> dict[str, Any]:
    try:
        row, _ = await service.command(
            lambda active: domain.declare(scenario=body.scenario, eori=body.eori, reason=body.reason,
                                          active=[active_view(r) for r in active]),
            actor=caller.name, auto_close=body.auto_close,
        )
    except (Rejected, ValueError) as exc:
        raise _rejected(exc) from exc
    assert row is not None
    return procedure_view(row)


async def _existing(sessions: SessionsDep, procedure_id: str) -> None:
    async with sessions() as session:
        if await session.get(ProcedureRow, procedure_id) is None:
            raise HTTPException(404, f"no procedure {procedure_id!r}")


async def _on_procedure(
    procedure_id: str,
    command: Callable[..., domain.Decision],
    *,
    reason: str,
    actor: str,
    service: ProcedureService,
    sessions: async_sessionmaker[AsyncSession],
) -> dict[str, Any]:
    """Run an operator command (confirm, close) on one procedure: 404 if unknown, 409 if it does not fit."""
    await _existing(sessions, procedure_id)

    def decide(active: list[ProcedureRow]) -> domain.Decision:
        found = next((active_view(r) for r in active if r.id == procedure_id), None)
        return command(procedure=found, reason=reason)

    try:
        row, _ = await service.command(decide, actor=actor)
    except Rejected as exc:
        raise _rejected(exc) from exc
    assert row is not None
    return procedure_view(row)


@router.post("/procedures/{procedure_id}/confirm", tags=["operator"],
             summary="Confirm a proposed procedure: it opens and EOs are told")
async def confirm(procedure_id: str, body: Reason, caller: Caller, service: ServiceDep,
                  sessions: SessionsDep) -> dict[str, Any]:
    return await _on_procedure(procedure_id, domain.confirm, reason=body.reason, actor=caller.name, service=service,
                               sessions=sessions)


@router.post("/procedures/{procedure_id}/close", tags=["operator"],
             summary="Close an open procedure, or dismiss a proposed one")
async def close(procedure_id: str, body: Reason, caller: Caller, service: ServiceDep,
                sessions: SessionsDep) -> dict[str, Any]:
    return await _on_procedure(procedure_id, domain.close, reason=body.reason, actor=caller.name, service=service,
                               sessions=sessions)


@router.post("/procedures/{procedure_id}/notes", tags=["operator"], status_code=201,
             summary="Add a note to a procedure's timeline")
async def add_note(procedure_id: str, body: Note, caller: Caller, service: ServiceDep) -> dict[str, str]:
    try:
        await service.add_note(procedure_id, text=body.text, actor=caller.name)
    except LookupError as exc:
        raise HTTPException(404, f"no procedure {procedure_id!r}") from exc
    return {"status": "noted"}


@router.post("/eo-reports", tags=["eo"], summary="An EO reports its own B2G system down or back up")
async def eo_report(body: EoReport, caller: Caller, service: ServiceDep) -> dict[str, Any]:
    if caller.role != Role.EO or caller.eori != body.eori:
        raise HTTPException(403, "an EO may only report for its own EORI")

    def decide(active: list[ProcedureRow]) -> domain.Decision | None:
        current = find_active(active, scope=Scope.EO, eori=body.eori)
        return domain.eo_report(eori=body.eori, down=body.status == "down",
                                current=active_view(current) if current else None, detail=body.detail)

    row, decision = await service.command(decide, actor=caller.name, auto_close=False)
    if decision is None or row is None:
        return {"result": "no change", "detail": "already " + ("open" if body.status == "down" else "closed")}
    return {"result": decision.action.value, "procedure": procedure_view(row)}


@router.get("/stream", tags=["status"],
            summary="Server-sent events: procedure, advisory, status and note changes as they happen "
                    "(an EO's only for who may read them)")
async def stream(caller: Caller, service: ServiceDep) -> StreamingResponse:
    return StreamingResponse(service.broadcaster.subscribe(visible=caller.may_read_eo), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/procedures/{procedure_id}/broadcasts", tags=["operator"], status_code=201,
             response_model=BroadcastSent,
             summary="Send the Servicedesk's or the Bureau's own words to every EO the procedure concerns, "
                     "each in its language (webhook and e-mail like every notice); noted in the timeline")
async def broadcast(procedure_id: str, body: BroadcastBody, caller: Caller, service: ServiceDep,
                    clock: ClockDep) -> BroadcastSent:
    message = Broadcast(broadcast_id=str(uuid.uuid4()), author=body.author, text=LocalisedText(**body.text),
                        sent_at=clock())
    try:
        event = await service.broadcast(procedure_id, message=message, actor=caller.name)
    except LookupError as exc:
        raise HTTPException(404, f"no procedure {procedure_id!r}") from exc
    except Rejected as exc:
        raise HTTPException(409, str(exc)) from exc
    return BroadcastSent(broadcast_id=message.broadcast_id, procedure_id=procedure_id, event_id=event.id,
                         author=message.author, sent_at=event.time, scope=event.data.scope.value,
                         eori=event.data.eori)
