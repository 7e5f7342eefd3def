"""The outbox relay: publishes the events recorded with each decision, in order, at least once."""

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


async def publish_now(
    sessions: async_sessionmaker[AsyncSession], publisher: Publisher, lock: asyncio.Lock, rows: Sequence[OutboxRow]
) -> None:
    """Publish rows just committed, without waiting for the relay (the fast path of every decision).

    Raises if the broker does not take them; they stay in the outbox and the relay retries them.
    """
    async with lock:
        await _publish_and_mark(sessions, publisher, rows)


async def _publish_and_mark(
    sessions: async_sessionmaker[AsyncSession], publisher: Publisher, rows: Sequence[OutboxRow]
) -> None:
    await publisher.publish_many([(row.topic, row.key, row.payload) for row in rows])
    async with sessions.begin() as session:
        await session.execute(
            update(OutboxRow).where(OutboxRow.id.in_([row.id for row in rows])).values(published_at=datetime.now(UTC))
        )


async def relay_outbox(
    sessions: async_sessionmaker[AsyncSession],
    publisher: Publisher,
    wakeup: asyncio.Event,
    *,
    lock: asyncio.Lock | None = None,
    poll_s: float = 1.0,
    on_backlog: Callable[[int], None] | None = None,
) -> None:
    """Publish unpublished outbox rows forever. A crash after publishing and before marking re-sends the
    event with the same CloudEvent id, which consumers treat as a duplicate."""
    while True:
        woken = False
        with contextlib.suppress(TimeoutError):
            woken = await asyncio.wait_for(wakeup.wait(), timeout=poll_s)
        wakeup.clear()
        try:
            # The lock keeps the relay and the fast path from publishing the same rows at once; on a plain
            # poll, rows younger than a few seconds are left to the fast path that is publishing them.
            async with lock or contextlib.nullcontext():
                await drain(sessions, publisher, min_age_s=0.0 if woken else 5.0)
        except Exception as exc:
            log.warning("outbox relay failed, will retry: %s", exc)
            await asyncio.sleep(poll_s)
        if on_backlog is not None:
            with contextlib.suppress(Exception):
                on_backlog(await backlog(sessions))


async def drain(sessions: async_sessionmaker[AsyncSession], publisher: Publisher, *, min_age_s: float = 0.0) -> int:
    published = 0
    while True:
        created_before = datetime.now(UTC) - timedelta(seconds=min_age_s)
        async with sessions() as session:
            pending = (
                await session.scalars(
                    select(OutboxRow)
                    .where(OutboxRow.published_at.is_(None), OutboxRow.created_at <= created_before)
                    .order_by(OutboxRow.id)
                    .limit(200)
                )
            ).all()
        if not pending:
            return published
        await _publish_and_mark(sessions, publisher, pending)
        published += len(pending)


async def backlog(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).where(OutboxRow.published_at.is_(None))) or 0)
