"""Use cases that turn consumed events into planned deliveries: follow the EO registry, fan out procedure
events and advisories.

Besides its deliveries, a fan-out records the EOs the procedure concerns (``procedure_reach``), marks the
webhook notices to escalate by e-mail (``deliveries.escalate_at``) and when the Servicedesk's digest of
the unreached is due (``planned_events.digest_at``); :mod:`services.notifier.reach` acts on them. A
registry change that moves an EO's webhook or e-mail sends its retrying deliveries to the new address at once.

A fan-out is recorded in one transaction (:meth:`Planner._fan_out`): the registry read, every EO the
procedure concerns, every delivery and the planned-event row that marks the event as planned. All or
nothing: a crash or an error leaves nothing, the Kafka record is consumed again, and a redelivered event
whose planned-event row exists is a no-op. The rows are inserted in bulk, column by column
(:func:`shared.db.insert_columns`), not through the ORM; the deliveries ``PLAN_PART`` at a time, each part built
in a thread while the database writes the one before (:func:`shared.db.insert_column_parts`), all in that
one transaction. (Chunks committed as they go were tried, to start
sending sooner: a plan cut part way then had to be resumed per EO, a registry change between chunks was
missed, and a chunk failing for good left a partial plan: ``bench/README.md``, "Planning in chunks".)
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from aiokafka import ConsumerRecord
from sqlalchemy import Table, delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifier.broadcasts import broadcast_notice, plan_broadcast_notices
from services.notifier.domain import (
    NO_ADDRESS,
    Audience,
    EoContact,
    NoticeKind,
    PlannedNotice,
    Situation,
    StaffContact,
    concerned_eos,
    escalation_times,
    idempotency_key,
    lane_of,
    notice_kind,
    plan_advisory_notices,
    plan_procedure_notices,
    url_origin,
    watched_for_escalation,
)
from services.notifier.maintenance_notices import maintenance_notice, plan_maintenance_notices
from services.notifier.metrics import NotifierMetrics
from services.notifier.models import (
    AdvisoryRow,
    DeliveryRow,
    EoRow,
    KnownProcedureRow,
    NoticeRow,
    PlannedEventRow,
    ReachRow,
)
from services.notifier.notices import EoSummary, Notice, NoticeTexts
from shared.config import NotifierSettings
from shared.db import checkpoint, defer_checkpoint, insert_column_parts, insert_columns, upsert
from shared.events import (
    AdvisoryData,
    AdvisoryKind,
    CloudEvent,
    DeliveryChannel,
    DeliveryStatus,
    EoData,
    EventType,
    Language,
    MaintenanceData,
    ProcedureData,
    ProcedureState,
    Scope,
)
from shared.kafka import Item

log = logging.getLogger(__name__)

__all__ = [
    "NoticeDesk", "Planner", "contacts_of", "new_delivery_id", "new_delivery_ids",
    "own_procedures", "record_notices", "record_reach", "registered_eos", "situation_of",
]

_DUE = (DeliveryStatus.PENDING, DeliveryStatus.RETRYING)
_DELIVERIES = cast(Table, DeliveryRow.__table__)
_REACH = cast(Table, ReachRow.__table__)
_EOS = cast(Table, EoRow.__table__)
_PLANNED_EVENTS = cast(Table, PlannedEventRow.__table__)
ANALYZE_AFTER = 1000
"""A plan of at least this many deliveries refreshes PostgreSQL's statistics of the tables it filled (see
:meth:`Planner._refresh_statistics`)."""
PLAN_PART = 10_000
"""A plan's deliveries are built and inserted this many at a time (:func:`shared.db.insert_column_parts`), in
its one transaction."""
DEFER_CHECKPOINT_AFTER = 5_000
"""A plan of at least this many deliveries (on SQLite, about the log's 1,000 pages that make a commit copy it into
the database file) commits without that copy, which follows once the dispatcher is woken
(:func:`shared.db.defer_checkpoint`)."""
_LANGUAGES = {language.value: language for language in Language}
_VARIANT_DIGITS = "89ab"


@dataclass(frozen=True)
class NoticeDesk:
    """What plans and records notices (the :class:`Planner` and the reach keeper) works with: the settings,
    the delivery log, the notice texts, the metrics, and the clock that says when (tests move it on)."""

    settings: NotifierSettings
    sessions: async_sessionmaker[AsyncSession]
    texts: NoticeTexts
    metrics: NotifierMetrics
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


class Planner:
    """Handlers of the three consumers (EO registry, procedures, advisories)."""

    def __init__(
        self,
        desk: NoticeDesk,
        *,
        on_planned: Callable[[], None] = lambda: None,
        on_registry: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_planned``: a fan-out is recorded."""
        self._settings, self._sessions, self._texts = desk.settings, desk.sessions, desk.texts
        self._metrics, self._clock = desk.metrics, desk.clock
        self._on_planned = on_planned
        self._on_registry = on_registry
        self._upserted = 0  # EOs upserted since the registry's last ANALYZE
        self._upserted_at_analyze = 0

    @property
    def servicedesk(self) -> StaffContact | None:
        email = self._settings.servicedesk_email
        return StaffContact(email, self._settings.servicedesk_language) if email else None

    @property
    def bureau(self) -> StaffContact | None:
        email = self._settings.bureau_email
        return StaffContact(email, self._settings.bureau_language) if email else None

    async def on_eo(self, event: CloudEvent[EoData] | None, record: ConsumerRecord[bytes, bytes]) -> None:
        """Follow the compacted EO topic: an upsert replaces the entry, a tombstone removes it."""
        await self.on_eo_batch([(event, record)])

    async def on_eo_batch(self, items: Sequence[Item[EoData]]) -> None:
        """A poll's worth of registry records in one transaction; the last record of each EORI wins.

        An EO whose webhook URL or e-mail changed gets its pending and retrying deliveries on that channel
        at the new address, due at once (not at the next backoff step).
        """
        latest: dict[str, dict[str, Any] | None] = {}
        for event, record in items:
            if event is None:
                if record.key is None:
                    raise ValueError("tombstone without a key: cannot tell which EO to remove")
                latest[record.key.decode()] = None
                continue
            eo = event.data
            latest[eo.eori] = {
                "eori": eo.eori, "name": eo.name, "language": eo.language, "email": eo.email,
                "webhook_url": eo.webhook_url,
                "webhook_secret": eo.webhook_secret.get_secret_value() if eo.webhook_secret else None,
                "api_key_hash": eo.api_key_hash,
                "updated_at": self._clock(),
            }
        removed = [eori for eori, values in latest.items() if values is None]
        moved = 0
        async with self._sessions.begin() as session:
            known = {
                row.eori: row for row in (await session.execute(
                    select(EoRow.eori, EoRow.webhook_url, EoRow.email).where(EoRow.eori.in_(list(latest)))
                )).all()
            }
            if removed:
                await session.execute(delete(EoRow).where(EoRow.eori.in_(removed)))
            await upsert(session, cast(Table, EoRow.__table__),
                         [values for values in latest.values() if values is not None], key=("eori",))
            now = self._clock()
            for eori, values in latest.items():
                before = known.get(eori)
                if values is None or before is None:
                    continue
                for channel, address, old in (
                    (DeliveryChannel.WEBHOOK, values["webhook_url"], before.webhook_url),
                    (DeliveryChannel.EMAIL, values["email"], before.email),
                ):
                    if address and address != old:
                        moved += await _readdress(session, eori=eori, channel=channel, address=address, now=now)
        if moved:
            log.info("%d deliveries go to a changed webhook URL or e-mail address at once", moved)
            self._on_planned()
        # The registry's statistics as it grows: after ANALYZE_AFTER upserts, then each time as many again as
        # there were at the last ANALYZE (a 100,000-EO catch-up: about seven, each a fraction of a second).
        self._upserted += len(latest) - len(removed)
        if self._upserted >= max(ANALYZE_AFTER, self._upserted_at_analyze):
            self._upserted_at_analyze, self._upserted = self._upserted_at_analyze + self._upserted, 0
            await self._refresh_statistics(_EOS)
        self._on_registry()

    async def on_procedure(
        self, event: CloudEvent[ProcedureData] | None, _record: ConsumerRecord[bytes, bytes]
    ) -> None:
        """Plan every notice of a procedure event (EOs, Servicedesk, Bureau); a redelivered event plans nothing."""
        assert event is not None  # tombstones on this topic are dead-lettered by the consumer
        if event.type == EventType.PROCEDURE_BROADCAST:
            await self._on_broadcast(event)
            return
        procedure = event.data

        async def prepare(session: AsyncSession) -> _Plan:
            situation = await situation_of(session, excluding=procedure.procedure_id)
            own = await own_procedures(session, excluding=procedure.procedure_id)
            contacts = await registered_eos(session, own)
            name = await _name_of(session, procedure.eori) if procedure.scope == Scope.EO else None
            planned = plan_procedure_notices(
                event_type=event.type, procedure=procedure, eos=contacts, servicedesk=self.servicedesk,
                bureau=self.bureau,
            )
            notified = {n.eori for n in planned if n.audience == Audience.EO}
            eos_notified = len(notified)
            bureau_told = any(n.audience == Audience.BUREAU for n in planned)
            self._count_unreachable(event.type, procedure, contacts, notified)
            await _remember_procedure(session, event)

            def render(notice: PlannedNotice) -> Notice:
                if notice.audience == Audience.EO:
                    return self._texts.eo_notice(
                        event_type=event.type, procedure=procedure, language=notice.language, situation=situation,
                        own_procedure_id=notice.own_procedure_id,
                    )
                eo = EoSummary(procedure.eori, name) if procedure.eori else None
                return self._texts.staff_notice(
                    audience=notice.audience, event_type=event.type, procedure=procedure, language=notice.language,
                    eo=eo, eos_notified=eos_notified, bureau_told=bureau_told,
                )

            concerned = concerned_eos(event_type=event.type, procedure=procedure, eos=contacts)
            return _Plan(subject_id=procedure.procedure_id, planned=planned, render=render, concerned=concerned,
                         escalate_after_s=self._settings.escalate_after_s,
                         digest=bool(concerned) and self.servicedesk is not None)

        await self._fan_out(event, prepare)

    async def _on_broadcast(self, event: CloudEvent[ProcedureData]) -> None:
        """Plan a broadcast: the author's text to every EO the procedure concerns, in its language."""
        procedure, broadcast = event.data, event.data.broadcast
        if broadcast is None:
            raise ValueError(f"broadcast event {event.id} carries no broadcast")  # retried, then dead-lettered

        async def prepare(session: AsyncSession) -> _Plan:
            # Filed under the broadcast's id, not the procedure's: a broadcast is no notice of the procedure's
            # state, so it neither counts as reaching an EO nor stands in for a notice being escalated.
            return _Plan(
                subject_id=broadcast.broadcast_id,
                planned=plan_broadcast_notices(procedure=procedure, eos=await registered_eos(session, {})),
                render=lambda notice: broadcast_notice(broadcast, notice.language), concerned=[],
                escalate_after_s=None,
            )

        await self._fan_out(event, prepare)

    async def on_maintenance(
        self, event: CloudEvent[MaintenanceData] | None, _record: ConsumerRecord[bytes, bytes]
    ) -> None:
        """Plan the announcement of a maintenance window (scheduled, changed, cancelled, reminder) to every EO."""
        assert event is not None
        window = event.data

        async def prepare(session: AsyncSession) -> _Plan:
            return _Plan(
                subject_id=window.maintenance_id,
                planned=plan_maintenance_notices(eos=await registered_eos(session, {})),
                render=lambda notice: maintenance_notice(event_type=event.type, window=window,
                                                         language=notice.language),
                concerned=[], escalate_after_s=None,
            )

        await self._fan_out(event, prepare)

    async def on_advisory(
        self, event: CloudEvent[AdvisoryData] | None, _record: ConsumerRecord[bytes, bytes]
    ) -> None:
        """Plan the Servicedesk's notice of an advisory, and remember whether NTP is down."""
        assert event is not None
        advisory = event.data

        async def prepare(session: AsyncSession) -> _Plan:
            stored = await session.get(AdvisoryRow, advisory.advisory_id)
            if stored is None or stored.event_time <= event.time:
                await session.merge(AdvisoryRow(advisory_id=advisory.advisory_id, kind=advisory.kind,
                                                active=advisory.active, event_time=event.time))
            return _Plan(
                subject_id=advisory.advisory_id, planned=plan_advisory_notices(servicedesk=self.servicedesk),
                render=lambda notice: self._texts.advisory_notice(event_type=event.type, advisory=advisory,
                                                                  language=notice.language),
                concerned=[], escalate_after_s=None,
            )

        await self._fan_out(event, prepare)

    async def _fan_out(self, event: CloudEvent[Any], prepare: Callable[[AsyncSession], Awaitable[_Plan]]) -> None:
        """Record the plan that ``prepare`` makes, in one transaction with the reads it is made from: every EO
        it concerns (the reach rows), its deliveries and, last, the planned-event row. A redelivered event
        (its row exists) plans nothing."""
        now = self._clock()
        async with self._sessions.begin() as session:
            if await session.get(PlannedEventRow, event.id) is not None:
                return
            plan = await prepare(session)
            count = await record_notices(
                session, event=event, subject_id=plan.subject_id, planned=plan.planned, render=plan.render,
                concerned=plan.concerned, now=now, escalate_after_s=plan.escalate_after_s,
            )
            digest_at = (
                escalation_times(planned_at=now, escalate_after_s=self._settings.escalate_after_s)[1]
                if plan.digest else None
            )
            # Inserted where missing: a second notifier planning the same event at once (after a lost lease)
            # finds it and leaves it.
            await upsert(session, _PLANNED_EVENTS, [{
                "event_id": event.id, "event_type": event.type, "subject_id": plan.subject_id, "planned_at": now,
                "deliveries": count, "settled_at": None if count else now, "digest_at": digest_at,
            }], key=("event_id",), update=False)
            # SQLite: a large plan's commit does not copy the write-ahead log into the database file (1-1.6 s for
            # 100,000 deliveries) before the dispatcher is woken; that copy follows at once, beside the sending.
            deferred = count >= DEFER_CHECKPOINT_AFTER and await defer_checkpoint(session)
        if plan.planned:
            self._on_planned()
        if deferred:
            await checkpoint(self._sessions)
        self._planned(event, plan.planned, plan.subject_id)
        if count >= ANALYZE_AFTER:
            await self._refresh_statistics(_DELIVERIES, _REACH)

    async def _refresh_statistics(self, *tables: Table) -> None:
        """``ANALYZE`` ``tables`` on PostgreSQL: the delivery log and the reach rows after a large plan, the
        registry as it grows (:meth:`on_eo_batch`).

        Until autovacuum gets to it, PostgreSQL plans with the statistics of the tables before the plan: a
        national fan-out's 100,000 reach rows unknown to it, it recorded each batch of outcomes' reach
        through the index of unreached EOs (procedure, reached_at IS NULL) instead of the primary key, and so
        walked every unreached EO of the procedure per row: 9.5 s of the 100,000 outcomes' 17.6 s
        (``bench/dispatch_bench.py``). It samples the tables (a fraction of a second) after the dispatcher was
        woken; a failure (the tables' maintenance lock not free within a second, say) only leaves the
        statistics as they were.

        The registry: asyncpg prepares a statement once per connection and PostgreSQL may then keep one generic
        plan, made from the statistics of that moment; made while the table was empty, the lookup of a batch's
        EOs by key scanned the whole table as a 100,000-EO registry was read into it (on a fresh notifier:
        5.3 s of the read's 9 s in process, the registry read 41 s in ``bench/notifier_bench.py``). ANALYZE
        makes PostgreSQL plan those statements again."""
        async with self._sessions() as session:
            if session.get_bind().dialect.name != "postgresql":
                return
            try:
                # Never a wait behind whoever holds the tables' maintenance lock (an autovacuum against
                # wraparound, another notifier's ANALYZE): the next procedure event waits for this handler.
                await session.execute(text("SET LOCAL lock_timeout = '1s'"))
                await session.execute(text("SET LOCAL statement_timeout = '60s'"))
                await session.execute(text(f"ANALYZE {', '.join(table.name for table in tables)}"))
                await session.commit()
            except Exception as exc:  # what was written is committed: statistics are an optimisation
                log.warning("could not refresh the statistics of %s: %s", ", ".join(t.name for t in tables), exc)

    def _planned(self, event: CloudEvent[Any], planned: list[PlannedNotice], subject_id: str) -> None:
        """Count and log a plan (after the dispatcher was woken: counting a national fan-out's notices takes a
        tenth of a second)."""
        counts = Counter((n.audience, n.channel) for n in planned)
        for (audience, channel), count in counts.items():
            self._metrics.planned.labels(audience=audience.value, channel=channel.value).inc(count)
        log.info("planned %d deliveries of %s for %s", len(planned), event.type, subject_id)

    def _count_unreachable(
        self, event_type: str, procedure: ProcedureData, contacts: list[EoContact], reached: set[str | None]
    ) -> None:
        """``reached``: the EORIs the plan has a notice for."""
        if notice_kind(event_type) == NoticeKind.PROPOSED:
            return
        concerned = (
            contacts if procedure.scope == Scope.NATIONAL else [c for c in contacts if c.eori == procedure.eori]
        )
        unreachable = sum(1 for c in concerned if c.eori not in reached)
        if unreachable:
            log.warning("%d EOs concerned by %s have neither webhook nor e-mail", unreachable, procedure.procedure_id)
            self._metrics.unreachable_eos.inc(unreachable)


