"""Read side of the procedure service: what the status API, the procedure API and the status page show,
as the typed views of :mod:`services.procedure.views`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure.handlers import ProcedureService
from services.procedure.leadership import Leadership
from services.procedure.models import AdvisoryRow, ComponentRow, MaintenanceRow, ProcedureRow, TimelineRow
from services.procedure.recorder import ACTIVE_STATES
from services.procedure.schemas import MaintenanceView
from services.procedure.views import (
    AdvisoryView,
    ComponentStatus,
    EvidenceView,
    InstanceView,
    LeaderView,
    ProcedureDetail,
    ProcedurePage,
    ProcedureView,
    StatusView,
    TimelineEntryView,
)
from shared.errors import ClientError, NotFound
from shared.events import ComponentState, MaintenanceState, ProcedureState, Scenario
from shared.paging import decode_cursor, decode_moment, next_cursor
from shared.roles import Principal


def procedure_view(row: ProcedureRow) -> ProcedureView:
    return ProcedureView.model_validate({
        "procedure_id": row.id, "scenario": row.scenario, "scope": row.scope, "eori": row.eori, "state": row.state,
        "origin": row.origin, "auto_close": row.auto_close, "reason": row.reason, "created_at": row.created_at,
        "opened_at": row.opened_at, "closed_at": row.closed_at, "updated_at": row.updated_at,
        "maintenance_id": row.maintenance_id,
    })


async def leadership_view(leadership: Leadership) -> dict[str, LeaderView | InstanceView | None]:
    """Who leads (from the lease row; None when the lease has run out) and this instance's role."""
    leader = await leadership.leader()
    return {
        "leader": None if leader is None else LeaderView(instance_id=leader.instance_id, since=leader.since,
                                                         epoch=leader.epoch),
        "instance": InstanceView(id=leadership.instance_id, role=leadership.role),
    }


async def status_snapshot(
    service: ProcedureService, sessions: async_sessionmaker[AsyncSession], *, reader: Principal
) -> StatusView:
    """Every national component with state, since and evidence; EO endpoints down; active procedures;
    who leads. EO endpoints and scenario-1 procedures only as far as ``reader`` may read that EO's data."""
    views = service.views()
    async with sessions() as session:
        since = {r.component: r.since for r in (await session.scalars(select(ComponentRow))).all()}
        active = (await session.scalars(
            select(ProcedureRow).where(ProcedureRow.state.in_(ACTIVE_STATES)).order_by(ProcedureRow.created_at)
        )).all()
        advisories = (await session.scalars(select(AdvisoryRow).where(AdvisoryRow.active.is_(True)))).all()
    status = StatusView(
        components=[
            ComponentStatus(
                component=view.component, state=view.state, since=since.get(view.component),
                evidence=[EvidenceView(target_id=o.target_id, detector_instance=o.detector_instance, state=o.state,
                                       observed_at=o.observed_at, reason=o.reason) for o in view.evidence],
            )
            for view in views.national.values()
        ],
        eo_endpoints_down=sorted(
            e for e, v in views.eos.items() if v.state == ComponentState.DOWN and reader.may_read_eo(e)
        ),
        procedures=[procedure_view(row) for row in active if reader.may_read_eo(row.eori)],
        advisories=[AdvisoryView.model_validate({
            "advisory_id": a.id, "kind": a.kind, "components": a.components, "reason": a.reason,
            "raised_at": a.raised_at, "certificate": (a.detail or {}).get("certificate")}) for a in advisories],
    )
    if service.leadership is not None:
        leading = await leadership_view(service.leadership)
        status.leader = leading["leader"]  # type: ignore[assignment]
        status.instance = leading["instance"]  # type: ignore[assignment]
    return status


async def procedure_subject(sessions: async_sessionmaker[AsyncSession], procedure_id: str) -> str | None:
    """The EORI a procedure is about (``None``: a national one), to authorize a read of its details;
    :class:`NotFound` if there is no such procedure."""
    async with sessions() as session:
        row = await session.get(ProcedureRow, procedure_id)
    if row is None:
        raise NotFound(f"no procedure {procedure_id!r}")
    return row.eori


