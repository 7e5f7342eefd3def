"""Use cases of the procedure service: observations in, decisions recorded, events queued.

Every state change and the events it causes are written in one transaction (transactional outbox);
the outbox publishes them afterwards. A crash before the commit leaves the Kafka offsets uncommitted, so
the messages are redelivered and decided again; a crash after it leaves the events in the outbox.
Decisions are serialised by one lock: the service is the single writer of its database, so it keeps what
the decisions read (active procedures, advisories, component states) in memory, mirrored by each commit;
after a failed transaction or an operator command it reads them from the database again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TypeVar, cast

from sqlalchemy import Table, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure import certificates, domain, maintenance, maintenances
from services.procedure.availability import NATIONAL_COMPONENTS
from services.procedure.certificates import CertificateKey, SeenCertificate
from services.procedure.domain import ComponentView, Decision, Observation, Rejected
from services.procedure.history import record_state_changes
from services.procedure.latency import LatencySample, LatencySlot, rollup
from services.procedure.latency_store import add_latency
from services.procedure.leadership import Leadership
from services.procedure.models import AdvisoryRow, ComponentRow, ObservationRow, ProcedureRow
from services.procedure.outbox import Outbox
from services.procedure.recorder import (
    ACTIVE_STATES,
    Recorder,
    active_view,
    certificate_reason,
    evidence_of,
    load_active,
)
from services.procedure.stream import Broadcaster
from shared.config import Settings
from shared.db import upsert
from shared.events import (
    AdvisoryKind,
    AvailabilityData,
    Broadcast,
    CertificateExpiry,
    CloudEvent,
    Component,
    ComponentState,
    ProcedureData,
    Scope,
)
from shared.kafka import Item

log = logging.getLogger(__name__)
T = TypeVar("T")

def _now() -> datetime:
    return datetime.now(UTC)


def _observation(row: ObservationRow) -> Observation:
    return Observation(
        target_id=row.target_id, component=row.component, detector_instance=row.detector_instance,
        state=row.state, observed_at=row.observed_at, reason=row.reason, eori=row.eori,
        suspect=row.suspect, verdict_by=row.verdict_by,
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
        outbox: Outbox | None = None,
        leadership: Leadership | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._clock = clock
        self.broadcaster = broadcaster or Broadcaster()
        self._lock = asyncio.Lock()
        self._observations: dict[tuple[str, str], Observation] = {}
        self._started_at = clock()
        self.outbox = outbox
        """Publishes a decision's events after its commit; without it they stay in the outbox table."""
        self.leadership = leadership
        """Fences decisions (several instances on one database); None: this is the only writer (tests)."""
        self._changes: int | None = None  # the lease's command counter the in-memory state reflects
        # What the decisions read, mirrored from the database by each commit; None: read it again.
        self._active: dict[str, ProcedureRow] | None = None
        self._advisories: set[AdvisoryKind] | None = None
        self._components: dict[Component, ComponentState] | None = None
        self._certificates: dict[CertificateKey, tuple[str, CertificateExpiry]] | None = None
        self.recheck_at: datetime | None = None
        """When a decision that waits for a verdict on its way is to be made again (None: nothing waits)."""
        self._woken = asyncio.Event()

    async def load(self) -> None:
        """Rebuild the in-memory state from the database (on start)."""
        async with self._sessions() as session:
            rows = (await session.scalars(select(ObservationRow))).all()
        self._observations = {(r.target_id, r.detector_instance): _observation(r) for r in rows}

    async def take_over(self) -> None:
        """Just elected leader: everything the decisions read comes from the database again, as another
        instance left it."""
        async with self._lock:
            await self.load()
            self._forget()
            self.recheck_at = None

    async def refresh(self) -> None:
        """A standby's reads (status, status page) show the observations the leader recorded."""
        async with self._lock:
            await self.load()

    def views(
        self, *, now: datetime | None = None, observations: dict[tuple[str, str], Observation] | None = None
    ) -> Views:
        """The components' states at ``now``, from the recorded observations (or the ones given)."""
        now = now or self._clock()
        cfg = self._settings.procedure
        seen = list((self._observations if observations is None else observations).values())
        return Views(
            national=domain.component_views(seen, now=now, stale_after_s=cfg.stale_after_s, quorum=cfg.quorum),
            eos=domain.eo_views(seen, now=now, stale_after_s=cfg.stale_after_s, quorum=cfg.quorum),
        )

    # --- observations -----------------------------------------------------------------------------------

    async def on_availability_batch(self, items: Sequence[Item[AvailabilityData]]) -> None:
        """Record a poll's worth of detector observations in one transaction, then decide once."""
        now = self._clock()
        async with self._lock:
            newer: dict[tuple[str, str], Observation] = {}
            latencies: list[LatencySample] = []
            seen_certificates: list[SeenCertificate] = []
            for event, record in items:
                assert event is not None  # the consumer dead-letters tombstones on this topic
                seen = event.data
                key = (seen.target_id, seen.detector_instance)
                sent_at = datetime.fromtimestamp(record.timestamp / 1000, UTC) if record.timestamp > 0 else None
                observed_at = domain.trusted_time(seen.observed_at, sent_at=sent_at, now=now)
                if observed_at != seen.observed_at:
                    log.warning("observation of %s by %s is dated %s, in the future: counted as made at %s",
                                seen.target_id, seen.detector_instance, seen.observed_at.isoformat(),
                                observed_at.isoformat())
                known = newer.get(key) or self._observations.get(key)
                if known is not None and known.observed_at >= observed_at:
                    continue  # a redelivery or an older message: already accounted for
                if seen.latency_ms is not None and seen.eori is None and seen.component in NATIONAL_COMPONENTS:
                    latencies.append(LatencySample(component=seen.component, observed_at=observed_at,
                                                   latency_ms=seen.latency_ms))
                seen_certificates += certificates.seen_certificates(seen)
                newer[key] = Observation(
                    target_id=seen.target_id, component=seen.component, detector_instance=seen.detector_instance,
                    state=seen.state, observed_at=observed_at, reason=seen.reason, eori=seen.eori,
                    suspect=seen.suspect,
                    verdict_by=domain.trusted_verdict(seen.verdict_by if seen.suspect else None,
                                                      observed_at=seen.observed_at, trusted_at=observed_at),
                )
            if not newer:
                return
            # Recorded only once committed: until then the status shows the state its decisions are in,
            # and a redelivery after a failure is decided again.
            await self._decide(now, store=newer, latency=rollup(latencies), seen_certificates=seen_certificates)

    async def tick(self) -> None:
        """Re-decide with the clock moved on: observations go stale, advisories rise and clear."""
        async with self._lock:
            await self._decide(self._clock(), store={})

    async def _decide(self, now: datetime, *, store: dict[tuple[str, str], Observation],
                      latency: Sequence[LatencySlot] = (), seen_certificates: Sequence[SeenCertificate] = ()) -> None:
        observations = {**self._observations, **store}
        views = self.views(now=now, observations=observations)
        try:
            async with self._sessions.begin() as session:
                epoch = await self._fence(session)
                await upsert(session, cast(Table, ObservationRow.__table__), [
                    {"target_id": o.target_id, "detector_instance": o.detector_instance,
                     "component": o.component, "eori": o.eori, "state": o.state, "reason": o.reason,
                     "observed_at": o.observed_at, "received_at": now, "suspect": o.suspect,
                     "verdict_by": o.verdict_by}
                    for o in store.values()
                ], key=("target_id", "detector_instance"))
                await add_latency(session, latency)
                recorder = Recorder(session=session, kafka=self._settings.kafka, now=now,
                                    components=views.components, epoch=epoch)
                active = await self._active_procedures(session)
                national_now = next((r for r in active.values() if r.scope == Scope.NATIONAL), None)
                windows = await maintenances.run_windows(
                    session, recorder, national=views.national, national_procedure=national_now,
                    reminder_leads_s=self._settings.procedure.maintenance_reminders_s,
                )
                active.update({r.id: r for r in recorder.procedures if r.state in ACTIVE_STATES})
                national_now = next((r for r in active.values() if r.scope == Scope.NATIONAL), None)
                # Components under an active window count as down: the probes open nothing more meanwhile.
                national = maintenance.masked_views(views.national, windows.active)
                waits = [
                    domain.national_wait(active_view(national_now).scenario if national_now else None,
                                         national, now=now),
                    domain.advisory_wait(national, now=now),
                    windows.next_at,
                ]
                decisions = domain.decide(
                    active=[active_view(r) for r in active.values()], national=national, eos=views.eos,
                    confirm_mode=self._settings.procedure.mode == "confirm", now=now,
                )
                for decision in decisions:
                    if decision.scope == Scope.NATIONAL:
                        evidence = [o for v in national.values() for o in domain.supporting_evidence(v)]
                    else:
                        view = views.eos.get(decision.eori or "")
                        evidence = list(domain.supporting_evidence(view)) if view else []
                    await recorder.apply(decision, evidence=evidence_of(evidence))
                    log.info("procedure %s: %s %s (%s)", decision.action.value, decision.scenario.value,
                             decision.eori or "national", decision.reason)
                advisories = await self._active_advisories(session)
                blind_allowed = (now - self._started_at).total_seconds() >= self._settings.procedure.stale_after_s
                changes = [
                    change for change in domain.decide_advisories(
                        active=sorted(advisories), national=national, blind_allowed=blind_allowed, now=now,
                    )
                    if not (change.raise_it and maintenance.planned_advisory(change.kind, windows.active))
                ]
                for change in changes:
                    await recorder.advisory(change)
                    log.warning("advisory %s %s: %s", change.kind.value, "raised" if change.raise_it else "cleared",
                                change.reason)
                told = await self._told_certificates(session, recorder, seen_certificates, now)
                components = await self._record_components(session, recorder, views, now)
        except BaseException:
            self._forget()
            raise
        # Committed: mirror it in memory.
        self._observations = observations
        touched = {row.id: row for row in recorder.procedures}
        self._active = {
            row_id: row for row_id, row in {**active, **touched}.items() if row.state in ACTIVE_STATES
        }
        self._advisories = (advisories | {c.kind for c in changes if c.raise_it}) - {
            c.kind for c in changes if not c.raise_it
        }
        self._components = components
        self._certificates = told
        self._recheck(min((w for w in waits if w is not None), default=None))
        self._publish(recorder)
        self._announce(recorder)

    def _forget(self) -> None:
        self._active = self._advisories = self._components = self._certificates = None
        self._changes = None

    async def _fence(self, session: AsyncSession) -> int | None:
        """Refuse (NotLeader) unless this instance leads; forget what a command changed since the last decision.
        Returns the epoch the decision is made under."""
        if self.leadership is None:
            return None
        changes = await self.leadership.fence(session)
        if changes != self._changes:
            self._forget()  # an operator or EO command ran (maybe on another instance): read it all again
            self._changes = changes
        return self.leadership.epoch

    async def _told_certificates(
        self, session: AsyncSession, recorder: Recorder, seen: Sequence[SeenCertificate], now: datetime
    ) -> dict[CertificateKey, tuple[str, CertificateExpiry]] | None:
        """Tell the Servicedesk of the certificates of national targets that reached a warning level (see
        :mod:`services.procedure.certificates`); returns the certificate advisories active after that."""
        told = self._certificates
        if not seen:
            return told
        if told is None:
            rows = (await session.scalars(select(AdvisoryRow).where(
                AdvisoryRow.active.is_(True), AdvisoryRow.kind == AdvisoryKind.CERTIFICATE_EXPIRING.value
            ))).all()
            told = {}
            for row in rows:
                if row.detail and "certificate" in row.detail:
                    known = CertificateExpiry.model_validate(row.detail["certificate"])
                    told[(known.target_id, known.role)] = (row.id, known)
        told = dict(told)
        for change in certificates.certificate_changes(told=told, seen=seen, now=now,
                                                       levels=self._settings.detector.cert_warning_days):
            key = (change.certificate.target_id, change.certificate.role)
            if change.raise_it and change.advisory_id is None and key in told:
                change = replace(change, advisory_id=told[key][0])  # raised earlier in this batch
            advisory_id = await recorder.certificate_advisory(change)
            if change.raise_it:
                told[key] = (advisory_id, change.certificate)
            else:
                told.pop(key, None)
            log.warning("advisory certificate_expiring %s: %s", "raised" if change.raise_it else "cleared",
                        certificate_reason(change.certificate))
        return told

    async def _active_procedures(self, session: AsyncSession) -> dict[str, ProcedureRow]:
        if self._active is None:
            return {row.id: row for row in await load_active(session)}
        return dict(self._active)

    async def _active_advisories(self, session: AsyncSession) -> set[AdvisoryKind]:
        if self._advisories is None:
            kinds = await session.scalars(select(AdvisoryRow.kind).where(AdvisoryRow.active.is_(True)))
            return set(kinds.all())
        return set(self._advisories)

    async def _record_components(
        self, session: AsyncSession, recorder: Recorder, views: Views, now: datetime
    ) -> dict[Component, ComponentState]:
        """Record the national components whose state changed; return every component's state."""
        known = self._components
        if known is None:
            known = {r.component: r.state for r in (await session.scalars(select(ComponentRow))).all()}
        changed = {
            component: view.state
            for component, view in views.national.items()
            if known.get(component) != view.state
        }
        await upsert(session, cast(Table, ComponentRow.__table__), [
            {"component": component, "state": state, "since": now} for component, state in changed.items()
        ], key=("component",))
        await record_state_changes(session, changed, now=now)
        for component, state in changed.items():
            recorder.announcements.append(("status", {"component": component, "state": state,
                                                      "since": now.isoformat()}))
        return {**known, **changed}

    def _publish(self, recorder: Recorder) -> None:
        if self.outbox is not None:
            self.outbox.publish_soon(recorder.outbox)

    def _announce(self, recorder: Recorder) -> None:
        for kind, payload in recorder.announcements:
            # Procedure events carry the EORI in their data, notes at the top; status changes are national.
            concerns = payload.get("eori") or (payload.get("data") or {}).get("eori")
            self.broadcaster.publish(kind, payload, eori=concerns)

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
                    # On any instance: the lease row's lock orders the command with decisions and takeovers.
                    epoch = await self.leadership.serialise_command(session) if self.leadership else None
                    recorder = Recorder(session=session, kafka=self._settings.kafka, now=now,
                                        components=views.components, epoch=epoch)
                    decision = decide(await load_active(session))
                    row = None
                    if decision is not None:
                        row = await recorder.apply(decision, actor=actor, auto_close=auto_close)
            except IntegrityError as exc:  # the database's one-active-procedure guarantee
                raise Rejected("another active procedure of the same scope exists") from exc
            finally:
                self._forget()  # commands are rare: the next decision reads the procedures again
            self._publish(recorder)  # on a standby the outbox leaves them to the leader, which the counter wakes
        self._announce(recorder)
        return row, decision

    async def record(self, work: Callable[[AsyncSession, Recorder], Awaitable[T]]) -> T:
        """Run an operator command that records something besides a decision (a broadcast, a maintenance
        window) in one transaction, on any instance, ordered with decisions like :meth:`command`; its queued
        events are published after the commit."""
        async with self._lock:
            now = self._clock()
            async with self._sessions.begin() as session:
                epoch = await self.leadership.serialise_command(session) if self.leadership else None
                recorder = Recorder(session=session, kafka=self._settings.kafka, now=now,
                                    components=self.views(now=now).components, epoch=epoch)
                result = await work(session, recorder)
            self._publish(recorder)
        self._announce(recorder)
        return result

    async def broadcast(self, procedure_id: str, *, message: Broadcast, actor: str) -> CloudEvent[ProcedureData]:
        """Send a broadcast: LookupError for an unknown procedure, :class:`Rejected` for one that is not open."""

        async def work(session: AsyncSession, recorder: Recorder) -> CloudEvent[ProcedureData]:
            row = await session.get(ProcedureRow, procedure_id)
            if row is None:
                raise LookupError(procedure_id)
            refusal = domain.broadcast_refusal(row.state)
            if refusal is not None:
                raise Rejected(refusal)
            return await recorder.broadcast(row, message=message, actor=actor)

        return await self.record(work)

    async def add_note(self, procedure_id: str, *, text: str, actor: str) -> None:
        async with self._lock:
            async with self._sessions.begin() as session:
                row = await session.get(ProcedureRow, procedure_id)
                if row is None:
                    raise LookupError(procedure_id)
                recorder = Recorder(session=session, kafka=self._settings.kafka, now=self._clock(), components={})
                await recorder.note(row, text=text, actor=actor)
            self._announce(recorder)

    def _recheck(self, at: datetime | None) -> None:
        """Decide again at ``at``: a verdict a decision waits for is due then (see :func:`domain.national_wait`)."""
        if at == self.recheck_at:
            return
        if at is not None:
            log.info("a national decision waits for a verdict due at %s", at.isoformat())
        self.recheck_at = at
        self._woken.set()

    async def run_ticks(self) -> None:
        """Re-decide every ``tick_s``, and as soon as a verdict a decision waits for is due."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + self._settings.procedure.tick_s
        while True:
            self._woken.clear()
            wake = next_tick
            if self.recheck_at is not None:
                due_in = (self.recheck_at - self._clock()).total_seconds()
                wake = min(wake, loop.time() + max(0.0, due_in) + 0.01)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), timeout=max(0.0, wake - loop.time()))
                continue  # the verdict's due time moved: wait again until the new one
            if loop.time() >= next_tick:
                next_tick = loop.time() + self._settings.procedure.tick_s
            await self.tick()


def find_active(rows: Sequence[ProcedureRow], *, scope: Scope, eori: str | None = None) -> ProcedureRow | None:
    return next((r for r in rows if r.scope == scope and (scope == Scope.NATIONAL or r.eori == eori)), None)