@dataclass(frozen=True)
class _Plan:
    """What a fan-out records (made by its ``prepare``, in the transaction that records it)."""

    subject_id: str
    planned: list[PlannedNotice]
    render: Callable[[PlannedNotice], Notice]
    concerned: Sequence[EoContact]
    escalate_after_s: float | None
    digest: bool = False
    """Whether the Servicedesk gets a digest of the unreached (``planned_events.digest_at``)."""


async def record_notices(
    session: AsyncSession,
    *,
    event: CloudEvent[Any],
    subject_id: str,
    planned: Sequence[PlannedNotice],
    render: Callable[[PlannedNotice], Notice],
    concerned: Sequence[EoContact],
    now: datetime,
    escalate_after_s: float | None,
) -> int:
    """Record planned notices of ``event``: their rendered texts (once per variant), one delivery each, and
    the ``concerned`` EOs of the procedure; returns the number of deliveries planned.

    Idempotent: a notice already rendered for this event is reused, and a delivery or a concerned EO already
    recorded is left as it is, so that planning an EO registered late twice sends it nothing twice. EO
    webhook notices are watched for escalation ``escalate_after_s`` later (None: never).
    """
    notice_ids = {
        (row.audience, row.language, row.variant): row.id
        for row in (await session.execute(
            select(NoticeRow.id, NoticeRow.audience, NoticeRow.language, NoticeRow.variant)
            .where(NoticeRow.event_id == event.id)
        )).all()
    }
    # One tuple per variant, not one per notice: a national fan-out's 100,000 notices have a handful of variants,
    # and their own tuples were 7 MiB of the plan's Python objects (tracemalloc's peak 58 -> 52 MB).
    one = cast(dict[tuple[Audience, Language, str], tuple[Audience, Language, str]], {}).setdefault
    variants = [one(v, v) for v in ((n.audience, n.language, n.own_procedure_id or "") for n in planned)]
    for variant, notice in dict(zip(variants, planned, strict=True)).items():
        if variant in notice_ids:
            continue
        text = render(notice)
        body = _webhook_body(event, notice.language, text) if notice.audience == Audience.EO else None
        row = NoticeRow(event_id=event.id, audience=variant[0], language=variant[1], variant=variant[2],
                        subject=text.subject, message=text.message, webhook_body=body)
        session.add(row)
        await session.flush()
        notice_ids[variant] = row.id
    if planned:
        watched = watched_for_escalation(planned) if escalate_after_s is not None else set()
        escalate_at = (
            escalation_times(planned_at=now, escalate_after_s=escalate_after_s)[0] if escalate_after_s is not None
            else None
        )
        lanes: dict[tuple[DeliveryChannel, str], str] = {}

        def lane(channel: DeliveryChannel, address: str) -> str:
            # The lane depends on the scheme and authority alone: worked out once per host, not per EO's URL.
            route = (channel, url_origin(address) or address)
            found = lanes.get(route)
            if found is None:
                found = lanes[route] = lane_of(channel, route[1])
            return found

        webhook = DeliveryChannel.WEBHOOK

        def columns(start: int) -> dict[str, Sequence[Any]]:
            # Column by column, with the columns every row shares given once (the constants below).
            part, part_variants = planned[start:start + PLAN_PART], variants[start:start + PLAN_PART]
            return {
                "id": new_delivery_ids(len(part)),
                "notice_id": [notice_ids[variant] for variant in part_variants],
                "audience": [n.audience for n in part],
                "recipient_key": [n.recipient_key for n in part],
                "eori": [n.eori for n in part],
                "channel": [n.channel for n in part],
                "recipient": [n.address for n in part],
                "lane": [lane(n.channel, n.address) for n in part],
                "idempotency_key": [idempotency_key(event.id, n.recipient_key, n.channel) for n in part],
                "escalate_at": [escalate_at if n.channel == webhook and n.eori in watched else None for n in part],
            }

        # A national fan-out writes 100,000 rows: each part is built while the database writes the one before.
        # A delivery already planned for this event, recipient and channel is left as it is.
        await insert_column_parts(session, _DELIVERIES, map(columns, range(0, len(planned), PLAN_PART)), constants={
            "event_id": event.id, "event_type": event.type, "procedure_id": subject_id,
            "created_at": now, "next_attempt_at": now, "updated_at": now, "status": DeliveryStatus.PENDING,
            "attempts": 0,
        }, skip_conflicts_on=("event_id", "recipient_key", "channel"))
    await record_reach(session, subject_id=subject_id, concerned=concerned, now=now)
    return len(planned)