async def procedure_detail(sessions: async_sessionmaker[AsyncSession], procedure_id: str) -> ProcedureDetail:
    """One procedure with its timeline; :class:`NotFound` if there is none."""
    async with sessions() as session:
        row = await session.get(ProcedureRow, procedure_id)
        if row is None:
            raise NotFound(f"no procedure {procedure_id!r}")
        timeline = (await session.scalars(
            select(TimelineRow).where(TimelineRow.procedure_id == procedure_id).order_by(TimelineRow.id)
        )).all()
    return ProcedureDetail(
        **procedure_view(row).model_dump(),
        timeline=[
            TimelineEntryView.model_validate({
                "at": t.at, "kind": t.kind, "scenario": t.scenario, "previous_scenario": t.previous_scenario,
                "reason": t.reason, "actor": t.actor, "event_id": t.event_id, "evidence": t.evidence or []})
            for t in timeline
        ],
    )


async def procedure_page(
    sessions: async_sessionmaker[AsyncSession],
    *,
    reader: Principal,
    state: ProcedureState | None = None,
    scenario: Scenario | None = None,
    eori: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int,
    cursor: str | None = None,
) -> ProcedurePage:
    """Procedures, newest first, that ``reader`` may read (national ones and, per EO, who may read that EO's)."""
    if any(t is not None and t.tzinfo is None for t in (since, until)):
        raise ClientError("times need a timezone, e.g. 2026-11-27T08:00:00Z")
    query = select(ProcedureRow).order_by(ProcedureRow.created_at.desc(), ProcedureRow.id.desc())
    if not reader.reads_every_eo:
        query = query.where(or_(ProcedureRow.eori.is_(None), ProcedureRow.eori == reader.eori))
    for column, value in ((ProcedureRow.state, state), (ProcedureRow.scenario, scenario), (ProcedureRow.eori, eori)):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(ProcedureRow.created_at >= since)
    if until is not None:
        query = query.where(ProcedureRow.created_at < until)
    if cursor is not None:
        created_text, procedure_id = decode_cursor(cursor, keys=2)
        created = decode_moment(created_text)
        query = query.where(or_(ProcedureRow.created_at < created,
                                and_(ProcedureRow.created_at == created, ProcedureRow.id < procedure_id)))
    async with sessions() as session:
        rows = (await session.scalars(query.limit(limit + 1))).all()
    return ProcedurePage(items=[procedure_view(r) for r in rows[:limit]],
                         next=next_cursor(rows, limit=limit, key=lambda r: (r.created_at.isoformat(), r.id)))


def maintenance_view(row: MaintenanceRow) -> MaintenanceView:
    return MaintenanceView(
        maintenance_id=row.id, component=row.component, starts_at=row.starts_at, ends_at=row.ends_at,
        state=MaintenanceState(row.state), reason=row.reason, message=row.message, procedure_id=row.procedure_id,
        overran=row.overran, reminders_sent_s=sorted(row.reminders_sent or []), created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def maintenance_rows(
    sessions: async_sessionmaker[AsyncSession], *, state: MaintenanceState | None = None, limit: int | None = None,
    cursor: str | None = None, newest_first: bool = True,
) -> Sequence[MaintenanceRow]:
    """Maintenance windows by start (``limit`` + 1 of them when paging: see :func:`shared.paging.next_cursor`)."""
    if newest_first:
        query = select(MaintenanceRow).order_by(MaintenanceRow.starts_at.desc(), MaintenanceRow.id.desc())
    else:
        query = select(MaintenanceRow).order_by(MaintenanceRow.starts_at, MaintenanceRow.id)
    if state is not None:
        query = query.where(MaintenanceRow.state == state.value)
    if cursor is not None:
        starts_text, maintenance_id = decode_cursor(cursor, keys=2)
        starts = decode_moment(starts_text)
        query = query.where(or_(MaintenanceRow.starts_at < starts,
                                and_(MaintenanceRow.starts_at == starts, MaintenanceRow.id < maintenance_id)))
    if limit is not None:
        query = query.limit(limit + 1)
    async with sessions() as session:
        return (await session.scalars(query)).all()


async def maintenance(sessions: async_sessionmaker[AsyncSession], maintenance_id: str) -> MaintenanceView:
    async with sessions() as session:
        row = await session.get(MaintenanceRow, maintenance_id)
    if row is None:
        raise NotFound(f"no maintenance {maintenance_id!r}")
    return maintenance_view(row)
