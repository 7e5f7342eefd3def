"""Maintenance windows: operators schedule, change and cancel them; anyone allowed to read national data
lists them, and EOs' calendars subscribe to the .ics feed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from services.procedure import maintenances
from services.procedure.api.deps import ClockDep, CommandsDep, SessionsDep
from services.procedure.queries import maintenance, maintenance_rows, maintenance_view
from services.procedure.schemas import MaintenanceCreate, MaintenanceList, MaintenancePatch, MaintenanceView, Reason
from shared.auth import Caller
from shared.errors import Responses
from shared.events import MaintenanceState
from shared.paging import CURSOR_MAX_LENGTH, next_cursor

router = APIRouter(prefix="/api/v1", tags=["maintenance"])

_NOT_FOUND: Responses = {404: {"description": "No such maintenance window"}}
_CONFLICT: Responses = {409: {"description": "The change does not fit the window's state"}}


@router.post("/maintenances", status_code=201, response_model=MaintenanceView,
             summary="Schedule a maintenance window; every EO is told, in its language, and reminded before it")
async def schedule(body: MaintenanceCreate, caller: Caller, commands: CommandsDep) -> MaintenanceView:
    return await commands.schedule_maintenance(component=body.component, starts_at=body.starts_at,
                                               ends_at=body.ends_at, reason=body.reason, message=body.message)


@router.get("/maintenances", response_model=MaintenanceList,
            responses={400: {"description": "A cursor that is not the `next` of a previous page"}},
            summary="Maintenance windows, latest start first")
async def list_maintenances(
    caller: Caller, sessions: SessionsDep,
    state: Annotated[MaintenanceState | None, Query(description="scheduled, active, done or cancelled")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 500,
    cursor: Annotated[str | None, Query(max_length=CURSOR_MAX_LENGTH, description="'next' of the previous page")]
    = None,
) -> MaintenanceList:
    rows = await maintenance_rows(sessions, state=state, limit=limit, cursor=cursor)
    return MaintenanceList(items=[maintenance_view(r) for r in rows[:limit]],
                           next=next_cursor(rows, limit=limit, key=lambda r: (r.starts_at.isoformat(), r.id)))


@router.get("/maintenances.ics", response_class=Response,
            responses={200: {"content": {"text/calendar": {"schema": {"type": "string"}}},
                             "description": "iCalendar (RFC 5545) feed"}},
            summary="The maintenance windows as an iCalendar feed, for EOs' calendars")
async def ics(caller: Caller, sessions: SessionsDep, clock: ClockDep) -> Response:
    rows = await maintenance_rows(sessions, newest_first=False)
    return Response(maintenances.calendar(rows, now=clock()), media_type="text/calendar; charset=utf-8")


@router.get("/maintenances/{maintenance_id}", response_model=MaintenanceView, responses=_NOT_FOUND,
            summary="One maintenance window")
async def get_maintenance(maintenance_id: str, caller: Caller, sessions: SessionsDep) -> MaintenanceView:
    return await maintenance(sessions, maintenance_id)


@router.patch("/maintenances/{maintenance_id}", response_model=MaintenanceView, responses=_NOT_FOUND | _CONFLICT,
              summary="Reschedule, extend or reword a window (while active: its end only); EOs are told")
async def change(maintenance_id: str, body: MaintenancePatch, caller: Caller, commands: CommandsDep
                 ) -> MaintenanceView:
    return await commands.change_maintenance(maintenance_id=maintenance_id, starts_at=body.starts_at,
                                             ends_at=body.ends_at, reason=body.reason, message=body.message)


@router.post("/maintenances/{maintenance_id}/cancel", response_model=MaintenanceView,
             responses=_NOT_FOUND | _CONFLICT, summary="Cancel a scheduled window; EOs are told")
async def cancel(maintenance_id: str, body: Reason, caller: Caller, commands: CommandsDep) -> MaintenanceView:
    return await commands.cancel_maintenance(maintenance_id=maintenance_id, reason=body.reason)
