"""The dispatcher: claims due deliveries from the log, runs them in per-host lanes, records the outcomes.

Isolation: every webhook host (``host:port``) and the SMTP server has a lane of its own with at most
``per_host_concurrency`` (SMTP: ``smtp.connections``) deliveries in flight, under a global bound of
``concurrency``. A lane holds a bounded buffer of claimed deliveries, refilled once half empty, and the claim
query skips the lanes more than half full: a hanging host fills its own lane and delays no other.

Durability: a claim is a lease written to the row (``claimed_by``, ``claimed_until``), so notifiers that
share a database never send the same delivery twice; a restarted notifier takes back its own leases at
once. The holder renews its leases every third of ``notifier.claim_lease_s``, so the deliveries of a
notifier that dies (and does not come back) are claimed by the others once that lease has run out.
Outcomes are written in batches, one transaction for many deliveries (with their attempt rows and
retry times), then published on the deliveries topic. A crash between a send and the batch that records
it means that delivery is sent again after the restart, with the same Idempotency-Key: at least once.

Reach: the same transaction records which EO a procedure's notice reached (first time and channel) or the
latest error of the one still unreached, ends the escalation watch of a delivered webhook notice, and makes
a failed delivery whose address changed in the registry meanwhile due again at once, at the new address.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, cast

from pydantic_core import from_json, to_json
from sqlalchemy import Dialect, Table, func, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.types import NullType

from services.notifier.domain import Audience, delivery_retry_policy, next_attempt_at
from services.notifier.jobs import Job, Outcome, Sender
from services.notifier.metrics import NotifierMetrics
from services.notifier.models import (
    DUE_STATUSES,
    AttemptRow,
    DeliveryRow,
    EoRow,
    NoticeRow,
    PlannedEventRow,
    ReachRow,
    still_due,
)
from shared.config import Settings
from shared.db import as_utc, insert_plain, one_of, update_plain
from shared.events import DeliveryChannel, DeliveryStatus, EventType, Language
from shared.kafka import Publisher
from shared.retry import Backoff, RetryPolicy, retrying

log = logging.getLogger(__name__)

__all__ = ["SOURCE", "Dispatcher", "Recorded", "delivery_event_bytes"]

SOURCE = "/luccs-fallback/notifier"
FEED_MAX_LAG_S = 10.0
FEED_BATCH = 5000
FEED_CHUNK = 500
OUTCOME_GATHER_S = 0.05
OUTCOME_BATCH = 4000
LANE_BUFFER = 1000
LANE_BUFFER_MAX = 8000
LANE_BUFFER_S = 2.0
"""A lane buffers about this many seconds of its host's own pace, between LANE_BUFFER (or 8 x its limit) and
LANE_BUFFER_MAX deliveries: see :meth:`_Lane.pace`."""
LANE_PACE_MIN_S = 0.2
"""The shortest moment a lane that ran empty is paced over: see :meth:`_Lane.ended`."""
LANE_MEMORY_S = 5.0
"""How long the buffer a lane that ran empty had is kept for its host's next lane: the refills of one fan-out,
not the next fan-out (whose first claims stay at the floor, shared with the other notifiers)."""
RENEW_CHUNK = 500
GAUGE_BACKOFF = 20.0
OUTSIDE_FULL_BACKOFF = 10.0
OUTSIDE_FULL_MAX_POLLS = 5.0
_DUE = DUE_STATUSES
_RECORD_FOREVER = RetryPolicy(Backoff(first_s=1.0, factor=1.0))
"""Outcomes already sent are recorded whatever it takes: every second until the database takes them."""
_EVENT_TYPES = {member.value: member for member in EventType}
_AUDIENCES = {member.value: member for member in Audience}
_CHANNELS = {member.value: member for member in DeliveryChannel}


def _raw(column: Any) -> Any:
    """``column`` as the driver gives it, without SQLAlchemy's conversion per row (a claim reads thousands of
    rows: the enums' and the timestamp's conversions were a third of its time on the loop); the claim converts
    what it keeps (a name through a dict, a time once per distinct value: :func:`shared.db.as_utc`)."""
    return type_coerce(column, NullType()).label(column.name)


_ATTEMPTS = cast(Table, AttemptRow.__table__)
_D = cast(Table, DeliveryRow.__table__)
_R = cast(Table, ReachRow.__table__)
# The statements of a batch of outcomes, run at the driver on plain values (shared.db.update_plain and
# insert_plain): at thousands of outcomes a second, SQLAlchemy's per-row parameter processing cost more than
# the database. Per delivery: its row (a delivered one leaves the escalation watch in the same statement),
# its attempt, its EO's reach.
_OUTCOME_COLUMNS = ("status", "attempts", "next_attempt_at", "last_error", "last_http_status", "delivered_at",
                    "updated_at", "claimed_by", "claimed_until")
_ATTEMPT_COLUMNS = ("delivery_id", "attempt", "at", "outcome", "http_status", "error", "duration_ms")
_REACHED_COLUMNS = ("reached_at", "reached_channel", "last_channel", "last_error")
_UNREACHED_COLUMNS = ("last_channel", "last_error")
_REACH_KEY = ("procedure_id", "eori")


class Recorded(NamedTuple):
    """An outcome recorded in the log, as the deliveries feed reports it: its CloudEvent is built when it is
    published, off the path between the sends and the batch that records them.

    Only what the event says, not the attempt's :class:`Job`: the feed holds a fan-out's outcomes while its
    lanes are busy, up to ``FEED_MAX_LAG_S`` after they were recorded. Held with their jobs (lane, idempotency
    key, secret, ...) and outcomes, 100,000 of them grew the notifier by about 70 MiB while it sent, to a peak
    of 224-239 MiB; now its peak is the plan's, 191-195 MiB (``bench/README.md``, "Fifteenth round")."""

    delivery_id: str
    event_id: str
    procedure_id: str
    eori: str | None
    channel: DeliveryChannel
    recipient: str
    attempt: int
    status: DeliveryStatus
    http_status: int | None
    error: str | None
    at: datetime

    @classmethod
    def of(cls, job: Job, status: DeliveryStatus, outcome: Outcome, at: datetime) -> Recorded:
        return cls(job.delivery_id, job.event_id, job.procedure_id, job.eori, job.channel, job.address, job.attempt,
                   status, outcome.http_status, outcome.error, at)


