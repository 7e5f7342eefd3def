"""Use cases of the procedure service: observations in, decisions recorded, events queued.

Every state change and the events it causes are written in one transaction (transactional outbox);
the relay publishes them afterwards. A crash before the commit leaves the Kafka offsets uncommitted, so
the messages are redelivered and decided again; a crash after it leaves the events in the outbox.
Decisions are serialised by one lock: the service is the single writer of its database.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import Table, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure import domain
from services.procedure.domain import ComponentView, Decision, Observation, Rejected
from services.procedure.models import AdvisoryRow, ComponentRow, ObservationRow, OutboxRow, ProcedureRow
from services.procedure.recorder import Recorder, active_view, evidence_of, load_active
from services.procedure.stream import Broadcaster
from shared.config import Settings
from shared.db import upsert
from shared.events import (
    AdvisoryKind,
    AvailabilityData,
    Component,
    ComponentState,
    Scope,
)
from shared.kafka import Item

log = logging.getLogger(__name__)

FAULT_ENV = "LUCCS_FAULT_INJECT"
"""Test hook: ``procedure.after_commit`` SIGKILLs the process right after a decision is committed and
before its events are published (the crash test of the outbox)."""


MAX_CLOCK_SKEW = timedelta(seconds=30)
"""How far ahead of this service's clock a detector's clock may run before its times are not trusted."""


def _now() -> datetime:
    return datetime.now(UTC)


def _observation(row: ObservationRow) -> Observation:
    return Observation(
        target_id=row.target_id, component=Component(row.component), detector_instance=row.detector_instance,
        state=ComponentState(row.state), observed_at=row.observed_at, reason=row.reason, eori=row.eori,
    )


@dataclass(frozen=True)
class Views:
    national: dict[Component, ComponentView]
    eos: dict[str, ComponentView]

    @property
    def components(self) -> dict[Component, ComponentState]:
        return {c: v.state for c, v in self.national.items()}


class ProcedureService:
    """Decides and records procedures; keeps the latest observations in memory, mirrored in the database."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        broadcaster: Broadcaster | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._clock = clock
        self.broadcaster = broadcaster or Broadcaster()
        self._lock = asyncio.Lock()
        self._observations: dict[tuple[str, str], Observation] = {}
        self._started_at = clock()
        self.outbox_ready = asyncio.Event()
        self.publish_now: Callable[[Sequence[OutboxRow]], Awaitable[None]] | None = None
        """Set by the app: publishes a decision's events right after its commit (else the relay does)."""

    async def load(self) -> None:
        """Rebuild the in-memory state from the database (on start)."""
        async with self._sessions() as session:
            rows = (await session.scalars(select(ObservationRow))).all()
        self._observations = {(r.target_id, r.detector_instance): _observation(r) for r in rows}

    def views(self, *, now: datetime | None = None) -> Views:
        now = now or self._clock()
        cfg = self._settings.procedure
        observations = list(self._observations.values())
        return Views(
            national=domain.component_views(observations, now=now, stale_after_s=cfg.stale_after_s,
                                            quorum=cfg.quorum),
            eos=domain.eo_views(observations, now=now, stale_after_s=cfg.stale_after_s, quorum=cfg.quorum),
        )

    # --- observations -----------------------------------------------------------------------------------

    async def on_availability_batch(self, items: Sequence[Item[AvailabilityData]]) -> None:
        """Record a poll's worth of detector observations in one transaction, then decide once."""
        now = self._clock()
        async with self._lock:
            newer: dict[tuple[str, str], Observation] = {}
            for event, _record in items:
                assert event is not None  # the consumer dead-letters tombstones on this topic
                seen = event.data
                key = (seen.target_id, seen.detector_instance)
                # A detector whose clock runs far ahead must not pin a state for ever: beyond the tolerated
                # skew, the observation counts as made now.
                observed_at = seen.observed_at
                if observed_at > now + MAX_CLOCK_SKEW:
                    log.warning("observation of %s by %s is dated %s, in the future: counted as made now",
                                seen.target_id, seen.detector_instance, observed_at.isoformat())
                    observed_at = now
                known = newer.get(key) or self._observations.get(key)
                if known is not None and known.observed_at >= observed_at:
                    continue  # a redelivery or an older message: already accounted for
                newer[key] = Observation(
                    target_id=seen.target_id, component=seen.component, detector_instance=seen.detector_instance,
                    state=seen.state, observed_at=observed_at, reason=seen.reason, eori=seen.eori,
                )
            if not newer:
                return
            before = self._observations
            self._observations = {**before, **newer}
            try:
                await self._decide(now, store=newer)
            except BaseException:
                self._observations = before  # not committed: the redelivery must be decided again
                raise

    async def tick(self) -> None:
        """Re-decide with the clock moved on: observations go stale, advisories rise and clear."""
        async with self._lock:
            await self._decide(self._clock(), store={})

    async def _decide(self, now: datetime, *, store: dict[tuple[str, str], Observation]) -> None:
        views = self.views(now=now)
        async with self._sessions.begin() as session:
            await upsert(session, cast(Table, ObservationRow.__table__), [
                {"target_id": o.target_id, "detector_instance": o.detector_instance, "component": o.component.value,
                 "eori": o.eori, "state": o.state.value, "reason": o.reason, "observed_at": o.observed_at,
                 "received_at": now}
                for o in store.values()
            ], key=("target_id", "detector_instance"))
            recorder = Recorder(session=session, kafka=self._settings.kafka, now=now, components=views.components)
            active = await load_active(session)
            decisions = domain.decide(
                active=[active_view(r) for r in active], national=views.national, eos=views.eos,
                confirm_mode=self._settings.procedure.mode == "confirm",
            )
            for decision in decisions:
                view = views.national if decision.scope == Scope.NATIONAL else {}
                evidence = [o for v in view.values() for o in v.evidence] if view else list(
                    views.eos[decision.eori].evidence if decision.eori in views.eos else ()
                )
                await recorder.apply(decision, evidence=evidence_of(evidence))
                log.info("procedure %s: %s %s (%s)", decision.action.value, decision.scenario.value,
                         decision.eori or "national", decision.reason)
            advisories = await session.scalars(select(AdvisoryRow.kind).where(AdvisoryRow.active.is_(True)))
            blind_allowed = (now - self._started_at).total_seconds() >= self._settings.procedure.stale_after_s
            for change in domain.decide_advisories(
                active=[AdvisoryKind(k) for k in advisories.all()], national=views.national,
                blind_allowed=blind_allowed,
            ):
                await recorder.advisory(change)
                log.warning("advisory %s %s: %s", change.kind.value, "raised" if change.raise_it else "cleared",
                            change.reason)
            await self._record_components(session, recorder, views, now)
        if decisions and os.environ.get(FAULT_ENV) == "procedure.after_commit":
            os.kill(os.getpid(), signal.SIGKILL)
        await self._publish(recorder)
        self._announce(recorder)

    async def _record_components(self, session: AsyncSession, recorder: Recorder, views: Views, now: datetime) -> None:
        rows = {r.component: r for r in (await session.scalars(select(ComponentRow))).all()}
        for component, view in views.national.items():
            row = rows.get(component.value)
            if row is None:
                session.add(ComponentRow(component=component.value, state=view.state.value, since=now))
            elif row.state != view.state.value:
                row.state, row.since = view.state.value, now
            else:
                continue
            recorder.announcements.append(("status", {"component": component.value, "state": view.state.value,
                                                      "since": now.isoformat()}))

    async def _publish(self, recorder: Recorder) -> None:
        if not recorder.outbox:
            return
        if self.publish_now is not None:
            try:
                await self.publish_now(recorder.outbox)
                return
            except Exception as exc:
                log.warning("publishing right after the decision failed, the outbox relay will retry: %s", exc)
        self.outbox_ready.set()

    def _announce(self, recorder: Recorder) -> None:
        for kind, payload in recorder.announcements:
            self.broadcaster.publish(kind, payload)

    # --- commands from people ---------------------------------------------------------------------------

    async def command(
        self,
        decide: Callable[[list[ProcedureRow]], Decision | None],
        *,
        actor: str,
        auto_close: bool = True,
    ) -> tuple[ProcedureRow | None, Decision | None]:
        """Run an operator or EO command: ``decide`` sees the active procedures and returns what to do.

        Raises :class:`Rejected` (409) when the command does not fit the current state.
        """
        async with self._lock:
            now = self._clock()
            views = self.views(now=now)
            try:
                async with self._sessions.begin() as session:
                    recorder = Recorder(session=session, kafka=self._settings.kafka, now=now,
                                        components=views.components)
                    decision = decide(await load_active(session))
                    row = None
                    if decision is not None:
                        row = await recorder.apply(decision, actor=actor, auto_close=auto_close)
            except IntegrityError as exc:  # the database's one-active-procedure guarantee
                raise Rejected("another active procedure of the same scope exists") from exc
            await self._publish(recorder)
        self._announce(recorder)
        return row, decision

    async def add_note(self, procedure_id: str, *, text: str, actor: str) -> None:
        async with self._lock:
            async with self._sessions.begin() as session:
                row = await session.get(ProcedureRow, procedure_id)
                if row is None:
                    raise LookupError(procedure_id)
                recorder = Recorder(session=session, kafka=self._settings.kafka, now=self._clock(), components={})
                await recorder.note(row, text=text, actor=actor)
            self._announce(recorder)

    async def run_ticks(self) -> None:
        while True:
            await asyncio.sleep(self._settings.procedure.tick_s)
            await self.tick()


def find_active(rows: Sequence[ProcedureRow], *, scope: Scope, eori: str | None = None) -> ProcedureRow | None:
    return next((r for r in rows if r.scope == scope.value and (scope == Scope.NATIONAL or r.eori == eori)), None)

