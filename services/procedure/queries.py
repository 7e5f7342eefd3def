"""Read side of the procedure service: what the status API, the procedure API and the status page show."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure.handlers import ProcedureService
from services.procedure.leadership import Leadership
from services.procedure.models import AdvisoryRow, ComponentRow, ProcedureRow, TimelineRow
from services.procedure.recorder import ACTIVE_STATES
from shared.events import ComponentState
from shared.roles import Principal


def procedure_view(row: ProcedureRow) -> dict[str, Any]:
    return {
        "procedure_id": row.id,
        "scenario": row.scenario,
        "scope": row.scope,
        "eori": row.eori,
        "state": row.state,
        "origin": row.origin,
        "auto_close": row.auto_close,
        "reason": row.reason,
        "created_at": row.created_at,
        "opened_at": row.opened_at,
        "closed_at": row.closed_at,
        "updated_at": row.updated_at,
        "maintenance_id": row.maintenance_id,
    }


async def leadership_view(leadership: Leadership) -> dict[str, Any]:
    """Who leads (from the lease row; None when the lease has run out) and this instance's role."""
    leader = await leadership.leader()
    return {
        "leader": None if leader is None else {"instance_id": leader.instance_id, "since": leader.since,
                                               "epoch": leader.epoch},
        "instance": {"id": leadership.instance_id, "role": leadership.role},
    }


async def status_snapshot(
    service: ProcedureService, sessions: async_sessionmaker[AsyncSession], *, reader: Principal
) -> dict[str, Any]:
    """Every national component with state, since and evidence; EO endpoints down; active procedures;
    who leads. EO endpoints and scenario-1 procedures only as far as ``reader`` may read that EO's data."""
    leading = await leadership_view(service.leadership) if service.leadership is not None else {}
    views = service.views()
    async with sessions() as session:
        since = {r.component: r.since for r in (await session.scalars(select(ComponentRow))).all()}
        active = (await session.scalars(
            select(ProcedureRow).where(ProcedureRow.state.in_(ACTIVE_STATES)).order_by(ProcedureRow.created_at)
        )).all()
        advisories = (await session.scalars(select(AdvisoryRow).where(AdvisoryRow.active.is_(True)))).all()
    return {
        "components": [
            {
                "component": view.component,
                "state": view.state,
                "since": since.get(view.component.value),
                "evidence": [
                    {"target_id": o.target_id, "detector_instance": o.detector_instance, "state": o.state,
                     "observed_at": o.observed_at, "reason": o.reason}
                    for o in view.evidence
                ],
            }
            for view in views.national.values()
        ],
        "eo_endpoints_down": sorted(
            e for e, v in views.eos.items() if v.state == ComponentState.DOWN and reader.may_read_eo(e)
        ),
        "procedures": [procedure_view(row) for row in active if reader.may_read_eo(row.eori)],
        "advisories": [
            {"advisory_id": a.id, "kind": a.kind, "components": a.components, "reason": a.reason,
             "raised_at": a.raised_at, "certificate": (a.detail or {}).get("certificate")}
            for a in advisories
        ],
    } | leading


async def procedure_detail(sessions: async_sessionmaker[AsyncSession], procedure_id: str) -> dict[str, Any] | None:
    """One procedure with its timeline, or None."""
    async with sessions() as session:
        row = await session.get(ProcedureRow, procedure_id)
        if row is None:
            return None
        timeline = (await session.scalars(
            select(TimelineRow).where(TimelineRow.procedure_id == procedure_id).order_by(TimelineRow.id)
        )).all()
    return procedure_view(row) | {
        "timeline": [
            {"at": t.at, "kind": t.kind, "scenario": t.scenario, "previous_scenario": t.previous_scenario,
             "reason": t.reason, "actor": t.actor, "event_id": t.event_id, "evidence": t.evidence}
            for t in timeline
        ]
    }
