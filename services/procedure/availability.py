"""Availability history of the national components: pure functions over recorded state spans.

The procedure service records each national component's state as spans (``state`` from ``since`` until
``until``, the open span having no ``until``), written with every component change. From them:

- **Buckets** are UTC hours or days. A bucket's figures cover only the part of it that lies inside the
  window asked for (``[start, end)``) and before ``now``: a bucket cut by the window or still running
  reports its measured part only, never the future.
- ``up_s``, ``downtime_s`` and ``unknown_s`` split that measured part; they add up to it. Time not
  covered by any span (before the first recorded change) counts as unknown: nothing was known then.
- ``availability`` = ``up_s / (up_s + downtime_s)``: the share of the *known* time the component was up,
  so a blind detector neither lowers nor raises it. It is None when nothing of the bucket is known.
- An **outage** is one down span: from the change to down to the next change (to up or to unknown;
  down, unknown, down again is two outages, since nobody knows what happened in between). A bucket's
  ``outages`` counts the outages that started inside its measured part.
- The **procedure an outage caused** is the national procedure that was in a scenario the outage
  explains while the outage lasted: ADA B2G down explains ``ADA_B2G_UNAVAILABLE`` and
  ``LUCCS_UNAVAILABLE``; NTP down explains ``LUCCS_UNAVAILABLE`` only (NTP alone opens nothing). When
  several did, the earliest. A proposed procedure counts (the outage caused the proposal).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from shared.events import Component, ComponentState, Scenario

__all__ = [
    "Bucket", "BucketFigures", "Outage", "ScenarioPeriod", "StateSpan", "TimelineEntry",
    "bucket_figures", "bucket_starts", "floor_bucket", "history", "next_bucket", "outages", "scenario_periods",
]

NATIONAL_COMPONENTS = (Component.ADA_B2G, Component.NTP)

EXPLAINED_BY: dict[Component, frozenset[Scenario]] = {
    Component.ADA_B2G: frozenset({Scenario.ADA_B2G_UNAVAILABLE, Scenario.LUCCS_UNAVAILABLE}),
    Component.NTP: frozenset({Scenario.LUCCS_UNAVAILABLE}),
}
"""The national scenarios an outage of each component explains."""

_STARTS = {"propose", "open", "confirm", "update"}  # timeline kinds that set a procedure's scenario
_ENDS = {"close", "withdraw"}


class Bucket(StrEnum):
    HOUR = "hour"
    DAY = "day"


@dataclass(frozen=True)
class StateSpan:
    """A component in one state from ``since`` until ``until`` (None: still in it)."""

    component: Component
    state: ComponentState
    since: datetime
    until: datetime | None


@dataclass(frozen=True)
class BucketFigures:
    component: Component
    bucket_start: datetime
    availability: float | None
    up_s: float
    downtime_s: float
    unknown_s: float
    outages: int


@dataclass(frozen=True)
class TimelineEntry:
    """One decision of a national procedure's timeline (notes and other kinds are ignored)."""

    procedure_id: str
    at: datetime
    kind: str
    scenario: Scenario


@dataclass(frozen=True)
class ScenarioPeriod:
    """A national procedure in one scenario from ``since`` until ``until`` (None: still in it)."""

    procedure_id: str
    scenario: Scenario
    since: datetime
    until: datetime | None


@dataclass(frozen=True)
class Outage:
    component: Component
    started_at: datetime
    ended_at: datetime | None
    duration_s: float
    procedure_id: str | None


# ---- buckets -------------------------------------------------------------------------------------------


def floor_bucket(moment: datetime, bucket: Bucket) -> datetime:
    """The start (UTC) of the bucket holding ``moment``."""
    moment = moment.astimezone(UTC)
    if bucket == Bucket.HOUR:
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def next_bucket(start: datetime, bucket: Bucket) -> datetime:
    return start + (timedelta(hours=1) if bucket == Bucket.HOUR else timedelta(days=1))


