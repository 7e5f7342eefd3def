"""Carries out the engine's decisions inside a transaction: rows, timeline entry, outbox event.

Nothing here decides anything; it records what the domain decided, with its evidence, and queues the
CloudEvent to publish. The caller commits; the events are only announced (stream) after the commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.procedure.certificates import CertificateChange
from services.procedure.domain import Action, ActiveProcedure, AdvisoryChange, Decision, Observation
from services.procedure.models import AdvisoryRow, MaintenanceRow, OutboxRow, ProcedureRow, TimelineRow
from shared.config import KafkaSettings
from shared.events import (
    AdvisoryData,
    AdvisoryKind,
    Broadcast,
    CertificateExpiry,
    CertificateRole,
    CloudEvent,
    Component,
    ComponentState,
    EventType,
    Evidence,
    MaintenanceData,
    ProcedureData,
    ProcedureState,
    Scenario,
    Scope,
    procedure_key,
)

SOURCE = "/luccs-fallback/procedure"
ACTIVE_STATES = (ProcedureState.OPEN, ProcedureState.PROPOSED)

_EVENT_TYPE = {
    Action.PROPOSE: EventType.PROCEDURE_PROPOSED,
    Action.OPEN: EventType.PROCEDURE_OPENED,
    Action.CONFIRM: EventType.PROCEDURE_OPENED,
    Action.UPDATE: EventType.PROCEDURE_UPDATED,
    Action.CLOSE: EventType.PROCEDURE_CLOSED,
    Action.WITHDRAW: EventType.PROCEDURE_CLOSED,
}


def evidence_of(observations: Sequence[Observation]) -> list[Evidence]:
    return [
        Evidence(
            target_id=o.target_id,
            component=o.component,
            detector_instance=o.detector_instance,
            state=o.state,
            observed_at=o.observed_at,
            reason=o.reason,
            suspect=o.suspect,
        )
        for o in observations
    ]


def active_view(row: ProcedureRow) -> ActiveProcedure:
    return ActiveProcedure(
        procedure_id=row.id,
        scenario=row.scenario,
        scope=row.scope,
        eori=row.eori,
        state=row.state,
        origin=row.origin,
        auto_close=row.auto_close,
    )


async def load_active(session: AsyncSession) -> list[ProcedureRow]:
    return list((await session.scalars(select(ProcedureRow).where(ProcedureRow.state.in_(ACTIVE_STATES)))).all())


def procedure_data(
    row: ProcedureRow,
    *,
    previous: Scenario | None,
    evidence: Sequence[Evidence],
    components: dict[Component, ComponentState],
    maintenance_ends_at: datetime | None = None,
) -> ProcedureData:
    return ProcedureData(
        procedure_id=row.id,
        scenario=row.scenario,
        previous_scenario=previous,
        scope=row.scope,
        eori=row.eori,
        state=row.state,
        reason=row.reason,
        opened_at=row.opened_at,
        closed_at=row.closed_at,
        origin=row.origin,
        components=components,
        evidence=list(evidence),
        maintenance_id=row.maintenance_id,
        maintenance_ends_at=maintenance_ends_at,
    )


_ROLE = {CertificateRole.TLS: "TLS certificate", CertificateRole.AS4_SIGNING: "our AS4 signing certificate",
         CertificateRole.AS4_PARTNER: "AS4 receipt-signing certificate"}


def certificate_reason(certificate: CertificateExpiry) -> str:
    """The advisory's reason, for operators (the notices and the console word it in each language)."""
    when = certificate.expires_at.isoformat()
    what = f"{_ROLE[certificate.role]} of {certificate.component.value} (target {certificate.target_id})"
    if certificate.warning_days == 0:
        return f"{what} expired at {when}"
    return f"{what} expires at {when}, within {certificate.warning_days} days"


