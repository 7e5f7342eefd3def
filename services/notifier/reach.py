"""Reaching every EO: escalation by e-mail, the Servicedesk's digest of the unreached, EOs registered while a
procedure concerns them, the gauge of unreached EOs, and a procedure's reach (who, on which channel, when).

One loop (:meth:`ReachKeeper.run`) does the timed work, from state kept in the database so that a restart
loses none of it: ``deliveries.escalate_at`` (an EO webhook notice to e-mail when undelivered by then),
``planned_events.digest_at`` (a fan-out whose unreached EOs the Servicedesk hears of then) and
``procedure_reach`` (the EOs a procedure concerns). What to send is decided by the pure rules of
:mod:`services.notifier.domain`; this module reads and writes the tables around them.

Several notifiers may share a database: due rows are taken with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL)
and what is planned is inserted only where missing (one delivery per event, recipient and channel), so an
escalation, a digest or a late joiner's notice is sent once, also after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier.domain import (
    NO_ADDRESS,
    Audience,
    EoNotice,
    PlannedNotice,
    TimeToReach,
    UnreachedEo,
    concerned_eos,
    escalation_target,
    fanout_unreached,
    idempotency_key,
    lane_of,
    notice_kind,
    plan_procedure_notices,
    reaches_eos,
    time_to_reach,
)
from services.notifier.models import DeliveryRow, EoRow, KnownProcedureRow, NoticeRow, PlannedEventRow, ReachRow
from services.notifier.notices import Notice
from services.notifier.planning import (
    NoticeDesk,
    contacts_of,
    new_delivery_id,
    own_procedures,
    record_notices,
    situation_of,
)
from shared.db import upsert
from shared.events import (
    CloudEvent,
    DeliveryChannel,
    DeliveryStatus,
    EventType,
    ProcedureData,
    ProcedureState,
    Scope,
)

log = logging.getLogger(__name__)

__all__ = ["DIGEST_KEY", "ReachKeeper", "ReachReport", "procedure_reach"]

DIGEST_KEY = "servicedesk-digest"
"""The recipient key of the Servicedesk's digests: one per fan-out (event), besides its notice of the event."""
_D = cast(Table, DeliveryRow.__table__)
_EO = Audience.EO
_OPEN = ProcedureState.OPEN


@dataclass(frozen=True)
class ReachReport:
    """Who of the EOs a procedure concerns has been reached, and how fast (see :func:`procedure_reach`)."""

    procedure_id: str
    opened_at: datetime | None
    concerned: int
    reached: int
    unreached: list[UnreachedEo]
    times: TimeToReach


async def procedure_reach(session: AsyncSession, *, procedure_id: str) -> ReachReport | None:
    """The reach of a procedure: every EO it concerns, reached or not (with the channel and error of its
    latest failed try), and its time to inform. None for a procedure the notifier has never heard of."""
    known = await session.get(KnownProcedureRow, procedure_id)
    rows = (await session.execute(
        select(ReachRow.eori, ReachRow.reached_at, ReachRow.last_channel, ReachRow.last_error)
        .where(ReachRow.procedure_id == procedure_id).order_by(ReachRow.eori)
    )).all()
    if known is None and not rows:
        return None
    opened_at = known.opened_at if known is not None else None
    unreached = [
        UnreachedEo(eori=row.eori, channel=row.last_channel, last_error=row.last_error)
        for row in rows if row.reached_at is None
    ]
    return ReachReport(
        procedure_id=procedure_id, opened_at=opened_at, concerned=len(rows), reached=len(rows) - len(unreached),
        unreached=unreached, times=time_to_reach(opened_at=opened_at, reached_at=[row.reached_at for row in rows]),
    )


def overdue_escalations(now: datetime, limit: int) -> Any:
    """The first ``limit`` EO webhook notices overdue by ``now`` (their e-mail now due), locked for this
    notifier: their id, EORI and event. From the partial index of the watched rows (``escalate_at`` set)."""
    return (
        select(_D.c.id, _D.c.eori, _D.c.event_id)
        .where(_D.c.escalate_at <= now)
        .order_by(_D.c.escalate_at).limit(limit).with_for_update(skip_locked=True)
    )


@dataclass(frozen=True)
class _Planned:
    """An EO's notice of one event as recorded: the domain's view, and what an e-mail of it needs."""

    notice: EoNotice
    scope: Scope
    """The subject's kind: ``national``, or ``eo`` (the EO's own scenario-1 procedures)."""
    event_type: EventType
    procedure_id: str
    notice_id: int


