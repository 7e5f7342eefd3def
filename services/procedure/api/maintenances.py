"""Maintenance windows: operators schedule, change and cancel them; anyone allowed to read national data
lists them, and EOs' calendars subscribe to the .ics feed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response
from sqlalchemy import select

from services.procedure import maintenances
from services.procedure.api.deps import ClockDep, ServiceDep, SessionsDep
from services.procedure.domain import Rejected
from services.procedure.models import MaintenanceRow
from services.procedure.schemas import MaintenanceCreate, MaintenanceList, MaintenancePatch, MaintenanceView, Reason
from shared.auth import Caller
from shared.events import MaintenanceState

router = APIRouter(prefix="/api/v1", tags=["maintenance"])


def _view(row: MaintenanceRow) -> MaintenanceView:
    return MaintenanceView(
        maintenance_id=row.id, component=row.component, starts_at=row.starts_at, ends_at=row.ends_at,
        state=MaintenanceState(row.state), reason=row.reason, message=row.message, procedure_id=row.procedure_id,
        overran=row.overran, reminders_sent_s=sorted(row.reminders_sent or []), created_at=row.created_at,
        updated_at=row.updated_at,
    )


@router.post("/maintenances", status_code=201, response_model=MaintenanceView,
             summary="Schedule a maintenance window; every EO is told, in its language, and reminded before it")
async def schedule(body: MaintenanceCreate, caller: Caller, service: ServiceDep) -> MaintenanceView:
    try:
        row = await service.record(lambda session, recorder: maintenances.schedule(
            session, recorder, component=body.component, starts_at=body.starts_at, ends_at=body.ends_at,
            reason=body.reason, message=body.message,
        ))
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    return _view(row)


@router.get("/maintenances", response_model=MaintenanceList, summary="Maintenance windows, by start")
async def list_maintenances(
    caller: Caller, sessions: SessionsDep,
    state: Annotated[MaintenanceState | None, Query(description="scheduled, active, done or cancelled")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 500,
) -> MaintenanceList:
    query = select(MaintenanceRow).order_by(MaintenanceRow.starts_at.desc(), MaintenanceRow.id)
    if state is not None:
        query = query.where(MaintenanceRow.state == state.value)
    async with sessions() as session:
        rows = (await session.scalars(query.limit(limit))).all()
    return MaintenanceList(items=[_view(r) for r in rows], next=None)


@router.get("/maintenances.ics", response_class=Response,
            responses={200: {"content": {"text/calendar": {}}, "description": "iCalendar (RFC 5545) feed"}},
            summary="The maintenance windows as an iCalendar feed, for EOs' calendars")
async def ics(caller: Caller, sessions: SessionsDep, clock: ClockDep) -> Response:
    async with sessions() as session:
        rows = (await session.scalars(select(MaintenanceRow).order_by(MaintenanceRow.starts_at))).all()
    return Response(maintenances.calendar(rows, now=clock()), media_type="text/calendar; charset=utf-8")


@router.get("/maintenances/{maintenance_id}", response_model=MaintenanceView, summary="One maintenance window")
async def get_maintenance(maintenance_id: str, caller: Caller, sessions: SessionsDep) -> MaintenanceView:
    async with sessions() as session:
        row = await session.get(MaintenanceRow, maintenance_id)
    if row is None:
        raise HTTPException(404, f"no maintenance {maintenance_id!r}")
    return _view(row)


@router.patch("/maintenances/{maintenance_id}", response_model=MaintenanceView,
              summary="Reschedule, extend or reword a window (while active: its end only); EOs are told")
async def change(maintenance_id: str, body: MaintenancePatch, caller: Caller, service: ServiceDep
                 ) -> MaintenanceView:
    try:
        row = await service.record(lambda session, recorder: maintenances.change(
            session, recorder, maintenance_id=maintenance_id, starts_at=body.starts_at, ends_at=body.ends_at,
            reason=body.reason, message=body.message,
        ))
    except LookupError as exc:
        raise HTTPException(404, f"no maintenance {maintenance_id!r}") from exc
    except Rejected as exc:
        raise HTTPException(409, str(exc)) from exc
    return _view(row)


@router.post("/maintenances/{maintenance_id}/cancel", response_model=MaintenanceView,
             summary="Cancel a scheduled window; EOs are told")
async def cancel(maintenance_id: str, body: Reason, caller: Caller, service: ServiceDep) -> MaintenanceView:
    try:
        row = await service.record(lambda session, recorder: maintenances.cancel(
            session, recorder, maintenance_id=maintenance_id, reason=body.reason,
        ))
    except LookupError as exc:
        raise HTTPException(404, f"no maintenance {maintenance_id!r}") from exc
    except Rejected as exc:
        raise HTTPException(409, str(exc)) from exc
    return _view(row)