@dataclass
class Recorder:
    """Records decisions in one session; ``announcements`` collects what to stream after the commit,
    ``procedures`` the procedure rows it created or changed."""

    session: AsyncSession
    kafka: KafkaSettings
    now: datetime
    components: dict[Component, ComponentState]
    epoch: int | None = None
    """The leadership epoch the decisions are recorded under, carried by their outbox rows."""
    announcements: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    outbox: list[OutboxRow] = field(default_factory=list)
    procedures: list[ProcedureRow] = field(default_factory=list)

    async def apply(
        self,
        decision: Decision,
        *,
        evidence: Sequence[Evidence] = (),
        actor: str = "system",
        auto_close: bool = True,
    ) -> ProcedureRow:
        """Record one decision and queue its event; return the procedure row."""
        now = self.now
        if decision.procedure_id is None:
            row = ProcedureRow(
                id=str(uuid.uuid4()),
                scenario=decision.scenario,
                scope=decision.scope,
                eori=decision.eori,
                state=ProcedureState.PROPOSED if decision.action == Action.PROPOSE else ProcedureState.OPEN,
                origin=decision.origin,
                auto_close=auto_close,
                reason=decision.reason,
                created_at=now,
                opened_at=None if decision.action == Action.PROPOSE else now,
                closed_at=None,
                updated_at=now,
                maintenance_id=decision.maintenance_id,
            )
            self.session.add(row)
        else:
            found = await self.session.get(ProcedureRow, decision.procedure_id)
            if found is None:
                raise LookupError(f"no procedure {decision.procedure_id}")
            row = found
            row.scenario = decision.scenario
            row.reason = decision.reason
            row.updated_at = now
            if decision.action == Action.CONFIRM:
                row.state, row.opened_at = ProcedureState.OPEN, now
            elif decision.action in (Action.CLOSE, Action.WITHDRAW):
                row.state, row.closed_at = ProcedureState.CLOSED, now
        await self.session.flush()
        event = CloudEvent[ProcedureData](
            source=SOURCE,
            type=_EVENT_TYPE[decision.action],
            subject=row.id,
            time=now,
            data=procedure_data(
                row, previous=decision.previous_scenario, evidence=evidence, components=self.components,
                maintenance_ends_at=await self._maintenance_end(row),
            ),
        )
        self.session.add(
            TimelineRow(
                procedure_id=row.id,
                at=now,
                kind=decision.action.value,
                scenario=decision.scenario,
                previous_scenario=decision.previous_scenario,
                reason=decision.reason,
                actor=actor,
                event_id=event.id,
                evidence=[e.model_dump(mode="json") for e in evidence],
            )
        )
        self._queue(self.kafka.procedures_topic, procedure_key(row.scope, row.eori), event)
        self.procedures.append(row)
        return row

    async def note(self, row: ProcedureRow, *, text: str, actor: str, kind: str = "note") -> TimelineRow:
        entry = TimelineRow(
            procedure_id=row.id, at=self.now, kind=kind, scenario=row.scenario, previous_scenario=None,
            reason=text, actor=actor, event_id=None, evidence=[],
        )
        self.session.add(entry)
        self.announcements.append(("note", {"procedure_id": row.id, "eori": row.eori, "kind": kind, "text": text,
                                             "actor": actor}))
        return entry

    async def broadcast(self, row: ProcedureRow, *, message: Broadcast, actor: str) -> CloudEvent[ProcedureData]:
        """Queue a broadcast of the Servicedesk or the Bureau about procedure ``row``, and note it in its timeline
        (the three texts as sent: readable in ``reason``, exactly in ``detail``, which the public page reads)."""
        event = CloudEvent[ProcedureData](
            source=SOURCE, type=EventType.PROCEDURE_BROADCAST, subject=row.id, time=self.now,
            data=procedure_data(row, previous=None, evidence=(), components=self.components,
                                maintenance_ends_at=await self._maintenance_end(row)).model_copy(
                update={"broadcast": message}
            ),
        )
        text = message.text
        self.session.add(TimelineRow(
            procedure_id=row.id, at=self.now, kind="broadcast", scenario=row.scenario, previous_scenario=None,
            reason=f"[{message.author.value}] fr: {text.fr}\nen: {text.en}\nde: {text.de}", actor=actor,
            event_id=event.id, evidence=[], detail={"broadcast": message.model_dump(mode="json")},
        ))
        self._queue(self.kafka.procedures_topic, procedure_key(row.scope, row.eori), event)
        return event

    def maintenance(self, event_type: EventType, data: MaintenanceData) -> CloudEvent[MaintenanceData]:
        """Queue the announcement of a maintenance window (procedures topic, key ``national``)."""
        event = CloudEvent[MaintenanceData](source=SOURCE, type=event_type, subject=data.maintenance_id,
                                            time=self.now, data=data)
        self._queue(self.kafka.procedures_topic, Scope.NATIONAL.value, event)
        return event

    async def advisory(self, change: AdvisoryChange) -> None:
        now = self.now
        if change.raise_it:
            row = AdvisoryRow(
                id=str(uuid.uuid4()), kind=change.kind, active=True,
                components=[c.value for c in change.components], reason=change.reason, raised_at=now,
                cleared_at=None,
            )
            self.session.add(row)
        else:
            found = await self.session.scalar(
                select(AdvisoryRow).where(AdvisoryRow.kind == change.kind, AdvisoryRow.active.is_(True))
            )
            if found is None:
                return
            row = found
            row.active, row.cleared_at = False, now
        event = CloudEvent[AdvisoryData](
            source=SOURCE,
            type=EventType.ADVISORY_RAISED if change.raise_it else EventType.ADVISORY_CLEARED,
            subject=row.id,
            time=now,
            data=AdvisoryData(
                advisory_id=row.id, kind=row.kind, active=row.active,
                components=[Component(c) for c in row.components], reason=change.reason,
                raised_at=row.raised_at, cleared_at=row.cleared_at,
            ),
        )
        self._queue(self.kafka.advisories_topic, row.id, event)

    async def _maintenance_end(self, row: ProcedureRow) -> datetime | None:
        """The announced end of the window that opened ``row`` (None without one)."""
        if row.maintenance_id is None:
            return None
        window = await self.session.get(MaintenanceRow, row.maintenance_id)
        return window.ends_at if window is not None else None

    async def certificate_advisory(self, change: CertificateChange) -> str:
        """Raise (or raise again, at a closer warning level) or clear the advisory of one certificate of a national
        target; returns the advisory's id."""
        now, certificate = self.now, change.certificate
        found = await self.session.get(AdvisoryRow, change.advisory_id) if change.advisory_id else None
        if found is None:
            row = AdvisoryRow(id=str(uuid.uuid4()), kind=AdvisoryKind.CERTIFICATE_EXPIRING, active=True,
                              components=[certificate.component.value], reason="", raised_at=now, cleared_at=None)
            self.session.add(row)
        else:
            row = found
        if change.raise_it:
            row.raised_at, row.detail = now, {"certificate": certificate.model_dump(mode="json")}
            row.reason = certificate_reason(certificate)
        else:
            row.active, row.cleared_at = False, now
            row.reason = f"{certificate_reason(certificate)}: the target presents another certificate now"
        event = CloudEvent[AdvisoryData](
            source=SOURCE, type=EventType.ADVISORY_RAISED if change.raise_it else EventType.ADVISORY_CLEARED,
            subject=row.id, time=now,
            data=AdvisoryData(advisory_id=row.id, kind=AdvisoryKind.CERTIFICATE_EXPIRING, active=row.active,
                              components=[certificate.component], reason=row.reason, raised_at=row.raised_at,
                              cleared_at=row.cleared_at, certificate=certificate),
        )
        self._queue(self.kafka.advisories_topic, row.id, event)
        return row.id

    def _queue(self, topic: str, key: str, event: CloudEvent[Any]) -> None:
        row = OutboxRow(topic=topic, key=key, payload=event.to_bytes(), created_at=self.now, epoch=self.epoch)
        self.session.add(row)
        self.outbox.append(row)
        self.announcements.append((event.type, event.model_dump(mode="json")))