def due_in_order(status: str, now: datetime, columns: Any, *, limit: int) -> Any:
    """The first ``limit`` unclaimed deliveries in ``status`` due by ``now``, in due order (``columns`` of each)."""
    # One status at a time: the index (status, next_attempt_at), partial on the due rows (``still_due``: its
    # predicate, written into the SQL), then yields the rows in due order and the LIMIT stops the scan. With
    # ``status IN (...)`` alone both SQLite and PostgreSQL sort every due row first, which made each claim cost
    # as much as the whole backlog (100,000 rows for a national fan-out).
    return (
        select(*columns)
        .where(_D.c.status == status, still_due(_D.c.status), _D.c.next_attempt_at <= now,
               (_D.c.claimed_until.is_(None)) | (_D.c.claimed_until < now))
        .order_by(_D.c.next_attempt_at)
        .limit(limit)
    )


def still_due_of(event_id: str) -> Any:
    """Any one delivery of ``event_id`` still due (none: the event's fan-out is settled)."""
    return select(_D.c.id).where(_D.c.event_id == event_id, still_due(_D.c.status)).limit(1)


@dataclass
class _Lane:
    name: str
    limit: int
    floor: int
    buffer: int
    queue: deque[Job] = field(default_factory=deque)
    workers: int = 0
    done: int = 0
    paced_at: float = field(default_factory=time.monotonic)

    @property
    def load(self) -> int:
        return len(self.queue) + self.workers

    @property
    def topped_up(self) -> bool:
        """More than half its buffer still waits: no claim for this lane until it is half empty (its worker then
        wakes the dispatcher). Topping a busy lane up as it drained made a claim of a few hundred rows every
        few tens of milliseconds (14 a second in a 100,000-webhook fan-out on PostgreSQL, each with its walk of
        the due index), where one claim per half buffer does."""
        return len(self.queue) > self.buffer // 2

    def pace(self, now: float) -> None:
        """Size the buffer to about LANE_BUFFER_S of the deliveries this lane did per second since the last
        time (once a second at most), between its floor and LANE_BUFFER_MAX.

        A host taking a national fan-out at thousands a second is then fed in claims of thousands (one claim
        and one batch of outcomes per few thousand deliveries: on SQLite they take turns with the one writer,
        and claims of a few hundred left the lane empty between them); a host that hangs holds few claims."""
        elapsed = now - self.paced_at
        if elapsed < 1.0:
            return
        self.buffer = max(self.floor, min(LANE_BUFFER_MAX, int(self.done / elapsed * LANE_BUFFER_S)))
        self.done, self.paced_at = 0, now

    def ended(self, now: float) -> None:
        """The lane ran empty (its host's next deliveries make a new lane, sized by what this one learned).

        A lane often runs empty within its first second: fed 1,000 deliveries, a host taking thousands a second
        finishes them before the refill's claim, queued behind a batch of outcomes on SQLite's one writer, comes
        back. Paced only after a second, such a lane never grew past its floor, and neither did the next one: a
        national fan-out went out in claims of 1,000 with the lane empty between them (100,000 webhooks: the
        lane's buffer stayed at 1,000 throughout). What it did in that moment counts (over LANE_PACE_MIN_S at
        least: a few deliveries in a few milliseconds say little), to grow the buffer only: a lane that simply
        ran out of work did its last moment's deliveries slowly for want of them, not of the host's pace.
        ``done`` counts the deliveries that reached the host: a host refusing them fast is no fast host."""
        elapsed = max(now - self.paced_at, LANE_PACE_MIN_S)
        self.buffer = max(self.buffer, min(LANE_BUFFER_MAX, int(self.done / elapsed * LANE_BUFFER_S)))


@dataclass(frozen=True)
class _Notice:
    language: Language
    subject: str
    message: str
    webhook_body: bytes | None