async def record_reach(
    session: AsyncSession, *, subject_id: str, concerned: Sequence[EoContact], now: datetime
) -> None:
    """Record the EOs a procedure concerns (``procedure_reach``), each with the channel it is tried on first
    (None and the error ``no address`` when it has none); one already recorded is left as it is."""
    await insert_columns(session, _REACH, columns={
        "eori": [eo.eori for eo in concerned],
        "last_channel": [_first_channel(eo) for eo in concerned],
        "last_error": [None if eo.webhook_url or eo.email else NO_ADDRESS for eo in concerned],
    }, constants={"procedure_id": subject_id, "concerned_at": now}, skip_conflicts_on=("procedure_id", "eori"))


async def registered_eos(session: AsyncSession, own: Mapping[str, str]) -> list[EoContact]:
    """Every EO of the registry as the domain plans for it (by EORI), with its open scenario-1 procedure (``own``).

    Read as plain values at the driver and the language looked up per row: 100,000 rows of a national fan-out
    through SQLAlchemy's result processing took longer than the query."""
    connection = await session.connection()
    rows = await connection.exec_driver_sql("SELECT eori, language, webhook_url, email FROM eos ORDER BY eori")
    language, found = _LANGUAGES, cast(list[tuple[str, str, str | None, str | None]], rows.all())
    if not own:
        return [EoContact(eori, language[code], url, email) for eori, code, url, email in found]
    return [EoContact(eori, language[code], url, email, own.get(eori)) for eori, code, url, email in found]


