"""The outbox relay: publishes the events recorded with each decision, in order, at least once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure.models import OutboxRow
from shared.kafka import Publisher

log = logging.getLogger(__name__)


async def relay_outbox(
    sessions: async_sessionmaker[AsyncSession],
    publisher: Publisher,
    wakeup: asyncio.Event,
    *,
    poll_s: float = 1.0,
    on_backlog: Callable[[int], None] | None = None,
) -> None:
    """Publish unpublished outbox rows forever. A crash after publishing and before marking re-sends the
    event with the same CloudEvent id, which consumers treat as a duplicate."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout=poll_s)
        wakeup.clear()
        try:
            await drain(sessions, publisher)
        except Exception as exc:
            log.warning("outbox relay failed, will retry: %s", exc)
            await asyncio.sleep(poll_s)
        if on_backlog is not None:
            with contextlib.suppress(Exception):
                on_backlog(await backlog(sessions))


async def drain(sessions: async_sessionmaker[AsyncSession], publisher: Publisher) -> int:
    published = 0
    while True:
        async with sessions() as session:
            pending = (
                await session.scalars(
                    select(OutboxRow).where(OutboxRow.published_at.is_(None)).order_by(OutboxRow.id).limit(200)
                )
            ).all()
        if not pending:
            return published
        await publisher.publish_many([(row.topic, row.key, row.payload) for row in pending])
        async with sessions.begin() as session:
            await session.execute(
                update(OutboxRow)
                .where(OutboxRow.id.in_([row.id for row in pending]))
                .values(published_at=datetime.now(UTC))
            )
        published += len(pending)


async def backlog(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).where(OutboxRow.published_at.is_(None))) or 0)