class Dispatcher:
    """Delivers what the planner recorded, until cancelled; :meth:`wake` makes it look for work at once."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        senders: Mapping[DeliveryChannel, Sender],
        metrics: NotifierMetrics,
        publisher: Publisher | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        poll_s: float = 1.0,
        claim_batch: int = 4000,
        rng: random.Random | None = None,
    ) -> None:
        cfg = settings.notifier
        self._settings = settings
        self._sessions = sessions
        self._senders = senders
        self._metrics = metrics
        self._publisher = publisher
        self._clock = clock
        self._poll_s = poll_s
        self._claim_batch = claim_batch
        self._me = cfg.instance_id
        self._lease = timedelta(seconds=cfg.claim_lease_s)
        self._policy = delivery_retry_policy(max_attempts=cfg.max_attempts, max_age_s=cfg.max_age_s,
                                             base_s=cfg.backoff_base_s, max_delay_s=cfg.backoff_max_s)
        self._rng = rng
        self._slots = asyncio.Semaphore(cfg.concurrency)
        self._concurrency = cfg.concurrency
        self._tasks = 0  # lane workers alive, every lane: each holds a slot or waits for one
        self._sqlite_writer: asyncio.Lock | None = None  # set by run() on SQLite: see _writing
        self._wake = asyncio.Event()
        self._lanes: dict[str, _Lane] = {}
        self._idle = asyncio.Event()  # set while no lane has work (what the deliveries feed waits for)
        self._idle.set()
        self._buffers: dict[str, tuple[int, float]] = {}  # a drained lane's buffer, and when: LANE_MEMORY_S
        self._held: set[str] = set()
        self._notices: dict[int, _Notice] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._outcomes: asyncio.Queue[tuple[Job, Outcome, float]] = asyncio.Queue()
        self._published: asyncio.Queue[tuple[float, list[Recorded]]] = asyncio.Queue()  # batches, with loop.time()
        self._gauges_due = 0.0
        self._outside_full_after = 0.0
        self._wakes = 0
        self._histograms: dict[str, Any] = {}
        self.running = False

    def _writing(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Held around this process's write transactions on SQLite (claims, outcomes, lease renewals).

        SQLite has one writer at a time; a second one waits in SQLite's busy handler, which sleeps and polls
        (1, 2, 5, 10, ... 100 ms), so a claim arriving while a batch of outcomes was written slept up to
        100 ms past its end, and the lane it was to refill with it. Queued here, it starts as the other
        commits. PostgreSQL locks rows, not the database: nothing to queue for there."""
        return self._sqlite_writer if self._sqlite_writer is not None else contextlib.nullcontext()

    def wake(self) -> None:
        """New rows are planned (or due at once): claim now, outside the full lanes too."""
        self._outside_full_after = 0.0
        self._wakes += 1  # a claim walking meanwhile may not have seen them: see _claim
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Deliveries claimed by this process and not recorded yet."""
        return len(self._held)

    async def run(self) -> None:
        """Claim and deliver until cancelled; on the way out, record the outcomes already known."""
        await self._release_own_claims()
        writer = asyncio.create_task(self._write_outcomes(), name="notifier-outcomes")
        feed = asyncio.create_task(self._publish_outcomes(), name="notifier-outcome-feed")
        renewer = asyncio.create_task(self._renew_claims(), name="notifier-claim-renewal")
        self.running = True
        try:
            while True:
                try:
                    blocked = await self._claim()
                    await self._refresh_gauges()
                    # Every due row left is in a lane with a full buffer: nothing to claim until one of them is
                    # half empty (its worker wakes this loop) or new rows are planned (so does the planner).
                    # Asking the database again at once would scan that whole backlog for nothing, in a loop.
                    sleep_s = self._poll_s if blocked else await self._until_next_due()
                except Exception:
                    log.exception("dispatching deliveries failed; trying again")
                    sleep_s = self._poll_s
                # asyncio.timeout, not wait_for: Python 3.11's wait_for may swallow a cancellation that
                # arrives as it times out, and the loop would then never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(sleep_s):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            self.running = False
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            await self._shut_down(writer, feed)

    async def _shut_down(self, writer: asyncio.Task[None], feed: asyncio.Task[None]) -> None:
        grace = min(self._settings.notifier.webhook_timeout_s, 5.0)
        if self._workers:
            _, late = await asyncio.wait(set(self._workers), timeout=grace)
            for task in late:  # their rows keep this instance's lease: taken back at the next start
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        with contextlib.suppress(TimeoutError):  # what was sent is recorded, unless the database is gone
            await asyncio.wait_for(self._outcomes.join(), timeout=30)
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._published.join(), timeout=grace)
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)

    # --- claiming ---------------------------------------------------------------------------------------

    async def _release_own_claims(self) -> None:
        async with self._sessions.begin() as session:
            if session.get_bind().dialect.name == "sqlite":
                self._sqlite_writer = asyncio.Lock()
            released = await session.execute(
                update(DeliveryRow).where(DeliveryRow.claimed_by == self._me, still_due(DeliveryRow.status))
                .values(claimed_by=None, claimed_until=None)
                .execution_options(synchronize_session=False)
            )
        count = getattr(released, "rowcount", 0)
        if count:
            log.info("took back %d deliveries this notifier had claimed before it stopped", count)

    async def _renew_claims(self) -> None:
        """Keep this process's leases alive while it holds deliveries; a dead notifier stops renewing, and its
        deliveries are claimed by the others once ``claim_lease_s`` has passed."""
        every_s = self._lease.total_seconds() / 3
        while True:
            await asyncio.sleep(every_s)
            if not self._held:
                continue
            try:
                # By the ids held (the primary key), in chunks: ``claimed_by`` has no index, and a scan of the
                # whole delivery log (every third of the lease, holding SQLite's write lock while the outcomes
                # wait) grew with the log. A row held here and recorded meanwhile is no longer due: left alone.
                held = list(self._held)
                async with self._writing(), self._sessions.begin() as session:
                    dialect = session.get_bind().dialect
                    until = self._clock() + self._lease  # after the wait for the writer: the whole lease
                    for start in range(0, len(held), RENEW_CHUNK):
                        await session.execute(renewal(held[start:start + RENEW_CHUNK], self._me, until, dialect))
            except Exception:
                log.exception("renewing this notifier's delivery claims failed; trying again")

    def _lane_for(self, name: str, channel: DeliveryChannel) -> _Lane:
        lane = self._lanes.get(name)
        if lane is None:
            limit = (
                self._settings.smtp.connections if channel == DeliveryChannel.EMAIL
                else self._settings.notifier.per_host_concurrency
            )
            # LANE_BUFFER at least: one host taking a whole fan-out is fed in claims of hundreds of deliveries,
            # and a second notifier sharing the database still finds work to take on (and over). A lane that
            # drained a moment ago starts at the size its pace had given it.
            floor = max(8 * limit, LANE_BUFFER)
            learned, ended_at = self._buffers.pop(name, (floor, 0.0))
            if time.monotonic() - ended_at > LANE_MEMORY_S:
                learned = floor
            lane = self._lanes[name] = _Lane(name=name, limit=limit, floor=floor, buffer=max(floor, learned))
            self._idle.clear()
        return lane

    def _staff(self, lane: _Lane, channel: DeliveryChannel) -> None:
        """Workers for ``lane``'s queue: up to its limit, and up to its sender's ``ahead`` more while the lanes'
        workers together hold at most half the global slots.

        A worker handed out ahead holds a slot while its attempt waits in the sender's queue (behind the host's
        limit), up to two attempts' time: with half the slots at most so held, a lane that comes later always
        finds the other half to share with the lanes' own limits, and the ahead workers give theirs back after
        their attempt (:meth:`_work`) once the lanes' workers are more than half the slots."""
        ahead = getattr(self._senders.get(channel), "ahead", 0)
        while lane.workers < len(lane.queue) and (
            lane.workers < lane.limit
            or (lane.workers < lane.limit + ahead and self._tasks < self._concurrency // 2)
        ):
            lane.workers += 1
            self._tasks += 1
            task = asyncio.create_task(self._work(lane), name=f"lane:{lane.name}")
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def _claim(self) -> bool:
        """Claim due deliveries for every lane with room; return whether the due rows left (if any) are all in
        lanes whose buffers are full."""
        while True:
            now = time.monotonic()
            for lane in self._lanes.values():
                lane.pace(now)
            full = [lane.name for lane in self._lanes.values() if lane.topped_up]
            if full and len(full) == len(self._lanes) and time.monotonic() < self._outside_full_after:
                # Every lane is full, and a claim outside the full lanes found nothing a moment ago: asking again
                # walks every due row of those lanes through the index to find none (the whole backlog of a
                # national fan-out, 100,000 rows, a quarter of a second), once per refill of its lane. A lane
                # with room (one that woke this loop) is served at once as before.
                return True
            walk_started, wakes = time.monotonic(), self._wakes
            try:
                claimed, exhausted = await self._claim_batch_of_jobs(excluding_lanes=full)
                for job in claimed:
                    lane = self._lane_for(job.lane, job.channel)
                    lane.queue.append(job)
                    self._staff(lane, job.channel)
            finally:
                # A lane made for a claim's candidates whose rows then came back elsewhere (readdressed between
                # the claim and its read) or not at all (the read failed) has nothing to run: no worker would
                # ever end it.
                for idle in [lane for lane in self._lanes.values() if not lane.queue and not lane.workers]:
                    self._drop_lane(idle)
            if exhausted:  # no due row outside the full lanes: another claim now would find none
                if full and self._wakes != wakes:
                    continue  # rows planned (or readdressed) while this walk ran may be outside its snapshot
                if full:
                    # Until new rows are planned (wake), look outside the full lanes again after poll_s (the
                    # bound a retry falling due in another lane waited before) or ten times this walk's time,
                    # OUTSIDE_FULL_MAX_POLLS polls at most (a walk slowed by a busy database does not hold back
                    # a retry falling due in an idle lane for longer).
                    self._outside_full_after = time.monotonic() + min(
                        max(self._poll_s, OUTSIDE_FULL_BACKOFF * (time.monotonic() - walk_started)),
                        OUTSIDE_FULL_MAX_POLLS * self._poll_s,
                    )
                return bool(full)
            if len(claimed) < self._claim_batch // 2:
                if any(lane.topped_up for lane in self._lanes.values()):
                    # Due rows were left because their lanes are full now: no need to ask when the next falls
                    # due; the next round serves the lanes with room (or finds every lane full).
                    continue
                return False

    async def _claim_batch_of_jobs(self, *, excluding_lanes: list[str]) -> tuple[list[Job], bool]:
        """The jobs claimed, and whether the due rows outside ``excluding_lanes`` ran out (fewer candidates than
        asked for: the next claim would find only what becomes due or planned meanwhile)."""
        now = self._clock()
        # First the candidates (id, lane, channel and the due time raw), then the full rows of the ones this
        # process takes. As many candidates as the known lanes have room for, and a quarter of a batch more for
        # lanes not seen yet: a claim that refills one busy lane's half-empty buffer neither loads nor (on
        # PostgreSQL) locks four times the rows it can take.
        room: dict[str, int] = {}
        for lane in self._lanes.values():
            room[lane.name] = lane.buffer - lane.load
        wanted = self._claim_batch
        if room:
            wanted = min(wanted, sum(max(0, r) for r in room.values()) + self._claim_batch // 4)
        # Queued behind this process's other SQLite writers, but for a claim outside full lanes: that one walks
        # the backlog (once per poll_s at most) and is better not waited for by the outcomes.
        queue = self._writing() if not excluding_lanes else contextlib.nullcontext()
        async with queue, self._sessions.begin() as session:
            # Oldest due first over both statuses: each status in due order from the index (status,
            # next_attempt_at), the two merged. (A fan-out's retries fall due after its first attempts, a
            # retry of an earlier fan-out before a new one's: neither status may simply go first.)
            # The due time only orders the merge: read as the driver gives it (SQLite's text, asyncpg's datetime),
            # not converted per row (twice a claim's rows, a fifth of the claim's own time on the loop).
            due_at = type_coerce(_D.c.next_attempt_at, NullType())
            per_status: list[Sequence[Any]] = []
            for status in _DUE:
                candidates = due_in_order(
                    status, now, (due_at, _D.c.id, _D.c.lane, _D.c.channel), limit=wanted
                ).with_for_update(skip_locked=True)
                if excluding_lanes:
                    candidates = candidates.where(_D.c.lane.not_in(excluding_lanes))
                per_status.append((await session.execute(candidates)).all())
            merged = list(heapq.merge(*per_status, key=lambda row: row[0]))
            exhausted = len(merged) < wanted
            found = [row[1:] for row in merged[:wanted]]
            picked: list[str] = []
            for delivery_id, lane_name, channel in found:
                if delivery_id in self._held:
                    continue
                if lane_name not in room:
                    lane = self._lane_for(lane_name, DeliveryChannel(channel))
                    room[lane_name] = lane.buffer - lane.load
                if room[lane_name] <= 0:
                    continue  # this lane has enough work buffered; the row stays due for a later claim
                room[lane_name] -= 1
                picked.append(delivery_id)
            if not picked:
                return [], exhausted
            dialect = session.get_bind().dialect
            await session.execute(
                update(_D).where(one_of(_D.c.id, picked, dialect))
                .values(claimed_by=self._me, claimed_until=now + self._lease)
            )
        # The claimed rows read once the claim is committed, out of the writers' queue: what is claimed is this
        # process's until its lease runs out. On SQLite the claim held the one writer about twice as long while
        # it read and converted thousands of rows (the batch of outcomes waiting behind it, and the lane that
        # claim was to refill waiting behind the next batch). Should this read fail, the rows it misses are
        # claimed again (by any notifier, this one too) once their lease has run out, as a dead holder's are.
        async with self._sessions() as session:
            rows = (await session.execute(
                select(
                    _D.c.id, _D.c.event_id, _raw(_D.c.event_type), _D.c.procedure_id, _D.c.eori,
                    _raw(_D.c.audience), _raw(_D.c.channel), _D.c.recipient, _D.c.lane, _D.c.idempotency_key,
                    _D.c.attempts, _raw(_D.c.created_at), _D.c.notice_id, EoRow.webhook_secret,
                )
                .select_from(_D.outerjoin(EoRow, EoRow.eori == _D.c.eori))
                .where(one_of(_D.c.id, picked, dialect))
                .order_by(_D.c.next_attempt_at)
            )).all()
            needed = {row.notice_id for row in rows}
            if len(self._notices) > 10_000 and not needed <= self._notices.keys():
                self._notices.clear()  # before what is missing is worked out: every row's notice is then loaded
            missing = needed - self._notices.keys()
            if missing:
                for stored in (await session.scalars(select(NoticeRow).where(NoticeRow.id.in_(missing)))).all():
                    self._notices[stored.id] = _Notice(Language(stored.language), stored.subject, stored.message,
                                                       stored.webhook_body)
        jobs = []
        times: dict[Any, datetime] = {}  # the rows of a fan-out share their time planned: read once
        # And their event, procedure and lane: one string each for the claim, not a copy per row read.
        one = cast(dict[str, str], {}).setdefault
        for row in rows:
            notice = self._notices[row.notice_id]
            created_at = times.get(row.created_at)
            if created_at is None:
                created_at = times[row.created_at] = as_utc(row.created_at)
            jobs.append(Job(
                delivery_id=row.id, event_id=one(row.event_id, row.event_id), event_type=_EVENT_TYPES[row.event_type],
                procedure_id=one(row.procedure_id, row.procedure_id), eori=row.eori, audience=_AUDIENCES[row.audience],
                channel=_CHANNELS[row.channel], address=row.recipient, lane=one(row.lane, row.lane),
                idempotency_key=row.idempotency_key, attempt=row.attempts + 1, created_at=created_at,
                language=notice.language, subject=notice.subject, message=notice.message,
                webhook_body=notice.webhook_body, webhook_secret=row.webhook_secret,
            ))
        self._held.update(job.delivery_id for job in jobs)  # each now in a lane's queue: sent, then recorded
        return jobs, exhausted

    async def _until_next_due(self) -> float:
        now = self._clock()
        horizon = now + timedelta(seconds=self._poll_s)
        async with self._sessions() as session:
            times: list[datetime | None] = [
                await session.scalar(due_in_order(status, horizon, (_D.c.next_attempt_at,), limit=1)) for status in _DUE
            ]
        soonest = min((t for t in times if t is not None), default=None)
        if soonest is None:
            return self._poll_s
        return min(self._poll_s, max(0.0, (soonest - now).total_seconds()))

    async def _refresh_gauges(self) -> None:
        if time.monotonic() < self._gauges_due:
            return
        started = time.monotonic()
        async with self._sessions() as session:
            depth: dict[str, int] = {
                channel: count for channel, count in (await session.execute(
                    select(DeliveryRow.channel, func.count()).where(still_due(DeliveryRow.status))
                    .group_by(DeliveryRow.channel)
                )).all()
            }
            eos = await session.scalar(select(func.count()).select_from(EoRow))
        for channel in DeliveryChannel:
            self._metrics.queue_depth.labels(channel=channel.value).set(depth.get(channel.value, 0))
        self._metrics.registered_eos.set(eos or 0)
        # Both counts grow with the backlog and the registry (a national fan-out: 100,000 due rows, 100,000 EOs;
        # 80 ms a count on the loaded machine, once a second, on the database the claims and outcomes use):
        # once a second at most, and no more than 1/GAUGE_BACKOFF of the time.
        self._gauges_due = time.monotonic() + max(1.0, GAUGE_BACKOFF * (time.monotonic() - started))

    # --- delivering -------------------------------------------------------------------------------------

    async def _work(self, lane: _Lane) -> None:
        try:
            while lane.queue:
                if lane.workers > lane.limit and self._tasks > self._concurrency // 2:
                    break  # handed out ahead while slots were free; now other lanes' workers need them
                job = lane.queue.popleft()
                sender = self._senders.get(job.channel)
                started = time.perf_counter()
                async with self._slots:
                    try:
                        if sender is None:
                            outcome = Outcome.failed(f"no {job.channel} sender is configured")
                        else:
                            outcome = await sender.send(job)
                    except Exception as exc:
                        log.exception("delivery %s failed unexpectedly", job.delivery_id)
                        outcome = Outcome.failed(f"{type(exc).__name__}: {exc}")
                self._outcomes.put_nowait((job, outcome, time.perf_counter() - started))
                if outcome.ok:
                    lane.done += 1
                if len(lane.queue) == lane.buffer // 2:
                    self._wake.set()  # half empty: time to claim more for this lane
        finally:
            lane.workers -= 1
            self._tasks -= 1
            if lane.workers == 0 and not lane.queue and self._lanes.get(lane.name) is lane:
                lane.ended(time.monotonic())
                self._drop_lane(lane)
                self._wake.set()

    def _drop_lane(self, lane: _Lane) -> None:
        """Delete ``lane`` (no work left in it), keeping a buffer it grew to for its host's next lane (within
        LANE_MEMORY_S: see :meth:`_lane_for`)."""
        del self._lanes[lane.name]
        if not self._lanes:
            self._idle.set()
        if len(self._buffers) > 10_000:
            self._buffers.clear()
        if lane.buffer > lane.floor:
            self._buffers[lane.name] = (lane.buffer, time.monotonic())

    # --- recording --------------------------------------------------------------------------------------

    async def _write_outcomes(self) -> None:
        while True:
            batch = [await self._outcomes.get()]
            # While deliveries are under way more outcomes follow: gather them for a moment and record them
            # together (a transaction per delivery or per handful would cost more than the sending).
            if self._lanes and self._outcomes.qsize() < OUTCOME_BATCH - 1:
                await asyncio.sleep(OUTCOME_GATHER_S)
            while not self._outcomes.empty() and len(batch) < OUTCOME_BATCH:
                batch.append(self._outcomes.get_nowait())
            await self._record_whatever_it_takes(batch)
            for _ in batch:
                self._outcomes.task_done()

    async def _record_whatever_it_takes(self, batch: list[tuple[Job, Outcome, float]]) -> None:
        def failed(_attempt: int, _exc: Exception, _delay_s: float | None) -> None:
            log.exception("recording %d delivery outcomes failed; trying again", len(batch))

        await retrying(lambda: self._record(batch), policy=_RECORD_FOREVER, on_failure=failed)

    async def _record(self, batch: list[tuple[Job, Outcome, float]]) -> None:
        now = self._clock()
        delivered: list[tuple[Any, ...]] = []
        failed: list[tuple[Any, ...]] = []
        attempts: list[tuple[Any, ...]] = []
        feed: list[Recorded] = []
        retrying = False
        for job, outcome, duration_s in batch:
            retry_at = None
            if outcome.ok:
                status = DeliveryStatus.DELIVERED
            else:
                if not outcome.permanent:
                    retry_at = next_attempt_at(policy=self._policy, attempt=job.attempt, planned_at=job.created_at,
                                               now=now, rng=self._rng)
                status = DeliveryStatus.RETRYING if retry_at else DeliveryStatus.DEAD
                retrying = retrying or retry_at is not None
            (delivered if outcome.ok else failed).append((
                status, job.attempt, retry_at, outcome.error, outcome.http_status, now if outcome.ok else None, now,
                None, None, job.delivery_id,
            ))
            attempts.append((job.delivery_id, job.attempt, now, status, outcome.http_status, outcome.error,
                             round(duration_s * 1000, 3)))
            feed.append(Recorded.of(job, status, outcome, now))
            if status == DeliveryStatus.DEAD:
                log.warning("delivery %s (%s to %s) is dead after %d attempts: %s", job.delivery_id, job.channel,
                            job.eori or job.audience, job.attempt, outcome.error)
        async with self._writing(), self._sessions.begin() as session:
            await update_plain(session, _D, set_columns=_OUTCOME_COLUMNS, keys=("id",), rows=delivered,
                               also_set="escalate_at = NULL")
            await update_plain(session, _D, set_columns=_OUTCOME_COLUMNS, keys=("id",), rows=failed)
            await insert_plain(session, _ATTEMPTS, columns=_ATTEMPT_COLUMNS, rows=attempts)
            readdressed = await self._record_reach(session, batch, now)
            await self._settle(session, {job.event_id for job, _, _ in batch}, now)
        counted: Counter[tuple[str, str]] = Counter()
        for (job, _, duration_s), recorded in zip(batch, feed, strict=True):
            self._held.discard(job.delivery_id)
            counted[(job.channel.value, recorded.status.value)] += 1
            self._attempt_seconds(job.channel.value).observe(duration_s)
        self._published.put_nowait((asyncio.get_running_loop().time(), feed))
        for (channel, ended), count in counted.items():
            self._metrics.outcomes.labels(channel=channel, outcome=ended).inc(count)
        if readdressed:
            self.wake()  # due again at once, maybe in a lane that is full now
        elif retrying:
            self._wake.set()

    def _attempt_seconds(self, channel: str) -> Any:
        histogram = self._histograms.get(channel)
        if histogram is None:
            histogram = self._histograms[channel] = self._metrics.attempt_seconds.labels(channel=channel)
        return histogram

    async def _record_reach(
        self, session: AsyncSession, batch: list[tuple[Job, Outcome, float]], now: datetime
    ) -> int:
        """Who was reached (or the latest error of who was not), the address changes seen in flight; returns
        how many of those there were (due again at once)."""
        # One row per EO and procedure (an EO told by webhook and e-mail may have both in one batch): the first
        # channel that reached it, the latest failure, as one statement per row in batch order would leave them.
        reached: dict[tuple[str, str], tuple[Any, ...]] = {}
        unreached: dict[tuple[str, str], tuple[Any, ...]] = {}
        failed: dict[str, str] = {}
        for job, outcome, _ in batch:
            if not outcome.ok:
                failed[job.delivery_id] = job.address
            if job.audience != "eo" or job.eori is None:
                continue
            key = (job.procedure_id, job.eori)
            if outcome.ok:
                reached.setdefault(key, (now, job.channel, job.channel, None, *key))
            else:
                unreached[key] = (job.channel, outcome.error, *key)
        await update_plain(session, _R, set_columns=_REACHED_COLUMNS, keys=_REACH_KEY, rows=list(reached.values()),
                           only_where="reached_at IS NULL")
        await update_plain(session, _R, set_columns=_UNREACHED_COLUMNS, keys=_REACH_KEY,
                           rows=list(unreached.values()), only_where="reached_at IS NULL")
        if not failed:
            return 0
        # The registry moved the EO to another address while this attempt was in flight: retry there now.
        moved = [
            row.id for row in (await session.execute(
                select(_D.c.id, _D.c.recipient).where(one_of(_D.c.id, list(failed), session.get_bind().dialect))
            )).all()
            if row.recipient != failed[row.id]
        ]
        if moved:
            await session.execute(update(_D).where(_D.c.id.in_(moved)).values(
                status=DeliveryStatus.RETRYING.value, next_attempt_at=now, updated_at=now,
            ))
        return len(moved)

    async def _settle(self, session: AsyncSession, event_ids: set[str], now: datetime) -> None:
        """Mark the events whose every delivery is now delivered or dead, and time their fan-out."""
        # One indexed probe per event (any delivery still due?), not a count of a fan-out's due rows per batch.
        done = {
            event_id for event_id in event_ids
            if await session.scalar(still_due_of(event_id)) is None
        }
        if not done:
            return
        events = (await session.scalars(
            select(PlannedEventRow).where(PlannedEventRow.event_id.in_(done), PlannedEventRow.settled_at.is_(None))
        )).all()
        for planned in events:
            planned.settled_at = now
            self._metrics.fanout_seconds.observe(max(0.0, (now - planned.planned_at).total_seconds()))

    async def _publish_outcomes(self) -> None:
        while True:
            recorded_at, batch = await self._published.get()
            # Deliver first, report after: while lanes are busy, a batch of outcomes waits until FEED_MAX_LAG_S
            # after it was recorded (not after the batch before it was published: the lag of a long fan-out's
            # last outcomes once grew by that much per 5,000), so a national fan-out does not share the CPU with
            # 100,000 broker sends until its last seconds. Once the lanes are idle, what is queued goes at once.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(recorded_at + FEED_MAX_LAG_S):
                    await self._idle.wait()
            taken = 1
            if not self._lanes:
                while not self._published.empty() and len(batch) < FEED_BATCH:
                    batch += self._published.get_nowait()[1]
                    taken += 1
            try:
                if self._publisher is not None:
                    await self._publish(self._publisher, batch)
            finally:
                for _ in range(taken):
                    self._published.task_done()

    async def _publish(self, publisher: Publisher, batch: list[Recorded]) -> None:
        topic = self._settings.kafka.deliveries_topic
        # Handed to the producer in batches (one wait for many, not a waiting task per outcome) of FEED_CHUNK:
        # building and encoding thousands of events at once would hold the loop, and the deliveries still under
        # way, for a quarter of a second. A chunk that fails does not keep the next ones from being tried.
        unpublished, last_error = 0, None
        for start in range(0, len(batch), FEED_CHUNK):
            chunk = batch[start:start + FEED_CHUNK]
            try:
                await publisher.publish_many([
                    (topic, recorded.procedure_id, delivery_event_bytes(recorded, instance=self._me))
                    for recorded in chunk
                ])
            except Exception as exc:  # the delivery log is the record; the topic is a feed for others
                unpublished, last_error = unpublished + len(chunk), exc
        if last_error is not None:
            log.warning("could not publish %d of %d delivery outcomes: %s", unpublished, len(batch), last_error)


def renewal(ids: Sequence[str], instance: str, until: datetime, dialect: Dialect) -> Any:
    """The statement that extends ``instance``'s lease to ``until`` on those of ``ids`` that are still due.

    The rows are looked up by their ids alone: the status is compared through ``coalesce`` so that no index
    on it can serve. With ``status IN (...)`` as such SQLite (which keeps no statistics here) walked the
    index of due rows instead, all of them for each chunk of ids: in a national fan-out 100,000 rows, 20
    times over, holding the one writer for a second and a half while the lanes ran empty."""
    return (
        update(_D)
        .where(one_of(_D.c.id, ids, dialect), _D.c.claimed_by == instance, func.coalesce(_D.c.status, "").in_(_DUE))
        .values(claimed_until=until)
    )


def delivery_event_bytes(recorded: Recorded, *, instance: str) -> bytes:
    """The deliveries feed's CloudEvent (``DeliveryEvent``) of one recorded outcome, as its JSON bytes.

    The same bytes as ``DeliveryEvent(...).to_bytes()`` (a unit test holds them equal), written by
    pydantic-core's JSON encoder from a dict in the models' field order: building two pydantic models per
    outcome cost a tenth of the sending loop's time during a national fan-out (100,000 outcomes). Values this
    process made, so there is no validation to redo. The id is named after the attempt it reports and the
    instance that made it: unique per recorded outcome (two notifiers may each record an attempt N of one
    delivery after a lease ran out), the same if a consumer sees it twice.
    """
    # Plain strings only (the enums' values, the time as pydantic writes it): the encoder then takes its fast
    # path, four times as fast as with enum members and datetimes to infer.
    r = recorded
    at_text = _json_time(r.at)
    return to_json({
        "specversion": "1.0", "id": f"{r.delivery_id}.{r.attempt}.{instance}", "source": SOURCE,
        "type": _DELIVERY_RECORDED, "time": at_text, "subject": r.procedure_id,
        "datacontenttype": "application/json",
        "data": {
            "delivery_id": r.delivery_id, "event_id": r.event_id, "procedure_id": r.procedure_id,
            "eori": r.eori, "channel": r.channel.value, "recipient": r.recipient, "attempt": r.attempt,
            "status": r.status.value, "http_status": r.http_status, "error": r.error, "at": at_text,
        },
    })


_DELIVERY_RECORDED = EventType.DELIVERY_RECORDED.value


def _json_time(at: datetime) -> str:
    """``at`` as pydantic writes an aware datetime in JSON (the outcomes of one batch share it)."""
    # Keyed by the offset too: aware datetimes of one instant are equal whatever their zone, their text is not.
    return _json_time_in(at, at.utcoffset())


@functools.lru_cache(maxsize=64)
def _json_time_in(at: datetime, _offset: timedelta | None) -> str:
    return cast(str, from_json(to_json(at)))