async def _name_of(session: AsyncSession, eori: str | None) -> str | None:
    return None if eori is None else await session.scalar(select(EoRow.name).where(EoRow.eori == eori))


def contacts_of(eos: Sequence[Any], own: Mapping[str, str]) -> list[EoContact]:
    """EO registry rows (eori, language, webhook_url, email) as the domain plans for them."""
    # Positional: keywords double a named tuple's construction.
    return [EoContact(r.eori, r.language, r.webhook_url, r.email, own.get(r.eori)) for r in eos]


def new_delivery_id(*, at_ms: int | None = None) -> str:
    """A delivery's id: a UUID laid out as version 7 (milliseconds since the epoch, then random bits).

    The deliveries of one fan-out are inserted together and their ids sort together, so the primary key's
    index grows at its end instead of at 100,000 random places (measured with SQLite: a third of the time
    to insert a national fan-out's rows). Unique as UUIDv4 is, by its 74 random bits within a millisecond.
    ``at_ms``: the milliseconds to lead with (default: now).
    """
    return new_delivery_ids(1, at_ms=at_ms)[0]


def new_delivery_ids(count: int, *, at_ms: int | None = None) -> list[str]:
    """``count`` delivery ids (see :func:`new_delivery_id`) of one millisecond, their random bits drawn at once
    (one system call, not one per id) and written as UUID text without building the integers."""
    if at_ms is None:
        at_ms = time.time_ns() // 1_000_000
    stamp = f"{at_ms & 0xFFFF_FFFF_FFFF:012x}"
    head = f"{stamp[:8]}-{stamp[8:]}-7"  # the version nibble
    digits = secrets.token_hex(9 * count)  # 72 random bits each ...
    marks = secrets.token_bytes(count)  # ... and 2 more beside the RFC 4122 variant bits (10xx: 8, 9, a, b)
    return [
        f"{head}{digits[at:at + 3]}-{_VARIANT_DIGITS[mark & 3]}{digits[at + 3:at + 6]}-{digits[at + 6:at + 18]}"
        for at, mark in zip(range(0, 18 * count, 18), marks, strict=True)
    ]


