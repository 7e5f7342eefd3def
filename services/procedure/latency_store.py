"""Probe latency slots in the procedure database: added to in the decision's transaction, read by the console
and ``GET /api/v1/history/latency``. What a slot is: :mod:`services.procedure.latency`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import Table, case, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure.latency import LatencySlot
from services.procedure.models import ProbeLatencyRow
from shared.db import upsert
from shared.events import Component

__all__ = ["add_latency", "latency_slots"]

_T = cast(Table, ProbeLatencyRow.__table__)


async def add_latency(session: AsyncSession, slots: Sequence[LatencySlot]) -> None:
    """Count ``slots`` into the stored ones (one statement; inside the caller's transaction)."""
    await upsert(session, _T, [
        {"component": s.component, "slot_start": s.slot_start, "samples": s.samples, "total_ms": s.total_ms,
         "max_ms": s.max_ms} for s in slots
    ], key=("component", "slot_start"), merge=lambda new: {
        "samples": _T.c.samples + new.samples,
        "total_ms": _T.c.total_ms + new.total_ms,
        "max_ms": case((new.max_ms > _T.c.max_ms, new.max_ms), else_=_T.c.max_ms),
    })


async def latency_slots(
    sessions: async_sessionmaker[AsyncSession], *, components: Sequence[Component], start: datetime, end: datetime,
    limit: int,
) -> list[LatencySlot]:
    """The stored slots starting in ``[start, end)``, by component then time, at most ``limit``."""
    async with sessions() as session:
        rows = (await session.scalars(
            select(ProbeLatencyRow)
            .where(ProbeLatencyRow.component.in_(list(components)),
                   ProbeLatencyRow.slot_start >= start, ProbeLatencyRow.slot_start < end)
            .order_by(ProbeLatencyRow.component, ProbeLatencyRow.slot_start)
            .limit(limit)
        )).all()
    return [LatencySlot(component=r.component, slot_start=r.slot_start, samples=r.samples,
                        total_ms=r.total_ms, max_ms=r.max_ms) for r in rows]