def bucket_starts(start: datetime, end: datetime, bucket: Bucket) -> list[datetime]:
    """The starts of every bucket that overlaps ``[start, end)``, in order."""
    starts = []
    cursor = floor_bucket(start, bucket)
    while cursor < end:
        starts.append(cursor)
        cursor = next_bucket(cursor, bucket)
    return starts


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())


def bucket_figures(
    spans: Iterable[StateSpan],
    *,
    component: Component,
    bucket_start: datetime,
    bucket: Bucket,
    start: datetime,
    end: datetime,
    now: datetime,
) -> BucketFigures:
    """The figures of one bucket of ``component``, over its part inside ``[start, end)`` and before ``now``
    (see the module docstring for the definitions)."""
    lo = max(bucket_start, start)
    hi = min(next_bucket(bucket_start, bucket), end, now)
    measured = _seconds(lo, hi)
    totals = {state: 0.0 for state in ComponentState}
    started = 0
    for span in spans:
        if span.component != component:
            continue
        until = span.until or now
        totals[span.state] += _seconds(max(span.since, lo), min(until, hi))
        if span.state == ComponentState.DOWN and lo <= span.since < hi:
            started += 1
    up, down = totals[ComponentState.UP], totals[ComponentState.DOWN]
    unknown = max(0.0, measured - up - down)  # unknown spans and time nothing was recorded
    return BucketFigures(
        component=component,
        bucket_start=bucket_start,
        availability=round(up / (up + down), 6) if up + down > 0 else None,
        up_s=round(up, 3),
        downtime_s=round(down, 3),
        unknown_s=round(unknown, 3),
        outages=started,
    )


def history(
    spans: Sequence[StateSpan],
    *,
    components: Sequence[Component],
    bucket: Bucket,
    start: datetime,
    end: datetime,
    now: datetime,
) -> list[BucketFigures]:
    """Every bucket of every component in ``[start, end)``, components in the order given, then by time."""
    return [
        bucket_figures(spans, component=c, bucket_start=b, bucket=bucket, start=start, end=end, now=now)
        for c in components
        for b in bucket_starts(start, end, bucket)
    ]


# ---- outages -------------------------------------------------------------------------------------------


def scenario_periods(entries: Iterable[TimelineEntry]) -> list[ScenarioPeriod]:
    """The scenarios each national procedure was in, and when, from its timeline decisions."""
    periods: list[ScenarioPeriod] = []
    current: dict[str, ScenarioPeriod] = {}
    for entry in sorted(entries, key=lambda e: e.at):
        if entry.kind not in _STARTS | _ENDS:
            continue
        running = current.pop(entry.procedure_id, None)
        if running is not None:
            periods.append(ScenarioPeriod(running.procedure_id, running.scenario, running.since, entry.at))
        if entry.kind in _STARTS:
            current[entry.procedure_id] = ScenarioPeriod(entry.procedure_id, entry.scenario, entry.at, None)
    periods.extend(current.values())
    return sorted(periods, key=lambda p: p.since)


def _overlap(a_start: datetime, a_end: datetime | None, b_start: datetime, b_end: datetime | None) -> bool:
    return (b_end is None or a_start < b_end) and (a_end is None or b_start < a_end)


def outages(spans: Iterable[StateSpan], periods: Sequence[ScenarioPeriod], *, now: datetime) -> list[Outage]:
    """Every down span as an outage, with its duration (to ``now`` while it lasts) and the national
    procedure it caused (or None), ordered by start."""
    found = []
    for span in sorted(spans, key=lambda s: (s.since, s.component.value)):
        if span.state != ComponentState.DOWN:
            continue
        explains = EXPLAINED_BY.get(span.component, frozenset())
        caused = next((p.procedure_id for p in periods
                       if p.scenario in explains and _overlap(span.since, span.until, p.since, p.until)), None)
        found.append(Outage(
            component=span.component,
            started_at=span.since,
            ended_at=span.until,
            duration_s=round(_seconds(span.since, span.until or now), 3),
            procedure_id=caused,
        ))
    return found
