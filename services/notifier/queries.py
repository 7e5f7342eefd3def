"""Read side of the notifier API: the delivery log one page at a time, and the summary by status."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifier.models import AttemptRow, DeliveryRow
from shared.events import DeliveryChannel, DeliveryStatus
from shared.paging import Page, decode_cursor, decode_moment, next_cursor

__all__ = ["AttemptView", "DeliveryPage", "DeliverySummary", "DeliveryView", "delivery_page", "delivery_summary"]


class AttemptView(BaseModel):
    attempt: int = Field(description="1 for the first try")
    at: datetime
    outcome: str = Field(description="delivered, failed, ...")
    http_status: int | None = Field(description="The webhook's answer, if any")
    error: str | None
    duration_ms: float | None


class DeliveryView(BaseModel):
    """One notice to one recipient on one channel, with every attempt."""

    delivery_id: str
    event_id: str = Field(description="The CloudEvent delivered")
    event_type: str
    procedure_id: str | None = Field(description="The procedure announced (or the advisory id)")
    audience: str = Field(description="eo, servicedesk or bureau")
    eori: str | None
    channel: DeliveryChannel
    recipient: str = Field(description="The webhook URL or the e-mail address")
    idempotency_key: str
    status: DeliveryStatus
    attempt_count: int
    attempts: list[AttemptView]
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None


class DeliveryPage(Page[DeliveryView]):
    pass


class DeliverySummary(BaseModel):
    counts: dict[str, int] = Field(description="Deliveries per status, among the latest `limit`")
    total: int


async def delivery_summary(sessions: async_sessionmaker[AsyncSession], *, limit: int) -> DeliverySummary:
    """How many of the latest ``limit`` deliveries are in each status."""
    latest = select(DeliveryRow.status).order_by(
        DeliveryRow.created_at.desc(), DeliveryRow.id.desc()
    ).limit(limit).subquery()
    async with sessions() as session:
        counted = (await session.execute(
            select(latest.c.status, func.count()).group_by(latest.c.status)
        )).all()
    counts = {status: n for status, n in counted}
    return DeliverySummary(counts=counts, total=sum(counts.values()))


async def delivery_page(
    sessions: async_sessionmaker[AsyncSession],
    *,
    only_eori: str | None,
    procedure_id: str | None = None,
    eori: str | None = None,
    status: DeliveryStatus | None = None,
    channel: DeliveryChannel | None = None,
    limit: int,
    cursor: str | None = None,
) -> DeliveryPage:
    """Deliveries with their attempts, newest first; ``only_eori``: those to that EO only (an EO reading)."""
    query = select(DeliveryRow).order_by(DeliveryRow.created_at.desc(), DeliveryRow.id.desc())
    if only_eori is not None:
        query = query.where(DeliveryRow.eori == only_eori)
    if cursor is not None:
        after_text, after_id = decode_cursor(cursor, keys=2)
        after_time = decode_moment(after_text)
        query = query.where(or_(
            DeliveryRow.created_at < after_time,
            and_(DeliveryRow.created_at == after_time, DeliveryRow.id < after_id),
        ))
    if procedure_id is not None:
        query = query.where(DeliveryRow.procedure_id == procedure_id)
    if eori is not None:
        query = query.where(DeliveryRow.eori == eori)
    if status is not None:
        query = query.where(DeliveryRow.status == status.value)
    if channel is not None:
        query = query.where(DeliveryRow.channel == channel.value)
    async with sessions() as session:
        rows = (await session.scalars(query.limit(limit + 1))).all()
        page = rows[:limit]
        attempts: dict[str, list[AttemptRow]] = defaultdict(list)
        if page:
            found = await session.scalars(
                select(AttemptRow).where(AttemptRow.delivery_id.in_([r.id for r in page])).order_by(AttemptRow.id)
            )
            for attempt in found.all():
                attempts[attempt.delivery_id].append(attempt)
    return DeliveryPage(items=[_delivery(row, attempts[row.id]) for row in page],
                        next=next_cursor(rows, limit=limit, key=lambda r: (r.created_at.isoformat(), r.id)))


def _delivery(row: DeliveryRow, attempts: list[AttemptRow]) -> DeliveryView:
    return DeliveryView.model_validate({
        "delivery_id": row.id,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "procedure_id": row.procedure_id,
        "audience": row.audience,
        "eori": row.eori,
        "channel": row.channel,
        "recipient": row.recipient,
        "idempotency_key": row.idempotency_key,
        "status": row.status,
        "attempt_count": row.attempts,
        "attempts": [
            {"attempt": a.attempt, "at": a.at, "outcome": a.outcome, "http_status": a.http_status, "error": a.error,
             "duration_ms": a.duration_ms}
            for a in attempts
        ],
        "last_error": row.last_error,
        "next_attempt_at": row.next_attempt_at,
        "created_at": row.created_at,
        "delivered_at": row.delivered_at,
    })
