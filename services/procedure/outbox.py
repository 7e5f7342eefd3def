"""The outbox: publishes the events recorded with each decision, in order, at least once.

A decision's events are committed with it (transactional outbox). Right after the commit they are
handed to :meth:`Outbox.publish_soon`, which queues them for the one publishing task, so that the
consumer goes on with the next poll instead of waiting for the broker's acknowledgement. That task
also publishes whatever else is unpublished in the table: rows of a previous run, rows other writers
(the EO registry) queued, and, after a failed publication, every row from the oldest unpublished one
on, in table order. One task publishes, so nothing overtakes an older event.

With several instances, only the leader publishes (``may_publish``, asked right before every send): a
deposed leader's queue is dropped (:meth:`Outbox.reset`) and the new leader publishes what is left in the
table, whatever epoch committed it. A leader stopped between that question and the broker's receipt of
the send could still send after its lease ran out: the event is then a duplicate with the same CloudEvent
id of one the new leader publishes (consumers deduplicate by id), never an event nobody decided.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure.leadership import NotLeader
from services.procedure.models import OutboxRow
from shared.kafka import Publisher

log = logging.getLogger(__name__)

_BATCH = 1000
"""Rows read, sent and marked at a time by the table drain (a 100,000-EO import leaves 100,000 rows)."""
_YOUNG_S = 5.0
"""On a plain poll, rows younger than this are left to the queue that is about to publish them."""

Message = tuple[int, str, str | None, bytes | None]  # outbox id, topic, key, payload


class Outbox:
    """Publishes committed outbox rows, from the queue fed after each commit and from the table."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        publisher: Publisher,
        *,
        poll_s: float = 1.0,
        may_publish: Callable[[], bool] = lambda: True,
    ) -> None:
        self._sessions = sessions
        self._publisher = publisher
        self._poll_s = poll_s
        self._may_publish = may_publish
        self._queue: asyncio.Queue[list[Message]] = asyncio.Queue()
        self._backlog = True  # until the table has been found empty, a previous run may have left rows
        self._published_from_table: set[int] = set()  # queued rows the table drain already published
        self._queued = asyncio.Event()
        self.wakeup = asyncio.Event()
        """Set it when rows were added to the table without being queued (the EO registry does)."""

    def publish_soon(self, rows: Sequence[OutboxRow]) -> None:
        """Queue rows just committed for publication (the fast path of every decision); not on a standby."""
        if rows and self._may_publish():
            self._queue.put_nowait([(row.id, row.topic, row.key, row.payload) for row in rows])
            self._queued.set()

    async def run(self, *, on_backlog: Callable[[int], None] | None = None) -> None:
        """Publish forever. A crash after publishing and before marking re-sends an event with the same
        CloudEvent id, which consumers treat as a duplicate."""
        while True:
            reason = await self._wait()
            try:
                if self._backlog:
                    await self.drain()  # the queued rows are in the table too: in order, with the rest
                    if not self._queue.empty():
                        self._queued.set()  # rows committed during the drain: the queue has them
                else:
                    await self._publish_queue()
                    if reason == "table":  # rows other writers added
                        await self.drain()
                    elif reason == "poll":  # rows nobody queued or woke us for
                        await self.drain(min_age_s=_YOUNG_S)
            except NotLeader:
                raise
            except Exception as exc:
                self._backlog = True
                log.warning("publishing the outbox failed, will retry from the table: %s", exc)
                await asyncio.sleep(self._poll_s)
            if on_backlog is not None:
                with contextlib.suppress(Exception):
                    on_backlog(await self.backlog())

    async def _wait(self) -> str:
        """Until rows are queued ("queue"), the table has rows for us ("table") or the poll interval has
        passed ("poll")."""
        if not (self._queued.is_set() or self.wakeup.is_set()):
            waiters = {asyncio.ensure_future(self._queued.wait()), asyncio.ensure_future(self.wakeup.wait())}
            try:
                await asyncio.wait(waiters, timeout=self._poll_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        reason = "table" if self.wakeup.is_set() else "queue" if self._queued.is_set() else "poll"
        self.wakeup.clear()
        self._queued.clear()
        return reason

    async def _publish_queue(self) -> None:
        messages: list[Message] = []
        while not self._queue.empty():
            messages += [m for m in self._queue.get_nowait() if m[0] not in self._published_from_table]
            self._queue.task_done()
        self._published_from_table.clear()
        if messages:
            await self._publish(messages)

    def reset(self) -> None:
        """Drop what is queued (leadership changed hands): the table still has it, for the leader."""
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
        self._published_from_table.clear()
        self._queued.clear()
        self._backlog = True

    async def _publish(self, messages: Sequence[Message]) -> None:
        if not self._may_publish():
            raise NotLeader("this instance does not lead: the leader publishes the outbox")
        await self._publisher.publish_many([(topic, key, payload) for _id, topic, key, payload in messages])
        async with self._sessions.begin() as session:
            await session.execute(
                update(OutboxRow)
                .where(OutboxRow.id.in_([m[0] for m in messages]))
                .values(published_at=datetime.now(UTC))
            )

    async def drain(self, *, min_age_s: float = 0.0) -> int:
        """Publish and mark every unpublished row of the table older than ``min_age_s``, in table order.
        Call it from the publishing task only (or when that task is not running). Returns the count."""
        published = 0
        while True:
            created_before = datetime.now(UTC) - timedelta(seconds=min_age_s)
            async with self._sessions() as session:
                pending: list[Message] = [(row[0], row[1], row[2], row[3]) for row in await session.execute(
                    select(OutboxRow.id, OutboxRow.topic, OutboxRow.key, OutboxRow.payload)
                    .where(OutboxRow.published_at.is_(None), OutboxRow.created_at <= created_before)
                    .order_by(OutboxRow.id)
                    .limit(_BATCH)
                )]
            if not pending:
                if min_age_s == 0.0:
                    self._backlog = False
                return published
            await self._publish(pending)
            self._published_from_table.update(m[0] for m in pending)
            published += len(pending)

    async def backlog(self) -> int:
        async with self._sessions() as session:
            return int(await session.scalar(select(func.count()).where(OutboxRow.published_at.is_(None))) or 0)

    async def settle(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) until the queued rows have been taken, e.g. before the publisher stops."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._queue.join()
