"""Component state history: recorded with each component change, read back for the history API.

The figures themselves are computed by the pure functions of :mod:`services.procedure.availability`;
this module only writes the spans and reads what those functions need, one page at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure.availability import (
    NATIONAL_COMPONENTS,
    Bucket,
    BucketFigures,
    Outage,
    StateSpan,
    TimelineEntry,
    bucket_figures,
    bucket_starts,
    next_bucket,
    outages,
    scenario_periods,
)
from services.procedure.models import ComponentStateRow, ProcedureRow, TimelineRow
from shared.errors import InvalidCursor
from shared.events import Component, ComponentState, Scope
from shared.paging import decode_cursor, decode_moment, encode_cursor

__all__ = ["InvalidCursor", "Page", "history_page", "outages_page", "record_state_changes"]


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next: str | None


async def record_state_changes(
    session: AsyncSession, changed: Mapping[Component, ComponentState], *, now: datetime
) -> None:
    """End each changed component's current span at ``now`` and start one in its new state (inside the
    caller's transaction, the one that records the change itself)."""
    for component, state in changed.items():
        await session.execute(
            update(ComponentStateRow)
            .where(ComponentStateRow.component == component, ComponentStateRow.until.is_(None))
            .values(until=now)
        )
        session.add(ComponentStateRow(component=component, state=state, since=now, until=None))
    if changed:
        await session.flush()


def _span(row: ComponentStateRow) -> StateSpan:
    return StateSpan(component=row.component, state=row.state, since=row.since, until=row.until)


def _overlapping(start: datetime, end: datetime) -> ColumnElement[bool]:
    return and_(ComponentStateRow.since < end,
                or_(ComponentStateRow.until.is_(None), ComponentStateRow.until > start))




async def history_page(
    sessions: async_sessionmaker[AsyncSession],
    *,
    components: Sequence[Component] = NATIONAL_COMPONENTS,
    bucket: Bucket,
    start: datetime,
    end: datetime,
    now: datetime,
    limit: int,
    cursor: str | None = None,
) -> Page[BucketFigures]:
    """One page of per-bucket figures, by component then time; ``next`` continues after its last item."""
    keys = [(c, b) for c in components for b in bucket_starts(start, end, bucket)]
    if cursor is not None:
        component, after_text = decode_cursor(cursor, keys=2)
        after = decode_moment(after_text)
        position = next((i for i, (c, b) in enumerate(keys) if c.value == component and b == after), None)
        if position is None:
            raise InvalidCursor("invalid cursor: it does not belong to this query")
        keys = keys[position + 1:]
    page, more = keys[:limit], len(keys) > limit
    items: list[BucketFigures] = []
    async with sessions() as session:
        for component in dict.fromkeys(c for c, _ in page):
            starts = [b for c, b in page if c == component]
            lo, hi = max(start, starts[0]), min(end, next_bucket(starts[-1], bucket))
            rows = (await session.scalars(
                select(ComponentStateRow)
                .where(ComponentStateRow.component == component.value, _overlapping(lo, hi))
                .order_by(ComponentStateRow.since)
            )).all()
            spans = [_span(r) for r in rows]
            items += [bucket_figures(spans, component=component, bucket_start=b, bucket=bucket, start=start,
                                     end=end, now=now) for b in starts]
    last = page[-1] if page else None
    return Page(items, encode_cursor(last[0].value, last[1].isoformat()) if more and last else None)


async def outages_page(
    sessions: async_sessionmaker[AsyncSession],
    *,
    components: Sequence[Component] = NATIONAL_COMPONENTS,
    start: datetime,
    end: datetime,
    now: datetime,
    limit: int,
    cursor: str | None = None,
) -> Page[Outage]:
    """One page of the outages overlapping ``[start, end)``, oldest first, each with the national procedure
    it caused."""
    query = (
        select(ComponentStateRow)
        .where(ComponentStateRow.state == ComponentState.DOWN.value,
               ComponentStateRow.component.in_([c.value for c in components]), _overlapping(start, end))
        .order_by(ComponentStateRow.since, ComponentStateRow.id)
    )
    if cursor is not None:
        since_text, row_id = decode_cursor(cursor, keys=2)
        since = decode_moment(since_text)
        if not row_id.isdigit():
            raise InvalidCursor("invalid cursor: use the 'next' value of the previous page")
        query = query.where(or_(ComponentStateRow.since > since,
                                and_(ComponentStateRow.since == since, ComponentStateRow.id > int(row_id))))
    async with sessions() as session:
        rows = (await session.scalars(query.limit(limit + 1))).all()
        page = rows[:limit]
        entries: list[TimelineEntry] = []
        if page:
            earliest = min(r.since for r in page)
            latest = max(r.until or now for r in page)
            found = await session.execute(
                select(TimelineRow.procedure_id, TimelineRow.at, TimelineRow.kind, TimelineRow.scenario)
                .join(ProcedureRow, ProcedureRow.id == TimelineRow.procedure_id)
                .where(ProcedureRow.scope == Scope.NATIONAL.value, ProcedureRow.created_at <= latest,
                       or_(ProcedureRow.closed_at.is_(None), ProcedureRow.closed_at >= earliest))
                .order_by(TimelineRow.at, TimelineRow.id)
            )
            entries = [TimelineEntry(procedure_id=p, at=at, kind=kind, scenario=scenario)
                       for p, at, kind, scenario in found.all()]
    items = outages([_span(r) for r in page], scenario_periods(entries), now=now)
    more = len(rows) > limit
    return Page(items, encode_cursor(page[-1].since.isoformat(), str(page[-1].id)) if more else None)
