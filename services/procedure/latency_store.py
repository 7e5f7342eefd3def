"""Probe latency slots in the procedure database: added to in the decision's transaction, read by the console
and ``GET /api/v1/history/latency``. What a slot is: :mod:`services.procedure.latency`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import Table, case, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure.latency import LatencySlot
from services.procedure.models import ProbeLatencyRow
from shared.events import Component

__all__ = ["add_latency", "latency_slots"]

_T = cast(Table, ProbeLatencyRow.__table__)


async def add_latency(session: AsyncSession, slots: Sequence[LatencySlot]) -> None:
    """Count ``slots`` into the stored ones (one statement; inside the caller's transaction)."""
    if not slots:
        return
    insert = sqlite_insert if session.get_bind().dialect.name == "sqlite" else postgresql_insert
    statement = insert(_T)
    new = statement.excluded
    await session.execute(
        statement.on_conflict_do_update(index_elements=["component", "slot_start"], set_={
            "samples": _T.c.samples + new.samples,
            "total_ms": _T.c.total_ms + new.total_ms,
            "max_ms": case((new.max_ms > _T.c.max_ms, new.max_ms), else_=_T.c.max_ms),
        }),
        [{"component": s.component.value, "slot_start": s.slot_start, "samples": s.samples, "total_ms": s.total_ms,
          "max_ms": s.max_ms} for s in slots],
    )


async def latency_slots(
    sessions: async_sessionmaker[AsyncSession], *, components: Sequence[Component], start: datetime, end: datetime,
    limit: int,
) -> list[LatencySlot]:
    """The stored slots starting in ``[start, end)``, by component then time, at most ``limit``."""
    async with sessions() as session:
        rows = (await session.scalars(
            select(ProbeLatencyRow)
            .where(ProbeLatencyRow.component.in_([c.value for c in components]),
                   ProbeLatencyRow.slot_start >= start, ProbeLatencyRow.slot_start < end)
            .order_by(ProbeLatencyRow.component, ProbeLatencyRow.slot_start)
            .limit(limit)
        )).all()
    return [LatencySlot(component=Component(r.component), slot_start=r.slot_start, samples=r.samples,
                        total_ms=r.total_ms, max_ms=r.max_ms) for r in rows]
