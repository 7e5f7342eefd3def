"""Maintenance windows, use cases: schedule, change and cancel them (operator commands), announce them, and
carry out what :mod:`services.procedure.maintenance` says is due when the leader decides.

Every change and its announcement are written in one transaction with the outbox, like decisions.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from icalendar import Calendar, Event
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.procedure import maintenance
from services.procedure.domain import Action, ComponentView, Decision, Rejected
from services.procedure.maintenance import StepKind, Window
from services.procedure.models import MaintenanceRow, ProcedureRow
from services.procedure.recorder import ACTIVE_STATES, Recorder
from shared.events import (
    Component,
    EventType,
    LocalisedText,
    MaintainedComponent,
    MaintenanceData,
    MaintenanceState,
    Origin,
    Scope,
)

__all__ = ["WindowsOutcome", "calendar", "cancel", "change", "load_current", "run_windows", "schedule", "window_of"]

_CURRENT = (MaintenanceState.SCHEDULED, MaintenanceState.ACTIVE)
_NAMES = {MaintainedComponent.ADA_B2G: "ADA B2G (AS4)", MaintainedComponent.NTP: "NTP (National Trader Portal)",
          MaintainedComponent.LUCCS: "LUCCS (ADA B2G and NTP)"}


def window_of(row: MaintenanceRow) -> Window:
    return Window(maintenance_id=row.id, component=row.component, starts_at=row.starts_at, ends_at=row.ends_at,
                  state=row.state,
                  reminders_sent=frozenset(row.reminders_sent or ()))


def _data(row: MaintenanceRow, *, lead_s: int | None = None, previous: tuple[datetime, datetime] | None = None
          ) -> MaintenanceData:
    return MaintenanceData(
        maintenance_id=row.id, component=row.component, starts_at=row.starts_at, ends_at=row.ends_at,
        state=row.state, reason=row.reason,
        message=LocalisedText(**row.message) if row.message else None, lead_s=lead_s,
        previous_starts_at=previous[0] if previous else None, previous_ends_at=previous[1] if previous else None,
    )


async def schedule(
    session: AsyncSession, recorder: Recorder, *, component: MaintainedComponent, starts_at: datetime,
    ends_at: datetime, reason: str, message: dict[str, str] | None,
) -> MaintenanceRow:
    """Record a new window and announce it (``luccs.maintenance.scheduled``)."""
    now = recorder.now
    if ends_at <= starts_at:
        raise ValueError("ends_at must be after starts_at")
    if ends_at <= now:
        raise ValueError("ends_at must be in the future")
    row = MaintenanceRow(id=str(uuid.uuid4()), component=component, starts_at=starts_at, ends_at=ends_at,
                         state=MaintenanceState.SCHEDULED, reason=reason, message=message, reminders_sent=[],
                         procedure_id=None, overran=False, created_at=now, updated_at=now)
    session.add(row)
    await session.flush()
    recorder.maintenance(EventType.MAINTENANCE_SCHEDULED, _data(row))
    return row


async def _found(session: AsyncSession, maintenance_id: str) -> MaintenanceRow:
    row = await session.get(MaintenanceRow, maintenance_id)
    if row is None:
        raise LookupError(maintenance_id)
    return row


async def change(
    session: AsyncSession, recorder: Recorder, *, maintenance_id: str, starts_at: datetime | None,
    ends_at: datetime | None, reason: str | None, message: dict[str, str] | None,
) -> MaintenanceRow:
    """Reschedule, extend or reword a window (also while active: its end only) and announce the change.
    A moved start sends the reminders again."""
    row = await _found(session, maintenance_id)
    refusal = maintenance.edit_refusal(window_of(row), starts_at=starts_at, ends_at=ends_at, now=recorder.now)
    if refusal is not None:
        raise Rejected(refusal)
    previous = (row.starts_at, row.ends_at)
    if starts_at is not None and starts_at != row.starts_at:
        row.starts_at, row.reminders_sent = starts_at, []
    row.ends_at = ends_at or row.ends_at
    row.reason = reason or row.reason
    row.message = message if message is not None else row.message
    row.updated_at = recorder.now
    await session.flush()
    recorder.maintenance(EventType.MAINTENANCE_CHANGED, _data(row, previous=previous))
    return row


async def cancel(session: AsyncSession, recorder: Recorder, *, maintenance_id: str, reason: str) -> MaintenanceRow:
    """Cancel a scheduled window and announce it; an active one is ended by moving its end (PATCH)."""
    row = await _found(session, maintenance_id)
    if row.state != MaintenanceState.SCHEDULED:
        raise Rejected(f"the maintenance is {row.state}: only a scheduled one can be cancelled"
                       + (" (move its end to end it now)" if row.state == MaintenanceState.ACTIVE else ""))
    row.state, row.reason, row.updated_at = MaintenanceState.CANCELLED, reason, recorder.now
    await session.flush()
    recorder.maintenance(EventType.MAINTENANCE_CANCELLED, _data(row))
    return row


async def load_current(session: AsyncSession) -> list[MaintenanceRow]:
    """The scheduled and active windows, by start."""
    return list((await session.scalars(
        select(MaintenanceRow).where(MaintenanceRow.state.in_(_CURRENT)).order_by(MaintenanceRow.starts_at)
    )).all())


@dataclass(frozen=True)
class WindowsOutcome:
    active: list[Window]
    """The windows in force after the steps: their components count as down for the engine."""
    next_at: datetime | None
    """When the next step falls due."""


async def run_windows(
    session: AsyncSession, recorder: Recorder, *, national: dict[Component, ComponentView],
    national_procedure: ProcedureRow | None, reminder_leads_s: Sequence[int],
) -> WindowsOutcome:
    """Carry out the reminders, starts and ends due now (on the leader, inside the decision's transaction)."""
    now = recorder.now
    rows = {row.id: row for row in await load_current(session)}
    for step in maintenance.window_steps([window_of(r) for r in rows.values()], now=now,
                                         reminder_leads_s=reminder_leads_s):
        row = rows[step.window.maintenance_id]
        row.state, row.reminders_sent, row.updated_at = (
            step.window.state, sorted(step.window.reminders_sent), now
        )
        if step.kind == StepKind.REMIND:
            recorder.maintenance(EventType.MAINTENANCE_REMINDER, _data(row, lead_s=step.lead_s))
        elif step.kind == StepKind.START:
            national_procedure = await _start(recorder, row, national_procedure)
        else:
            await _end(session, recorder, row, step.window, national)
    await session.flush()
    current = [window_of(r) for r in rows.values() if r.state in _CURRENT]
    return WindowsOutcome(
        active=[w for w in current if w.state == MaintenanceState.ACTIVE],
        next_at=maintenance.next_instant(current, reminder_leads_s=reminder_leads_s),
    )


async def _start(recorder: Recorder, row: MaintenanceRow, national: ProcedureRow | None) -> ProcedureRow | None:
    component = row.component
    scenario = maintenance.planned_scenario(component)
    if national is not None and national.state in ACTIVE_STATES:
        row.procedure_id = national.id  # an outage already in fallback: the window joins it
        return national
    if scenario is None:
        return national  # NTP alone: no fallback scenario
    opened = await recorder.apply(Decision(
        action=Action.OPEN, scenario=scenario, scope=Scope.NATIONAL, origin=Origin.PLANNED, maintenance_id=row.id,
        reason=f"planned maintenance of {_NAMES[component]} until {row.ends_at.isoformat()}: {row.reason}",
    ))
    row.procedure_id = opened.id
    return opened


async def _end(session: AsyncSession, recorder: Recorder, row: MaintenanceRow, window: Window,
               national: dict[Component, ComponentView]) -> None:
    if not maintenance.overran(window, national) or row.procedure_id is None:
        return  # back up (or unknown): the engine closes the procedure as it would a detected one
    procedure = await session.get(ProcedureRow, row.procedure_id)
    if procedure is None or procedure.state not in ACTIVE_STATES:
        return
    row.overran = True
    procedure.origin = Origin.DETECTED  # from now on an outage like any other
    scenario = procedure.scenario
    await recorder.apply(Decision(
        action=Action.UPDATE, scenario=scenario, scope=Scope.NATIONAL, procedure_id=procedure.id,
        previous_scenario=scenario,
        reason=f"the planned maintenance of {_NAMES[row.component]} overran its announced "
               f"end ({row.ends_at.isoformat()}): still unavailable, the procedure continues",
    ))


def calendar(rows: Sequence[MaintenanceRow], *, now: datetime) -> bytes:
    """The windows as an iCalendar feed (RFC 5545) for EOs' calendars: one VEVENT per window, cancelled ones
    marked CANCELLED so that calendars drop them."""
    feed = Calendar()
    feed.add("prodid", "-//luccs-fallback//maintenance windows//EN")
    feed.add("version", "2.0")
    feed.add("x-wr-calname", "LUCCS maintenance windows")
    for row in rows:
        event = Event()
        event.add("uid", f"{row.id}@luccs-fallback")
        event.add("dtstamp", now)
        event.add("dtstart", row.starts_at)
        event.add("dtend", row.ends_at)
        event.add("summary", f"LUCCS planned maintenance: {_NAMES[row.component]}")
        if row.message:
            event.add("description", "\n\n".join(row.message[lang] for lang in ("fr", "en", "de")))
        event.add("status", "CANCELLED" if row.state == MaintenanceState.CANCELLED else "CONFIRMED")
        event.add("last-modified", row.updated_at)
        feed.add_component(event)
    ical: bytes = feed.to_ical()
    return ical