class ReachKeeper:
    """Runs escalations, digests and the late joiners' notices until cancelled; :meth:`wake` after a fan-out
    or a registry change makes it look at once."""

    def __init__(
        self,
        desk: NoticeDesk,
        *,
        on_planned: Callable[[], None] = lambda: None,
        poll_s: float = 1.0,
        sweep_s: float = 30.0,
        gauge_s: float = 2.0,
        batch: int = 500,
    ) -> None:
        self._settings, self._sessions, self._texts = desk.settings, desk.sessions, desk.texts
        self._metrics, self._clock = desk.metrics, desk.clock
        self._on_planned = on_planned
        self._poll_s = poll_s
        self._sweep_s = sweep_s
        self._gauge_s = gauge_s
        self._batch = batch
        self._wake = asyncio.Event()
        self._joiners_due = True
        self._swept_at = 0.0
        self._gauge_due = 0.0
        self._gauged: set[str] = set()
        self.running = False

    def wake(self) -> None:
        """Something changed (a fan-out, the registry): look for EOs to tell at once."""
        self._joiners_due = True
        self._wake.set()

    async def run(self) -> None:
        self.running = True
        try:
            while True:
                try:
                    await self.tick()
                except Exception:
                    log.exception("escalating or reporting undelivered notices failed; trying again")
                # asyncio.timeout, not wait_for: Python 3.11's wait_for may swallow a cancellation that
                # arrives as it times out, and the loop would then never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_s):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            self.running = False

    async def tick(self) -> None:
        """One pass: late joiners (when woken, else every ``sweep_s``), due escalations and digests, the gauge."""
        planned = 0
        if self._joiners_due or time.monotonic() - self._swept_at >= self._sweep_s:
            self._joiners_due = False
            self._swept_at = time.monotonic()
            planned += await self.plan_late_joiners()
        while True:
            due, sent = await self.escalate()
            planned += sent
            if due < self._batch:
                break
        while True:
            due, sent = await self.send_digests()
            planned += sent
            if due < self._batch:
                break
        if planned:
            self._on_planned()
        if time.monotonic() >= self._gauge_due:
            started = time.monotonic()
            await self.refresh_gauge()
            # The count of a national procedure's unreached EOs walks up to 100,000 index entries: every
            # gauge_s, and no more than a twentieth of the time, beside the fan-out it counts.
            self._gauge_due = time.monotonic() + max(self._gauge_s, 20 * (time.monotonic() - started))

    # --- EOs registered while a procedure concerns them --------------------------------------------------

    async def plan_late_joiners(self) -> int:
        """Plan the current notice of every open procedure for the EOs it concerns that were not told of it:
        registered (or read from the registry) after its fan-out, or given an address only since."""
        planned = 0
        now = self._clock()
        async with self._sessions.begin() as session:
            procedures = (await session.scalars(
                select(KnownProcedureRow.event)
                .where(KnownProcedureRow.state == _OPEN, KnownProcedureRow.event.is_not(None))
            )).all()
            for stored in procedures:
                event = CloudEvent[ProcedureData].model_validate_json(cast(str, stored))
                if reaches_eos(notice_kind(event.type), event.data):
                    planned += await self._tell_late_joiners(session, event, now)
        return planned

    async def _tell_late_joiners(self, session: AsyncSession, event: CloudEvent[ProcedureData], now: datetime) -> int:
        procedure = event.data
        reach = and_(ReachRow.procedure_id == procedure.procedure_id, ReachRow.eori == EoRow.eori)
        told = exists().where(_D.c.event_id == event.id, _D.c.recipient_key == EoRow.eori)
        query = (
            select(EoRow.eori, EoRow.language, EoRow.webhook_url, EoRow.email)
            .outerjoin(ReachRow, reach)
            .where(or_(
                ReachRow.eori.is_(None),  # not concerned yet: registered since
                and_(ReachRow.reached_at.is_(None), ~told,  # concerned, unreached, reachable since
                     or_(EoRow.webhook_url.is_not(None), EoRow.email.is_not(None))),
            ))
        )
        if procedure.scope == Scope.EO:
            query = query.where(EoRow.eori == procedure.eori)
        found = (await session.execute(query)).all()
        if not found:
            return 0
        situation = await situation_of(session, excluding=procedure.procedure_id)
        own = await own_procedures(session, excluding=procedure.procedure_id)
        contacts = contacts_of(found, own)
        planned = plan_procedure_notices(
            event_type=event.type, procedure=procedure, eos=contacts, servicedesk=None, bureau=None
        )

        def render(notice: PlannedNotice) -> Notice:
            return self._texts.eo_notice(event_type=event.type, procedure=procedure, language=notice.language,
                                         situation=situation, own_procedure_id=notice.own_procedure_id)

        count = await record_notices(
            session, event=event, subject_id=procedure.procedure_id, planned=planned, render=render,
            concerned=concerned_eos(event_type=event.type, procedure=procedure, eos=contacts), now=now,
            escalate_after_s=self._settings.escalate_after_s,
        )
        log.info("%d EOs concerned by %s since its fan-out get its current notice (%d deliveries)",
                 len(found), procedure.procedure_id, count)
        return count

    # --- escalation -----------------------------------------------------------------------------------------

    async def escalate(self) -> tuple[int, int]:
        """E-mail the EO notices whose webhook delivery is overdue (or the current notice that supersedes them);
        returns how many were due and how many e-mails were planned."""
        now = self._clock()
        async with self._sessions.begin() as session:
            due = (await session.execute(overdue_escalations(now, self._batch))).all()
            if not due:
                return 0, 0
            await session.execute(update(_D).where(_D.c.id.in_([row.id for row in due])).values(escalate_at=None))
            eoris = {row.eori for row in due if row.eori}
            emails: dict[str, str | None] = {
                row.eori: row.email
                for row in (await session.execute(select(EoRow.eori, EoRow.email).where(EoRow.eori.in_(eoris)))).all()
            }
            chains = await _chains(session, eoris)
            rows: dict[tuple[str, str], dict[str, Any]] = {}
            for row in due:
                chain = _from_event(chains.get(row.eori, []), row.event_id)
                email = emails.get(row.eori)
                target = escalation_target([p.notice for p in chain], has_email=bool(email))
                if target is None or email is None:
                    continue
                current = next(p for p in chain if p.notice.event_id == target)
                rows[(target, row.eori)] = _email_row(current, eori=row.eori, address=email, now=now)
            await upsert(session, _D, list(rows.values()), key=("event_id", "recipient_key", "channel"), update=False)
        if rows:
            self._metrics.escalations.inc(len(rows))
            log.info("%d EO notices not delivered by webhook within %.0fs go by e-mail too", len(rows),
                     self._settings.escalate_after_s)
        return len(due), len(rows)

    # --- the Servicedesk's digest ------------------------------------------------------------------------------

    async def send_digests(self) -> tuple[int, int]:
        """Plan the Servicedesk's digest of every due fan-out that still has unreached EOs (one per fan-out);
        returns how many fan-outs were due and how many digests were planned."""
        now = self._clock()
        sent = 0
        async with self._sessions.begin() as session:
            due = (await session.scalars(
                select(PlannedEventRow).where(PlannedEventRow.digest_at <= now)
                .order_by(PlannedEventRow.digest_at).limit(self._batch).with_for_update(skip_locked=True)
            )).all()
            for fanout in due:
                fanout.digest_at = None
                if self._settings.servicedesk_email and await self._digest(session, fanout, now):
                    sent += 1
        if sent:
            self._metrics.digests.inc(sent)
        return len(due), sent

    async def _digest(self, session: AsyncSession, fanout: PlannedEventRow, now: datetime) -> bool:
        procedure_id = fanout.subject_id
        eoris = set((await session.scalars(
            select(_D.c.eori).where(_D.c.event_id == fanout.event_id, _D.c.audience == _EO).distinct()
        )).all()) - {None}
        chains = await _chains(session, cast(set[str], eoris))
        unreached = fanout_unreached({
            eori: [p.notice for p in _from_event(chains.get(eori, []), fanout.event_id)] for eori in eoris
        })
        any_delivery = exists().where(_D.c.procedure_id == procedure_id, _D.c.eori == ReachRow.eori,
                                      _D.c.audience == _EO)
        no_address = (await session.scalars(
            select(ReachRow.eori).where(ReachRow.procedure_id == procedure_id, ReachRow.reached_at.is_(None),
                                        ~any_delivery)
        )).all()
        unreached += [UnreachedEo(eori=eori, channel=None, last_error=NO_ADDRESS) for eori in no_address]
        if not unreached:
            return False
        language = self._settings.servicedesk_language
        text = self._texts.digest_notice(
            procedure_id=procedure_id, event_type=fanout.event_type, planned_at=fanout.planned_at,
            concerned=len(eoris) + len(no_address), unreached=sorted(unreached, key=lambda eo: eo.eori),
            language=language,
        )
        notice = NoticeRow(event_id=fanout.event_id, audience=Audience.SERVICEDESK, language=language,
                           variant="digest", subject=text.subject, message=text.message, webhook_body=None)
        session.add(notice)
        await session.flush()
        address = cast(str, self._settings.servicedesk_email)
        await upsert(session, _D, update=False, rows=[{
            **_delivery(event_id=fanout.event_id, event_type=fanout.event_type, procedure_id=procedure_id,
                        notice_id=notice.id, recipient_key=DIGEST_KEY, address=address, now=now),
            "audience": Audience.SERVICEDESK, "eori": None,
        }], key=("event_id", "recipient_key", "channel"))
        log.warning("%d EOs concerned by %s are still unreached: digest to the Servicedesk", len(unreached),
                    procedure_id)
        return True

    # --- gauge ------------------------------------------------------------------------------------------------

    async def refresh_gauge(self) -> None:
        """``luccs_notifier_unreached_eos{procedure_id}`` for every open procedure; a closed one's series goes."""
        async with self._sessions() as session:
            active = set((await session.scalars(
                select(KnownProcedureRow.procedure_id).where(KnownProcedureRow.state == _OPEN)
            )).all())
            counts: dict[str, int] = {
                procedure_id: count for procedure_id, count in (await session.execute(
                    select(ReachRow.procedure_id, func.count())
                    .where(ReachRow.procedure_id.in_(active), ReachRow.reached_at.is_(None))
                    .group_by(ReachRow.procedure_id)
                )).all()
            } if active else {}
        for procedure_id in active:
            self._metrics.unreached_eos.labels(procedure_id=procedure_id).set(counts.get(procedure_id, 0))
        for procedure_id in self._gauged - active:
            with contextlib.suppress(KeyError):
                self._metrics.unreached_eos.remove(procedure_id)
        self._gauged = active


