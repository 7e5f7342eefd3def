"""Status, procedures, operator commands, EO self-reports and the live stream."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse

from services.procedure.api.deps import CommandsDep, ServiceDep, SessionsDep
from services.procedure.queries import procedure_detail, procedure_page, status_snapshot
from services.procedure.schemas import BroadcastBody, BroadcastSent, Declare, EoReport, Eori, Note, Reason
from services.procedure.views import (
    EoReportResult,
    NoteAdded,
    ProcedureDetail,
    ProcedurePage,
    ProcedureView,
    StatusView,
)
from shared.auth import Caller, refuse
from shared.errors import Responses
from shared.events import LocalisedText, ProcedureState, Scenario
from shared.paging import CURSOR_MAX_LENGTH
from shared.roles import Role

router = APIRouter(prefix="/api/v1")

_NOT_FOUND: Responses = {404: {"description": "No such procedure"}}
_CONFLICT: Responses = {409: {"description": "The command does not fit the procedure's state"}}


@router.get("/status", tags=["status"], response_model=StatusView,
            summary="Every component's state, since when and on what evidence; active procedures and advisories "
                    "(EO endpoints and scenario-1 procedures only for who may read them)")
async def status(caller: Caller, service: ServiceDep, sessions: SessionsDep) -> StatusView:
    return await status_snapshot(service, sessions, reader=caller)


@router.get("/procedures", tags=["procedures"], response_model=ProcedurePage,
            responses={400: {"description": "A time without a timezone, or a cursor that is not the `next` of a "
                                            "previous page"},
                       403: {"description": "Another EO's procedures"}},
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
    cursor: Annotated[str | None, Query(max_length=CURSOR_MAX_LENGTH, description="'next' of the previous page")]
    = None,
) -> ProcedurePage:
    if not caller.may_read_eo(eori):
        raise refuse(caller, "read another EO's procedures")
    return await procedure_page(sessions, reader=caller, state=state, scenario=scenario, eori=eori, since=since,
                                until=until, limit=limit, cursor=cursor)


@router.get("/procedures/{procedure_id}", tags=["procedures"], response_model=ProcedureDetail, responses=_NOT_FOUND,
            summary="One procedure with its timeline (the audit trail, with evidence)")
async def get_procedure(procedure_id: str, caller: Caller, sessions: SessionsDep) -> ProcedureDetail:
    found = await procedure_detail(sessions, procedure_id)
    if not caller.may_read_eo(found.eori):
        raise refuse(caller, "read another EO's procedure")
    return found


@router.post("/procedures", tags=["operator"], status_code=201, response_model=ProcedureView, responses=_CONFLICT,
             summary="Declare a procedure by hand (scenario 1 needs the EO's eori)")
async def declare(body: Declare, caller: Caller, commands: CommandsDep) -> ProcedureView:
    return await commands.declare(scenario=body.scenario, eori=body.eori, reason=body.reason, actor=caller.name,
                                  auto_close=body.auto_close)


@router.post("/procedures/{procedure_id}/confirm", tags=["operator"], response_model=ProcedureView,
             responses=_NOT_FOUND | _CONFLICT,
             summary="Confirm a proposed procedure: it opens and EOs are told")
async def confirm(procedure_id: str, body: Reason, caller: Caller, commands: CommandsDep) -> ProcedureView:
    return await commands.confirm(procedure_id=procedure_id, reason=body.reason, actor=caller.name)


@router.post("/procedures/{procedure_id}/close", tags=["operator"], response_model=ProcedureView,
             responses=_NOT_FOUND | _CONFLICT,
             summary="Close an open procedure, or dismiss a proposed one")
async def close(procedure_id: str, body: Reason, caller: Caller, commands: CommandsDep) -> ProcedureView:
    return await commands.close(procedure_id=procedure_id, reason=body.reason, actor=caller.name)


@router.post("/procedures/{procedure_id}/notes", tags=["operator"], status_code=201, response_model=NoteAdded,
             responses=_NOT_FOUND, summary="Add a note to a procedure's timeline")
async def add_note(procedure_id: str, body: Note, caller: Caller, commands: CommandsDep) -> NoteAdded:
    await commands.note(procedure_id=procedure_id, text=body.text, actor=caller.name)
    return NoteAdded(status="noted")


@router.post("/eo-reports", tags=["eo"], response_model=EoReportResult,
             responses=_CONFLICT, summary="An EO reports its own B2G system down or back up")
async def eo_report(body: EoReport, caller: Caller, commands: CommandsDep) -> EoReportResult:
    if caller.role != Role.EO or caller.eori != body.eori:
        raise HTTPException(403, "an EO may only report for its own EORI")
    return await commands.eo_report(eori=body.eori, down=body.status == "down", detail=body.detail,
                                    actor=caller.name)


@router.get("/stream", tags=["status"], response_class=StreamingResponse,
            responses={200: {"description": "Server-sent events (procedure, advisory, status, note)",
                             "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
            summary="Server-sent events: procedure, advisory, status and note changes as they happen "
                    "(an EO's only for who may read them)")
async def stream(caller: Caller, service: ServiceDep) -> StreamingResponse:
    return StreamingResponse(service.broadcaster.subscribe(visible=caller.may_read_eo), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/procedures/{procedure_id}/broadcasts", tags=["operator"], status_code=201,
             response_model=BroadcastSent, responses=_NOT_FOUND | _CONFLICT,
             summary="Send the Servicedesk's or the Bureau's own words to every EO the procedure concerns, "
                     "each in its language (webhook and e-mail like every notice); noted in the timeline")
async def broadcast(procedure_id: str, body: BroadcastBody, caller: Caller, commands: CommandsDep) -> BroadcastSent:
    return await commands.broadcast(procedure_id=procedure_id, text=LocalisedText(**body.text), author=body.author,
                                    actor=caller.name)
