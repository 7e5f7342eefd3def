"""The outbox: publishes the events recorded with each decision, in order, at least once.

A decision's events are committed with it (transactional outbox). Right after the commit they are
handed to :meth:`Outbox.publish_soon`, which publishes them in the background, so that the consumer
goes on with the next poll instead of waiting for the broker's acknowledgement. The relay publishes
whatever is left: rows of a previous run, rows whose fast publication failed, rows other writers (the EO
registry) queued. While the relay has a backlog, new rows go through it too, so that they never overtake
older ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure.models import OutboxRow
from shared.kafka import Publisher

log = logging.getLogger(__name__)

_BATCH = 200


class Outbox:
    """Publishes committed outbox rows: fast in the background right after a commit, and by a relay."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], publisher: Publisher, *, poll_s: float = 1.0
    ) -> None:
        self._sessions = sessions
        self._publisher = publisher
        self._poll_s = poll_s
        self._lock = asyncio.Lock()  # one publication at a time, so rows go out in commit order
        self._in_flight: set[int] = set()  # rows a fast publication owns; the relay leaves them alone
        self._tasks: set[asyncio.Task[None]] = set()
        self._backlog = True  # until the relay has found the outbox empty, a previous run may have left rows
        self.wakeup = asyncio.Event()

    def publish_soon(self, rows: Sequence[OutboxRow]) -> None:
        """Publish rows just committed, without waiting for the broker (the fast path of every decision)."""
        if not rows:
            return
        if self._backlog:
            self.wakeup.set()  # older rows wait in the outbox: the relay publishes them all, in order
            return
        ids = [row.id for row in rows]
        self._in_flight.update(ids)
        messages = [(row.topic, row.key, row.payload) for row in rows]
        task = asyncio.create_task(self._publish_now(ids, messages), name="outbox-publish")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_now(self, ids: list[int], messages: list[tuple[str, str | None, bytes | None]]) -> None:
        try:
            async with self._lock:
                if self._backlog:  # an earlier fast publication failed: keep the order, leave it to the relay
                    self.wakeup.set()
                    return
                try:
                    await self._publisher.publish_many(messages)
                except Exception as exc:
                    self._backlog = True
                    self.wakeup.set()
                    log.warning("publishing right after the decision failed, the outbox relay will retry: %s", exc)
                    return
                await self._mark(ids)
        except Exception as exc:  # marking failed: the relay sends the rows again, with the same event ids
            log.warning("marking %d published outbox rows failed: %s", len(ids), exc)
        finally:
            self._in_flight.difference_update(ids)

    async def _mark(self, ids: Sequence[int]) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(OutboxRow).where(OutboxRow.id.in_(list(ids))).values(published_at=datetime.now(UTC))
            )

    async def relay(self, *, on_backlog: Callable[[int], None] | None = None) -> None:
        """Publish unpublished rows forever. A crash after publishing and before marking re-sends an event
        with the same CloudEvent id, which consumers treat as a duplicate."""
        while True:
            woken = False
            with contextlib.suppress(TimeoutError):
                woken = await asyncio.wait_for(self.wakeup.wait(), timeout=self._poll_s)
            self.wakeup.clear()
            try:
                async with self._lock:
                    # On a plain poll, rows younger than a few seconds are left to the fast path.
                    await self.drain(min_age_s=0.0 if woken or self._backlog else 5.0)
            except Exception as exc:
                log.warning("outbox relay failed, will retry: %s", exc)
                await asyncio.sleep(self._poll_s)
            if on_backlog is not None:
                with contextlib.suppress(Exception):
                    on_backlog(await self.backlog())

    async def drain(self, *, min_age_s: float = 0.0) -> int:
        """Publish and mark every unpublished row (not owned by a fast publication); the caller holds the lock
        or is the only publisher. Returns how many it published."""
        published = 0
        while True:
            created_before = datetime.now(UTC) - timedelta(seconds=min_age_s)
            query = select(OutboxRow).where(OutboxRow.published_at.is_(None), OutboxRow.created_at <= created_before)
            if self._in_flight:
                query = query.where(OutboxRow.id.not_in(list(self._in_flight)))
            async with self._sessions() as session:
                pending = (await session.scalars(query.order_by(OutboxRow.id).limit(_BATCH))).all()
            if not pending:
                if min_age_s == 0.0:
                    self._backlog = False
                return published
            await self._publisher.publish_many([(row.topic, row.key, row.payload) for row in pending])
            await self._mark([row.id for row in pending])
            published += len(pending)

    async def backlog(self) -> int:
        async with self._sessions() as session:
            return int(await session.scalar(select(func.count()).where(OutboxRow.published_at.is_(None))) or 0)

    async def settle(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for the fast publications under way, e.g. before the publisher stops."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