async def _chains(session: AsyncSession, eoris: Iterable[str]) -> dict[str, list[_Planned]]:
    """Each EO's notices in the order planned, of both its subjects (national procedures and its own
    scenario-1 ones); :func:`_from_event` keeps the subject of the notice it starts from."""
    eoris = list(eoris)
    if not eoris:
        return {}
    rows = (await session.execute(
        select(_D.c.eori, _D.c.event_id, _D.c.event_type, _D.c.procedure_id, _D.c.notice_id, _D.c.channel,
               _D.c.status, _D.c.created_at, _D.c.updated_at, _D.c.last_error, KnownProcedureRow.scope)
        .select_from(_D.join(KnownProcedureRow, KnownProcedureRow.procedure_id == _D.c.procedure_id))
        .where(_D.c.audience == _EO, _D.c.eori.in_(eoris))
    )).all()
    grouped: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in rows:
        grouped[(row.eori, row.event_id)].append(row)
    chains: dict[str, list[_Planned]] = defaultdict(list)
    for (eori, event_id), channels in grouped.items():
        first = min(channels, key=lambda r: (r.created_at, r.notice_id))
        failed = sorted((r for r in channels if r.last_error and r.status != DeliveryStatus.DELIVERED),
                        key=lambda r: r.updated_at)
        tried = failed[-1] if failed else first
        chains[eori].append(_Planned(
            scope=first.scope,
            notice=EoNotice(
                event_id=event_id, planned_at=first.created_at,
                delivered=any(r.status == DeliveryStatus.DELIVERED for r in channels),
                emailed=any(r.channel == DeliveryChannel.EMAIL for r in channels),
                last_channel=tried.channel, last_error=tried.last_error if failed else None,
            ),
            event_type=first.event_type, procedure_id=first.procedure_id, notice_id=first.notice_id,
        ))
    for chain in chains.values():
        chain.sort(key=lambda p: (p.notice.planned_at, p.notice_id))
    return chains


