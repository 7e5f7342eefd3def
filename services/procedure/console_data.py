"""Reads behind the Servicedesk console and its data endpoints: the procedures a statistics window covers,
a procedure's fan-out progress (asked of the notifier), the EO endpoints down now. The figures are made by
the pure functions of :mod:`services.procedure.console`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure.console import FanOut, ProcedureFacts, fan_out
from services.procedure.handlers import ProcedureService
from services.procedure.models import ProcedureRow, TimelineRow
from services.procedure.notifier_summary import NotifierSummary, NotifierUnavailable
from services.procedure.recorder import ACTIVE_STATES
from shared.events import ComponentState, Scenario, Scope
from shared.roles import Principal

__all__ = ["EoEndpointDown", "StatisticsInput", "eo_endpoints_down", "procedure_fan_out", "statistics_input"]

_OPENING_KINDS = ("open", "confirm")
_NOTIFIER_READS = 8  # reach queries in flight at once for the statistics
MAX_NOTIFIER_QUERIES = 2000
"""Statistics over more procedures than this do without the notifier's first-notice times (one query each)."""


async def procedure_fan_out(summary: NotifierSummary, procedure_id: str) -> FanOut | None:
    """The fan-out progress of a procedure, from the notifier's reach and failing deliveries; None when the
    notifier never heard of it. Raises :class:`NotifierUnavailable`."""
    async with summary.client() as client:
        reach = await summary.reach(procedure_id, client=client)
        if reach is None:
            return None
        unreached = [str(u["eori"]) for u in reach["unreached"]]
        retrying, dead, complete = set[str](), set[str](), True
        if unreached:
            retrying, all_retrying = await summary.failing_eos(procedure_id, "retrying", client=client)
            dead, all_dead = await summary.failing_eos(procedure_id, "dead", client=client)
            complete = all_retrying and all_dead
    return fan_out(concerned=int(reach["concerned"]), reached=int(reach["reached"]), unreached=unreached,
                   retrying=retrying, dead=dead, complete=complete)


@dataclass(frozen=True)
class StatisticsInput:
    facts: list[ProcedureFacts]
    notifier_problem: str | None
    """Why times to first notice are missing (no notifier configured, or it did not answer); None: asked."""


async def statistics_input(
    sessions: async_sessionmaker[AsyncSession], summary: NotifierSummary | None, *, start: datetime, end: datetime,
    eo_procedures: bool,
) -> StatisticsInput:
    """The procedures opened in ``[start, end)`` (scenario-1 ones only with ``eo_procedures``), each with the
    scenario it opened in and, from the notifier's reach, the time until its first EO was reached."""
    query = select(ProcedureRow).where(ProcedureRow.opened_at.is_not(None), ProcedureRow.opened_at >= start,
                                       ProcedureRow.opened_at < end).order_by(ProcedureRow.opened_at)
    if not eo_procedures:
        query = query.where(ProcedureRow.scope == Scope.NATIONAL.value)
    async with sessions() as session:
        rows = (await session.scalars(query)).all()
        opened_in: dict[str, str] = {}
        if rows:
            entries = await session.execute(
                select(TimelineRow.procedure_id, TimelineRow.scenario)
                .where(TimelineRow.procedure_id.in_([r.id for r in rows]), TimelineRow.kind.in_(_OPENING_KINDS))
                .order_by(TimelineRow.id.desc())
            )
            opened_in = {procedure_id: scenario for procedure_id, scenario in entries.all()}  # the earliest wins
    first: dict[str, float | None] = {}
    problem: str | None = "no notifier is configured (procedure.notifier_url)" if summary is None else None
    if summary is not None and len(rows) > MAX_NOTIFIER_QUERIES:
        problem = (f"{len(rows)} procedures opened in the window: the notifier is asked for at most "
                   f"{MAX_NOTIFIER_QUERIES}; take a shorter window for the times to first notice")
    elif summary is not None and rows:
        limit = asyncio.Semaphore(_NOTIFIER_READS)
        async with summary.client() as client:
            async def one(procedure_id: str) -> None:
                async with limit:
                    reach = await summary.reach(procedure_id, client=client)
                first[procedure_id] = None if reach is None else reach.get("first_reached_s")

            try:
                async with asyncio.TaskGroup() as group:
                    for row in rows:
                        group.create_task(one(row.id))
            except* NotifierUnavailable as failed:
                problem, first = str(failed.exceptions[0]), {}
    facts = [ProcedureFacts(scenario=Scenario(opened_in.get(r.id, r.scenario)), opened_at=r.opened_at,
                            closed_at=r.closed_at, first_notice_s=first.get(r.id))
             for r in rows if r.opened_at is not None]
    return StatisticsInput(facts=facts, notifier_problem=problem)


@dataclass(frozen=True)
class EoEndpointDown:
    eori: str
    since: datetime | None
    """When its scenario-1 procedure was raised (None: none is active, e.g. the EO declared it closed)."""
    reasons: tuple[str, ...]
    """The reason codes of the probes that see it down (refused, timeout, ...)."""
    procedure_id: str | None


async def eo_endpoints_down(service: ProcedureService, sessions: async_sessionmaker[AsyncSession], *,
                            reader: Principal) -> list[EoEndpointDown]:
    """The EOs whose own AS4 endpoint is down now, for a reader who may read every EO's data (else none)."""
    if not reader.reads_every_eo:
        return []
    down = {e: v for e, v in service.views().eos.items() if v.state == ComponentState.DOWN}
    if not down:
        return []
    async with sessions() as session:
        active = (await session.scalars(
            select(ProcedureRow).where(ProcedureRow.state.in_(ACTIVE_STATES), ProcedureRow.eori.in_(list(down)))
        )).all()
    procedure = {r.eori: r for r in active}
    return [
        EoEndpointDown(
            eori=eori, since=procedure[eori].created_at if eori in procedure else None,
            reasons=tuple(sorted({o.reason for o in view.evidence if o.state == ComponentState.DOWN})),
            procedure_id=procedure[eori].id if eori in procedure else None,
        )
        for eori, view in sorted(down.items())
    ]
