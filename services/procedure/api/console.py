"""The data the Servicedesk console shows, for dashboards too: probe response times, procedure statistics
and a procedure's fan-out progress (the last two asked of the notifier where only it knows)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field

from services.procedure.api.deps import ClockDep, NotifierSummaryDep, SessionsDep
from services.procedure.api.history import From, NationalComponent, To, _components, _csv, _wants_csv, _window
from services.procedure.console import scenario_figures
from services.procedure.console_data import procedure_fan_out, statistics_input
from services.procedure.latency import SLOT
from services.procedure.latency_store import latency_slots
from services.procedure.notifier_summary import NotifierUnavailable
from services.procedure.queries import procedure_subject
from shared.auth import Caller, refuse
from shared.events import Component, Scenario

router = APIRouter(prefix="/api/v1")

MAX_LATENCY_RANGE = timedelta(days=31)
MAX_STATISTICS_RANGE = timedelta(days=731)


class LatencyItem(BaseModel):
    component: Component = Field(description="ada_b2g or ntp")
    slot_start: datetime = Field(description="Start of the 5-minute UTC slot")
    samples: int = Field(description="Probes reported in the slot (every target and detector of the component)")
    mean_ms: float = Field(description="Their mean latency, milliseconds")
    max_ms: float = Field(description="Their largest latency, milliseconds")


class LatencySeries(BaseModel):
    step_s: int = Field(description="Width of a slot in seconds (300); slots without probes are left out")
    items: list[LatencyItem]
    next: str | None = Field(None, description="Always null: a window (at most 31 days) comes in one page")


class ScenarioStatistics(BaseModel):
    scenario: Scenario
    opened: int = Field(description="Procedures that opened in the window in this scenario (the one they opened "
                                    "in; a proposed one counts when confirmed, a withdrawn one not at all)")
    closed: int = Field(description="Of those, the ones closed since")
    open_p50_s: float | None = Field(description="Median time open of the closed ones (nearest rank), seconds")
    open_max_s: float | None = Field(description="Longest time open of the closed ones, seconds")
    first_notice_p50_s: float | None = Field(
        description="Median time from the opening until the first EO was reached (the notifier's reach, "
                    "first_reached_s), over the procedures where it is known, seconds")
    first_notice_max_s: float | None = Field(description="Longest such time, seconds")
    first_notice_known: int = Field(description="Procedures for which the notifier reported a first notice")


class ProcedureStatistics(BaseModel):
    start: datetime = Field(serialization_alias="from", description="Start of the window (opening times)")
    end: datetime = Field(serialization_alias="to", description="End of the window, excluded")
    items: list[ScenarioStatistics] = Field(description="One per scenario (scenario 1 only for a reader of every "
                                                        "EO's data)")
    notifier_problem: str | None = Field(description="Why the first-notice times are missing; null: asked")
    next: str | None = Field(None, description="Always null: one page per window, like every list")


class FanOutProgress(BaseModel):
    procedure_id: str
    notified: bool = Field(description="Whether the notifier has heard of the procedure (a proposed one reaches "
                                       "the Servicedesk only: false, zero counts)")
    concerned: int = Field(description="EOs the procedure concerns (N)")
    reached: int = Field(description="EOs a notice of it has reached, on any channel")
    retrying: int = Field(description="EOs not reached whose delivery is being retried")
    dead: int = Field(description="EOs not reached whose deliveries were given up (dead)")
    pending: int = Field(description="EOs not reached and not tried yet")
    complete: bool = Field(description="False when more failing deliveries exist than were read: retrying and "
                                       "dead are then lower bounds")


@router.get("/history/latency", tags=["history"], response_model=LatencySeries,
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
            summary="Probe response times of the national components per 5 minutes: mean and max")
async def latency(
    request: Request,
    sessions: SessionsDep,
    clock: ClockDep,
    component: Annotated[NationalComponent | None, Query(description="ada_b2g or ntp (default both)")] = None,
    start: From = None,
    end: To = None,
) -> Any:
    start, end = _window(start, end, now=clock(), span=timedelta(hours=24), longest=MAX_LATENCY_RANGE)
    slots = await latency_slots(sessions, components=_components(component), start=start, end=end,
                                limit=int(MAX_LATENCY_RANGE / SLOT) * 2)
    items = [LatencyItem(component=s.component, slot_start=s.slot_start, samples=s.samples,
                         mean_ms=round(s.mean_ms, 3), max_ms=s.max_ms) for s in slots]
    if _wants_csv(request):
        return _csv(request, list(LatencyItem.model_fields), [i.model_dump(mode="json") for i in items], None,
                    "latency")
    return LatencySeries(step_s=int(SLOT.total_seconds()), items=items)


@router.get("/history/procedures", tags=["history"], response_model=ProcedureStatistics, response_model_by_alias=True,
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
            summary="Procedure statistics per scenario: how many opened, time open p50/max, time to first notice")
async def procedure_statistics(
    request: Request,
    caller: Caller,
    sessions: SessionsDep,
    clock: ClockDep,
    summary: NotifierSummaryDep,
    start: From = None,
    end: To = None,
) -> Any:
    start, end = _window(start, end, now=clock(), span=timedelta(days=30), longest=MAX_STATISTICS_RANGE)
    found = await statistics_input(sessions, summary, start=start, end=end, eo_procedures=caller.reads_every_eo)
    scenarios = [s for s in Scenario if caller.reads_every_eo or s != Scenario.EO_B2G_UNAVAILABLE]
    items = [ScenarioStatistics(**vars(f)) for f in scenario_figures(found.facts, scenarios)]
    if _wants_csv(request):
        return _csv(request, list(ScenarioStatistics.model_fields), [i.model_dump(mode="json") for i in items],
                    None, "procedure-statistics")
    return ProcedureStatistics(start=start, end=end, items=items, notifier_problem=found.notifier_problem)


@router.get("/procedures/{procedure_id}/fanout", tags=["procedures"], response_model=FanOutProgress,
            responses={404: {"description": "No such procedure"},
                       503: {"description": "No notifier configured, or it did not answer (the detail says)"}},
            summary="A procedure's fan-out progress: of the N EOs it concerns, how many reached, retrying, dead")
async def fanout(procedure_id: str, caller: Caller, sessions: SessionsDep,
                 summary: NotifierSummaryDep) -> FanOutProgress:
    if not caller.may_read_eo(await procedure_subject(sessions, procedure_id)):
        raise refuse(caller, "read another EO's procedure")
    if summary is None:
        raise HTTPException(503, "no notifier is configured (procedure.notifier_url): the fan-out is unknown here")
    try:
        progress = await procedure_fan_out(summary, procedure_id)
    except NotifierUnavailable as exc:
        raise HTTPException(503, str(exc)) from exc
    if progress is None:
        return FanOutProgress(procedure_id=procedure_id, notified=False, concerned=0, reached=0, retrying=0, dead=0,
                              pending=0, complete=True)
    return FanOutProgress(procedure_id=procedure_id, notified=True, **vars(progress))
