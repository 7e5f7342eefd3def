"""The procedure service's commands from people (operators, the Bureau, EOs), as typed functions.

Each command takes what the caller asked and who the actor is, runs the domain's decision through
:class:`services.procedure.handlers.ProcedureService` (one transaction, fenced, events in the outbox) and
returns the typed view the API answers. It refuses with :mod:`shared.errors`: :class:`NotFound` (an unknown
procedure or window), :class:`Conflict` (it does not fit the current state), :class:`Invalid` (its values
do not make sense together). Routes only parse, authorize, call one of these and return the result.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure import domain, maintenances
from services.procedure.domain import Rejected
from services.procedure.handlers import ProcedureService, find_active
from services.procedure.models import ProcedureRow
from services.procedure.queries import maintenance_view, procedure_view
from services.procedure.recorder import active_view
from services.procedure.schemas import BroadcastSent, MaintenanceView
from services.procedure.views import EoReportResult, ProcedureView
from shared.errors import Conflict, Invalid, NotFound
from shared.events import Broadcast, BroadcastAuthor, LocalisedText, MaintainedComponent, Scenario, Scope

__all__ = ["ProcedureCommands"]

_Command = Callable[..., domain.Decision]


class ProcedureCommands:
    """Declare, confirm, close, note, broadcast, EO reports and maintenance windows."""

    def __init__(self, *, service: ProcedureService, sessions: async_sessionmaker[AsyncSession],
                 clock: Callable[[], datetime]) -> None:
        self._service = service
        self._sessions = sessions
        self._clock = clock

    async def declare(self, *, scenario: Scenario, eori: str | None, reason: str, actor: str,
                      auto_close: bool = False) -> ProcedureView:
        """An operator opens a procedure by hand (scenario 1 needs the EO's ``eori``, the others none)."""

        def decide(active: list[ProcedureRow]) -> domain.Decision:
            return domain.declare(scenario=scenario, eori=eori, reason=reason,
                                  active=[active_view(r) for r in active])

        try:
            row, _ = await self._service.command(decide, actor=actor, auto_close=auto_close)
        except Rejected as exc:
            raise Conflict(str(exc)) from exc
        except ValueError as exc:
            raise Invalid(str(exc)) from exc
        assert row is not None
        return procedure_view(row)

    async def confirm(self, *, procedure_id: str, reason: str, actor: str) -> ProcedureView:
        """Confirm a proposed procedure: it opens and EOs are told."""
        return await self._on_procedure(procedure_id, domain.confirm, reason=reason, actor=actor)

    async def close(self, *, procedure_id: str, reason: str, actor: str) -> ProcedureView:
        """Close an open procedure, or dismiss a proposed one."""
        return await self._on_procedure(procedure_id, domain.close, reason=reason, actor=actor)

    async def _on_procedure(self, procedure_id: str, command: _Command, *, reason: str, actor: str) -> ProcedureView:
        async with self._sessions() as session:
            if await session.get(ProcedureRow, procedure_id) is None:
                raise NotFound(f"no procedure {procedure_id!r}")

        def decide(active: list[ProcedureRow]) -> domain.Decision:
            found = next((active_view(r) for r in active if r.id == procedure_id), None)
            return command(procedure=found, reason=reason)

        try:
            row, _ = await self._service.command(decide, actor=actor)
        except Rejected as exc:
            raise Conflict(str(exc)) from exc
        assert row is not None
        return procedure_view(row)

    async def note(self, *, procedure_id: str, text: str, actor: str) -> None:
        """Add a note to a procedure's timeline."""
        try:
            await self._service.add_note(procedure_id, text=text, actor=actor)
        except LookupError as exc:
            raise NotFound(f"no procedure {procedure_id!r}") from exc

    async def broadcast(self, *, procedure_id: str, text: LocalisedText, author: BroadcastAuthor,
                        actor: str) -> BroadcastSent:
        """The Servicedesk's or the Bureau's own words to every EO the procedure concerns."""
        message = Broadcast(broadcast_id=str(uuid.uuid4()), author=author, text=text, sent_at=self._clock())
        try:
            event = await self._service.broadcast(procedure_id, message=message, actor=actor)
        except LookupError as exc:
            raise NotFound(f"no procedure {procedure_id!r}") from exc
        except Rejected as exc:
            raise Conflict(str(exc)) from exc
        return BroadcastSent(broadcast_id=message.broadcast_id, procedure_id=procedure_id, event_id=event.id,
                             author=message.author, sent_at=event.time, scope=event.data.scope.value,
                             eori=event.data.eori)

    async def eo_report(self, *, eori: str, down: bool, detail: str | None, actor: str) -> EoReportResult:
        """An EO reports its own B2G system down or back up: opens or closes its scenario-1 procedure."""

        def decide(active: list[ProcedureRow]) -> domain.Decision | None:
            current = find_active(active, scope=Scope.EO, eori=eori)
            return domain.eo_report(eori=eori, down=down, current=active_view(current) if current else None,
                                    detail=detail)

        try:
            row, decision = await self._service.command(decide, actor=actor, auto_close=False)
        except Rejected as exc:
            raise Conflict(str(exc)) from exc
        if decision is None or row is None:
            return EoReportResult(result="no change", detail="already " + ("open" if down else "closed"))
        return EoReportResult(result=decision.action.value, procedure=procedure_view(row))

    async def schedule_maintenance(
        self, *, component: MaintainedComponent, starts_at: datetime, ends_at: datetime, reason: str,
        message: dict[str, str] | None,
    ) -> MaintenanceView:
        """Schedule a maintenance window; every EO is told and reminded before it."""
        try:
            row = await self._service.record(lambda session, recorder: maintenances.schedule(
                session, recorder, component=component, starts_at=starts_at, ends_at=ends_at, reason=reason,
                message=message,
            ))
        except ValueError as exc:
            raise Invalid(str(exc)) from exc
        return maintenance_view(row)

    async def change_maintenance(
        self, *, maintenance_id: str, starts_at: datetime | None, ends_at: datetime | None, reason: str | None,
        message: dict[str, str] | None,
    ) -> MaintenanceView:
        """Reschedule, extend or reword a window (while active: its end only)."""
        try:
            row = await self._service.record(lambda session, recorder: maintenances.change(
                session, recorder, maintenance_id=maintenance_id, starts_at=starts_at, ends_at=ends_at,
                reason=reason, message=message,
            ))
        except LookupError as exc:
            raise NotFound(f"no maintenance {maintenance_id!r}") from exc
        except Rejected as exc:
            raise Conflict(str(exc)) from exc
        return maintenance_view(row)

    async def cancel_maintenance(self, *, maintenance_id: str, reason: str) -> MaintenanceView:
        """Cancel a scheduled window."""
        try:
            row = await self._service.record(lambda session, recorder: maintenances.cancel(
                session, recorder, maintenance_id=maintenance_id, reason=reason,
            ))
        except LookupError as exc:
            raise NotFound(f"no maintenance {maintenance_id!r}") from exc
        except Rejected as exc:
            raise Conflict(str(exc)) from exc
        return maintenance_view(row)
