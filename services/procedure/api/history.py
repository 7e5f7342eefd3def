"""Availability history of the national components and their outages, as JSON or CSV (``Accept: text/csv``).

The definitions (buckets, availability, what an outage is and which procedure it caused) are in
:mod:`services.procedure.availability`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from services.procedure.api.deps import ClockDep, SessionsDep
from services.procedure.availability import NATIONAL_COMPONENTS, Bucket
from services.procedure.history import history_page, outages_page
from shared.events import Component
from shared.paging import CURSOR_MAX_LENGTH, Page

router = APIRouter(prefix="/api/v1", tags=["history"])

MAX_RANGE = {Bucket.HOUR: timedelta(days=92), Bucket.DAY: timedelta(days=731)}
"""The longest window one query may span (a page is at most ``limit`` items either way)."""
MAX_OUTAGE_RANGE = timedelta(days=731)
_EARLIEST, _LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)
_DEFAULT_SPAN = {Bucket.HOUR: timedelta(hours=24), Bucket.DAY: timedelta(days=30)}

NationalComponent = Literal["ada_b2g", "ntp"]
_CSV: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}},
          "description": "The items (JSON), or with `Accept: text/csv` a CSV with a header row; the next "
                         "page's URL then comes in a `Link: <...>; rel=\"next\"` header."},
    400: {"description": "A cursor that is not the `next` of a previous page of the same query"},
}


class HistoryBucket(BaseModel):
    component: Component = Field(description="ada_b2g or ntp")
    bucket_start: datetime = Field(description="Start of the UTC hour or day")
    availability: float | None = Field(
        description="up_s / (up_s + downtime_s), 0..1: the share of the known time it was up; null when "
                    "nothing of the bucket is known")
    up_s: float = Field(description="Seconds up, within the window and before now")
    downtime_s: float = Field(description="Seconds down")
    unknown_s: float = Field(description="Seconds unknown: no fresh observation, or nothing recorded yet")
    outages: int = Field(description="Outages that started in the bucket")


class HistoryPage(Page[HistoryBucket]):
    pass


class OutageItem(BaseModel):
    component: Component
    started_at: datetime
    ended_at: datetime | None = Field(description="null while it lasts")
    duration_s: float = Field(description="Up to now while it lasts")
    procedure_id: str | None = Field(description="The national procedure it caused, if any")


class OutagePage(Page[OutageItem]):
    pass


def _window(start: datetime | None, end: datetime | None, *, now: datetime, span: timedelta,
            longest: timedelta) -> tuple[datetime, datetime]:
    if any(t is not None and t.tzinfo is None for t in (start, end)):
        raise HTTPException(422, "from and to need a timezone, e.g. 2026-11-27T08:00:00Z")
    if any(t is not None and not _EARLIEST <= t <= _LATEST for t in (start, end)):
        raise HTTPException(422, "from and to must lie between 1970 and 9000")
    end = end or now
    start = start or end - span
    if start >= end:
        raise HTTPException(422, "from must be before to")
    if end - start > longest:
        raise HTTPException(422, f"from..to may span at most {longest.days} days for this query")
    return start, end


def _components(component: NationalComponent | None) -> Sequence[Component]:
    return NATIONAL_COMPONENTS if component is None else (Component(component),)


def _wants_csv(request: Request) -> bool:
    return "text/csv" in request.headers.get("accept", "")


def _csv(request: Request, header: Sequence[str], rows: Sequence[dict[str, Any]], next_cursor: str | None,
         name: str) -> Response:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(header), lineterminator="\r\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    headers = {"Content-Disposition": f'attachment; filename="{name}.csv"'}
    if next_cursor is not None:
        headers["Link"] = f'<{request.url.include_query_params(cursor=next_cursor)}>; rel="next"'
    return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)


From = Annotated[datetime | None, Query(alias="from", description="Start (ISO 8601 with timezone)")]
To = Annotated[datetime | None, Query(alias="to", description="End, excluded (default: now)")]
Limit = Annotated[int, Query(ge=1, le=2000)]
Cursor = Annotated[str | None, Query(max_length=CURSOR_MAX_LENGTH, description="'next' of the previous page")]


@router.get("/history", response_model=HistoryPage, responses=_CSV,
            summary="Per hour or day and component: availability, downtime, time unknown, outages started")
async def history(
    request: Request,
    sessions: SessionsDep,
    clock: ClockDep,
    component: Annotated[NationalComponent | None, Query(description="ada_b2g or ntp (default both)")] = None,
    start: From = None,
    end: To = None,
    bucket: Annotated[Bucket, Query(description="hour (default: the last 24) or day (default: the last 30)")]
    = Bucket.HOUR,
    limit: Limit = 500,
    cursor: Cursor = None,
) -> Any:
    now = clock()
    start, end = _window(start, end, now=now, span=_DEFAULT_SPAN[bucket], longest=MAX_RANGE[bucket])
    page = await history_page(sessions, components=_components(component), bucket=bucket, start=start,
                              end=end, now=now, limit=limit, cursor=cursor)
    items = [HistoryBucket(component=f.component, bucket_start=f.bucket_start, availability=f.availability,
                           up_s=f.up_s, downtime_s=f.downtime_s, unknown_s=f.unknown_s, outages=f.outages)
             for f in page.items]
    if _wants_csv(request):
        return _csv(request, list(HistoryBucket.model_fields), [i.model_dump(mode="json") for i in items],
                    page.next, "history")
    return HistoryPage(items=items, next=page.next)


@router.get("/outages", response_model=OutagePage, responses=_CSV,
            summary="Outages of the national components overlapping the window, oldest first, with the "
                    "national procedure each caused")
async def list_outages(
    request: Request,
    sessions: SessionsDep,
    clock: ClockDep,
    component: Annotated[NationalComponent | None, Query(description="ada_b2g or ntp (default both)")] = None,
    start: From = None,
    end: To = None,
    limit: Limit = 500,
    cursor: Cursor = None,
) -> Any:
    now = clock()
    start, end = _window(start, end, now=now, span=timedelta(days=30), longest=MAX_OUTAGE_RANGE)
    page = await outages_page(sessions, components=_components(component), start=start, end=end, now=now,
                              limit=limit, cursor=cursor)
    items = [OutageItem(component=o.component, started_at=o.started_at, ended_at=o.ended_at,
                        duration_s=o.duration_s, procedure_id=o.procedure_id) for o in page.items]
    if _wants_csv(request):
        return _csv(request, list(OutageItem.model_fields), [i.model_dump(mode="json") for i in items],
                    page.next, "outages")
    return OutagePage(items=items, next=page.next)
