"""Maintenance windows: what a planned unavailability changes in the decisions. Pure: ``now`` comes in.

Rules (issue 12):
- a scheduled window is announced when scheduled, changed or cancelled, and reminded once per lead time
  (``procedure.maintenance_reminders_s``) before its start; lead times already passed when the window is
  scheduled (a window a few seconds ahead) give one reminder at once, the shortest, not one per lead time;
- at its start the window opens the national procedure of its scenario (ADA B2G: scenario 2, LUCCS: scenario 3,
  NTP alone: none, as an NTP-only outage is no fallback scenario) with ``origin: planned``; when a national
  procedure is already open it is left as it is;
- while a window is active its components count as down for the scenario engine: failing probes open nothing
  more and raise no NTP advisory, a component recovering early closes nothing; a component *not* in the
  window is decided as usual (NTP failing during an ADA B2G window: scenario 3);
- at the end the components count as observed again: up, the engine closes the procedure; still down, the
  window overran and its procedure continues as a detected one, everyone told (an update).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from services.procedure.domain import ComponentView
from shared.events import AdvisoryKind, Component, ComponentState, MaintainedComponent, MaintenanceState, Scenario

__all__ = [
    "Step",
    "StepKind",
    "Window",
    "covered",
    "edit_refusal",
    "masked_views",
    "next_instant",
    "overran",
    "planned_advisory",
    "planned_scenario",
    "window_steps",
]

_COVERS = {
    MaintainedComponent.ADA_B2G: frozenset({Component.ADA_B2G}),
    MaintainedComponent.NTP: frozenset({Component.NTP}),
    MaintainedComponent.LUCCS: frozenset({Component.ADA_B2G, Component.NTP}),
}
_SCENARIO = {
    MaintainedComponent.ADA_B2G: Scenario.ADA_B2G_UNAVAILABLE,
    MaintainedComponent.LUCCS: Scenario.LUCCS_UNAVAILABLE,
}


@dataclass(frozen=True)
class Window:
    maintenance_id: str
    component: MaintainedComponent
    starts_at: datetime
    ends_at: datetime
    state: MaintenanceState
    reminders_sent: frozenset[int] = frozenset()
    """The lead times (seconds) whose reminder went out (or was passed over for a shorter one)."""


class StepKind(StrEnum):
    REMIND = "remind"
    START = "start"
    END = "end"


@dataclass(frozen=True)
class Step:
    kind: StepKind
    window: Window
    lead_s: int | None = None
    """REMIND: the lead time of the reminder sent; ``window.reminders_sent`` already includes it."""


def covered(component: MaintainedComponent) -> frozenset[Component]:
    """The national components a window on ``component`` takes down."""
    return _COVERS[component]


def planned_scenario(component: MaintainedComponent) -> Scenario | None:
    """The scenario a window opens at its start; None for NTP alone (no fallback scenario, no procedure)."""
    return _SCENARIO.get(component)


def window_steps(windows: Iterable[Window], *, now: datetime, reminder_leads_s: Sequence[int]) -> list[Step]:
    """What is due at ``now`` for each scheduled or active window: a reminder, its start or its end."""
    steps: list[Step] = []
    for window in windows:
        if window.state == MaintenanceState.ACTIVE and now >= window.ends_at:
            steps.append(Step(StepKind.END, replace(window, state=MaintenanceState.DONE)))
        elif window.state == MaintenanceState.SCHEDULED and now >= window.starts_at:
            steps.append(Step(StepKind.START, replace(window, state=MaintenanceState.ACTIVE)))
        elif window.state == MaintenanceState.SCHEDULED:
            due = [lead for lead in reminder_leads_s
                   if lead not in window.reminders_sent and now >= window.starts_at - timedelta(seconds=lead)]
            if due:
                sent = window.reminders_sent | frozenset(due)
                steps.append(Step(StepKind.REMIND, replace(window, reminders_sent=sent), lead_s=min(due)))
    return steps


def next_instant(windows: Iterable[Window], *, reminder_leads_s: Sequence[int]) -> datetime | None:
    """The next moment a step falls due (a reminder, a start, an end), for the tick loop to wake at."""
    instants: list[datetime] = []
    for window in windows:
        if window.state == MaintenanceState.ACTIVE:
            instants.append(window.ends_at)
        elif window.state == MaintenanceState.SCHEDULED:
            instants.append(window.starts_at)
            instants += [window.starts_at - timedelta(seconds=lead) for lead in reminder_leads_s
                         if lead not in window.reminders_sent]
    return min(instants, default=None)


def masked_views(
    national: dict[Component, ComponentView], active: Iterable[Window]
) -> dict[Component, ComponentView]:
    """The national views the scenario engine decides on: components under an active window are down
    (planned), whatever the probes say; the others as observed."""
    planned = {c for window in active if window.state == MaintenanceState.ACTIVE for c in covered(window.component)}
    views = dict(national)
    for component in planned:
        views[component] = ComponentView(component=component, state=ComponentState.DOWN, evidence=())
    return views


def planned_advisory(kind: AdvisoryKind, active: Iterable[Window]) -> bool:
    """An NTP-only advisory while NTP is under an active window is no alarm: the outage was announced."""
    return kind == AdvisoryKind.NTP_UNAVAILABLE and any(
        Component.NTP in covered(w.component) for w in active if w.state == MaintenanceState.ACTIVE
    )


def overran(window: Window, national: dict[Component, ComponentView]) -> bool:
    """At its end, a window overran when one of its components is still seen down."""
    return any(
        (view := national.get(c)) is not None and view.state == ComponentState.DOWN for c in covered(window.component)
    )


def edit_refusal(
    window: Window, *, starts_at: datetime | None, ends_at: datetime | None, now: datetime
) -> str | None:
    """Why a change of a window's times is refused (None: allowed). A scheduled window may be moved; an
    active one only extended or shortened (its start has passed); a done or cancelled one is over."""
    if window.state in (MaintenanceState.DONE, MaintenanceState.CANCELLED):
        return f"the maintenance is {window.state.value}: schedule a new one"
    if window.state == MaintenanceState.ACTIVE and starts_at is not None and starts_at != window.starts_at:
        return "the maintenance has started: only its end can change"
    start = starts_at or window.starts_at
    end = ends_at or window.ends_at
    if end <= start:
        return "ends_at must be after starts_at"
    if end <= now:
        return "ends_at must be in the future"
    return None
