"""Use cases of the procedure service: take an event, ask the domain, persist, queue the events to publish.

Every state change and the events it causes are written in one transaction (transactional outbox);
the relay publishes them afterwards. A crash before the commit leaves the Kafka offset uncommitted, so
the message is redelivered and decided again; a crash after it leaves the events in the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from aiokafka import ConsumerRecord
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure.domain import (
    Action,
    ComponentView,
    NationalDecision,
    Observation,
    component_views,
    decide_national,
)
from services.procedure.models import ObservationRow, OutboxRow, ProcedureRow, TimelineRow
from shared.config import Settings
from shared.events import (
    AvailabilityData,
    CloudEvent,
    Component,
    ComponentState,
    EventType,
    Evidence,
    ProcedureData,
    ProcedureState,
    Scenario,
    Scope,
)
from shared.kafka import Publisher

log = logging.getLogger(__name__)

SOURCE = "/luccs-fallback/procedure"
ACTIVE_STATES = (ProcedureState.OPEN.value, ProcedureState.PROPOSED.value)
_EVENT_TYPE = {
    Action.OPEN: EventType.PROCEDURE_OPENED,
    Action.UPDATE: EventType.PROCEDURE_UPDATED,
    Action.CLOSE: EventType.PROCEDURE_CLOSED,
}


def to_observation(row: ObservationRow) -> Observation:
    return Observation(
        target_id=row.target_id,
        component=Component(row.component),
        detector_instance=row.detector_instance,
        state=ComponentState(row.state),
        observed_at=row.observed_at,
        reason=row.reason,
    )


def procedure_data(row: ProcedureRow, *, previous: Scenario | None, evidence: Sequence[Evidence]) -> ProcedureData:
    return ProcedureData(
        procedure_id=row.id,
        scenario=Scenario(row.scenario),
        previous_scenario=previous,
        scope=Scope(row.scope),
        eori=row.eori,
        state=ProcedureState(row.state),
        reason=row.reason,
        opened_at=row.opened_at,
        closed_at=row.closed_at,
        evidence=list(evidence),
    )


class ProcedureService:
    """Decides and records procedures. One instance per process; decisions are serialised by a lock."""

    def __init__(self, *, settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._settings = settings
        self._sessions = sessions
        self._lock = asyncio.Lock()
        self.outbox_ready = asyncio.Event()

    async def on_availability(
        self, event: CloudEvent[AvailabilityData] | None, _record: ConsumerRecord[bytes, bytes]
    ) -> None:
        """Record a detector's observation and act on what it changes."""
        assert event is not None  # the consumer dead-letters tombstones on this topic
        seen = event.data
        now = datetime.now(UTC)
        async with self._lock, self._sessions.begin() as session:
            row = await session.get(ObservationRow, (seen.target_id, seen.detector_instance))
            if row is not None and row.observed_at >= seen.observed_at:
                return  # a redelivery or an older message: already accounted for
            if row is None:
                row = ObservationRow(target_id=seen.target_id, detector_instance=seen.detector_instance)
                session.add(row)
            row.component = seen.component.value
            row.eori = seen.eori
            row.state = seen.state.value
            row.reason = seen.reason
            row.observed_at = seen.observed_at
            row.received_at = now
            await session.flush()
            await self._evaluate_national(session, now=now)
        self.outbox_ready.set()

    async def views(self, *, now: datetime) -> dict[Component, ComponentView]:
        async with self._sessions() as session:
            rows = (await session.scalars(select(ObservationRow))).all()
        return component_views(
            [to_observation(r) for r in rows], now=now, stale_after_s=self._settings.procedure.stale_after_s
        )

    async def _evaluate_national(self, session: AsyncSession, *, now: datetime) -> None:
        rows = (await session.scalars(select(ObservationRow))).all()
        views = component_views(
            [to_observation(r) for r in rows], now=now, stale_after_s=self._settings.procedure.stale_after_s
        )
        current = await session.scalar(
            select(ProcedureRow).where(ProcedureRow.scope == Scope.NATIONAL, ProcedureRow.state.in_(ACTIVE_STATES))
        )
        decision = decide_national(Scenario(current.scenario) if current else None, views)
        if decision is None:
            return
        evidence = [
            Evidence(
                target_id=o.target_id,
                component=o.component,
                detector_instance=o.detector_instance,
                state=o.state,
                observed_at=o.observed_at,
                reason=o.reason,
            )
            for view in views.values()
            for o in view.evidence
        ]
        await self._apply(session, current, decision, evidence=evidence, now=now)

    async def _apply(
        self,
        session: AsyncSession,
        current: ProcedureRow | None,
        decision: NationalDecision,
        *,
        evidence: Sequence[Evidence],
        now: datetime,
    ) -> None:
        if decision.action == Action.OPEN:
            row = ProcedureRow(
                id=str(uuid.uuid4()),
                scenario=decision.scenario.value,
                scope=Scope.NATIONAL.value,
                eori=None,
                state=ProcedureState.OPEN.value,
                reason=decision.reason,
                opened_at=now,
                closed_at=None,
                updated_at=now,
            )
            session.add(row)
        else:
            assert current is not None
            row = current
            row.scenario = decision.scenario.value
            row.reason = decision.reason
            row.updated_at = now
            if decision.action == Action.CLOSE:
                row.state = ProcedureState.CLOSED.value
                row.closed_at = now
        await session.flush()
        event = CloudEvent[ProcedureData](
            source=SOURCE,
            type=_EVENT_TYPE[decision.action],
            subject=row.id,
            time=now,
            data=procedure_data(row, previous=decision.previous_scenario, evidence=evidence),
        )
        session.add(
            TimelineRow(
                procedure_id=row.id,
                at=now,
                kind=decision.action.value,
                scenario=decision.scenario.value,
                previous_scenario=decision.previous_scenario.value if decision.previous_scenario else None,
                reason=decision.reason,
                event_id=event.id,
                evidence=[e.model_dump(mode="json") for e in evidence],
            )
        )
        session.add(
            OutboxRow(
                topic=self._settings.kafka.procedures_topic,
                key=row.id,
                payload=event.to_bytes(),
                created_at=now,
                published_at=None,
            )
        )
        log.info("procedure %s %s: %s (%s)", row.id, decision.action.value, decision.scenario.value, decision.reason)

    async def relay_outbox(self, publisher: Publisher, *, poll_s: float = 1.0) -> None:
        """Publish outbox rows in order, forever. At-least-once: a crash after publishing re-sends."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.outbox_ready.wait(), timeout=poll_s)
            self.outbox_ready.clear()
            try:
                await self._drain_outbox(publisher)
            except Exception:
                log.exception("outbox relay failed; retrying")
                await asyncio.sleep(poll_s)

    async def _drain_outbox(self, publisher: Publisher) -> None:
        while True:
            async with self._sessions() as session:
                pending = (
                    await session.scalars(
                        select(OutboxRow).where(OutboxRow.published_at.is_(None)).order_by(OutboxRow.id).limit(100)
                    )
                ).all()
            if not pending:
                return
            for row in pending:
                await publisher.publish_raw(row.topic, row.payload, key=row.key)
                async with self._sessions.begin() as session:
                    await session.execute(
                        update(OutboxRow).where(OutboxRow.id == row.id).values(published_at=datetime.now(UTC))
                    )

    async def outbox_backlog(self) -> int:
        async with self._sessions() as session:
            rows = await session.scalars(select(OutboxRow.id).where(OutboxRow.published_at.is_(None)))
            return len(rows.all())