def _from_event(chain: Sequence[_Planned], event_id: str) -> list[_Planned]:
    """The notices of ``chain`` from event ``event_id``'s on, of that event's subject only."""
    for index, start in enumerate(chain):
        if start.notice.event_id == event_id:
            return [planned for planned in chain[index:] if planned.scope == start.scope]
    return []


def _email_row(planned: _Planned, *, eori: str, address: str, now: datetime) -> dict[str, Any]:
    return {
        **_delivery(event_id=planned.notice.event_id, event_type=planned.event_type, procedure_id=planned.procedure_id,
                    notice_id=planned.notice_id, recipient_key=eori, address=address, now=now),
        "audience": _EO, "eori": eori,
    }


def _delivery(
    *, event_id: str, event_type: EventType, procedure_id: str, notice_id: int, recipient_key: str, address: str,
    now: datetime,
) -> dict[str, Any]:
    channel = DeliveryChannel.EMAIL
    return {
        "id": new_delivery_id(), "event_id": event_id, "event_type": event_type, "procedure_id": procedure_id,
        "notice_id": notice_id, "recipient_key": recipient_key, "channel": channel, "recipient": address,
        "lane": lane_of(channel, address), "idempotency_key": idempotency_key(event_id, recipient_key, channel),
        "status": DeliveryStatus.PENDING, "attempts": 0, "next_attempt_at": now, "claimed_by": None,
        "claimed_until": None, "last_error": None, "last_http_status": None, "created_at": now, "updated_at": now,
        "delivered_at": None, "escalate_at": None,
    }
