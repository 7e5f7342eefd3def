"""Notifier API: the delivery log, every attempt and its outcome."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifier.models import AttemptRow, DeliveryRow
from shared.events import DeliveryStatus

router = APIRouter(prefix="/api/v1", tags=["deliveries"])


@router.get("/deliveries", summary="Deliveries with their attempts, newest first")
async def list_deliveries(
    request: Request,
    procedure_id: str | None = None,
    eori: str | None = None,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="'next' of the previous page")] = None,
) -> dict[str, Any]:
    if cursor is not None and not cursor.isdigit():
        raise HTTPException(400, "invalid cursor: use the 'next' value of the previous page")
    offset = int(cursor or 0)
    query = select(DeliveryRow).order_by(DeliveryRow.created_at.desc(), DeliveryRow.id)
    if procedure_id is not None:
        query = query.where(DeliveryRow.procedure_id == procedure_id)
    if eori is not None:
        query = query.where(DeliveryRow.eori == eori)
    if status is not None:
        query = query.where(DeliveryRow.status == status.value)
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    async with sessions() as session:
        rows = (await session.scalars(query.offset(offset).limit(limit + 1))).all()
        page = rows[:limit]
        attempts: dict[str, list[AttemptRow]] = defaultdict(list)
        if page:
            found = await session.scalars(
                select(AttemptRow).where(AttemptRow.delivery_id.in_([r.id for r in page])).order_by(AttemptRow.id)
            )
            for attempt in found.all():
                attempts[attempt.delivery_id].append(attempt)
    return {
        "items": [
            {
                "delivery_id": r.id,
                "event_id": r.event_id,
                "event_type": r.event_type,
                "procedure_id": r.procedure_id,
                "eori": r.eori,
                "channel": r.channel,
                "recipient": r.recipient,
                "status": r.status,
                "attempts": [
                    {"attempt": a.attempt, "at": a.at, "outcome": a.outcome, "http_status": a.http_status,
                     "error": a.error, "duration_ms": a.duration_ms}
                    for a in attempts[r.id]
                ],
                "next_attempt_at": r.next_attempt_at,
                "created_at": r.created_at,
                "delivered_at": r.delivered_at,
            }
            for r in page
        ],
        "next": str(offset + limit) if len(rows) > limit else None,
    }