def _first_channel(eo: EoContact) -> DeliveryChannel | None:
    if eo.webhook_url:
        return DeliveryChannel.WEBHOOK
    return DeliveryChannel.EMAIL if eo.email else None


async def _readdress(
    session: AsyncSession, *, eori: str, channel: DeliveryChannel, address: str, now: datetime
) -> int:
    """Send an EO's unsettled deliveries on ``channel`` to its new ``address``, due now; returns how many.

    A delivery in flight keeps its lease: the dispatcher sees the address changed when it records the outcome
    and makes it due at once then.
    """
    moved = await session.execute(
        update(DeliveryRow)
        .where(DeliveryRow.eori == eori, DeliveryRow.audience == Audience.EO,
               DeliveryRow.channel == channel, DeliveryRow.status.in_(_DUE), DeliveryRow.recipient != address)
        .values(recipient=address, lane=lane_of(channel, address), next_attempt_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(moved, "rowcount", 0) or 0)


def _webhook_body(event: CloudEvent[Any], language: Language, notice: Notice) -> bytes:
    """The contract's webhook body: the CloudEvent, its ``data`` extended with the rendered notice."""
    body = event.model_dump(mode="json")
    body["data"] = {**body["data"], "language": language.value, "subject": notice.subject, "message": notice.message}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


async def situation_of(session: AsyncSession, *, excluding: str) -> Situation:
    """What the notifier knows of the channels besides procedure ``excluding`` (see :class:`Situation`)."""
    national = (await session.execute(
        select(KnownProcedureRow.procedure_id, KnownProcedureRow.scenario)
        .where(KnownProcedureRow.scope == Scope.NATIONAL, KnownProcedureRow.state == ProcedureState.OPEN,
               KnownProcedureRow.procedure_id != excluding)
        .order_by(KnownProcedureRow.event_time.desc()).limit(1)
    )).first()
    ntp_advisory = (await session.scalar(
        select(AdvisoryRow.advisory_id)
        .where(AdvisoryRow.kind == AdvisoryKind.NTP_UNAVAILABLE, AdvisoryRow.active.is_(True)).limit(1)
    )) is not None
    return Situation(
        national_procedure_id=national.procedure_id if national else None,
        national_scenario=national.scenario if national else None,
        ntp_advisory=ntp_advisory,
    )


async def own_procedures(session: AsyncSession, *, excluding: str) -> dict[str, str]:
    """The open scenario-1 procedure of each EO that has one (besides ``excluding``), by EORI."""
    rows = (await session.execute(
        select(KnownProcedureRow.eori, KnownProcedureRow.procedure_id)
        .where(KnownProcedureRow.scope == Scope.EO, KnownProcedureRow.state == ProcedureState.OPEN,
               KnownProcedureRow.procedure_id != excluding)
    )).all()
    return {row.eori: row.procedure_id for row in rows if row.eori}


async def _remember_procedure(session: AsyncSession, event: CloudEvent[ProcedureData]) -> None:
    procedure = event.data
    stored = await session.get(KnownProcedureRow, procedure.procedure_id)
    if stored is not None and stored.event_time > event.time:
        return  # an older event arriving late does not undo a newer state
    await session.merge(KnownProcedureRow(
        procedure_id=procedure.procedure_id, scope=procedure.scope, eori=procedure.eori,
        scenario=procedure.scenario, state=procedure.state, event_time=event.time,
        opened_at=procedure.opened_at, event=event.model_dump_json(),
    ))

