"""What the Servicedesk console shows, decided without I/O: a procedure's fan-out progress, the procedure
statistics, the 90-day availability cells and the 24-hour response-time chart. The routes and the page
(:mod:`services.procedure.api.console`, :mod:`services.procedure.status_page`) read the data and word it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.procedure.availability import BucketFigures, Outage
from services.procedure.latency import SLOT, LatencySlot
from shared.events import CertificateExpiry, Component, Scenario

__all__ = [
    "AvailabilityCell", "FanOut", "LatencyChart", "ProcedureFacts", "ScenarioFigures", "availability_cells",
    "certificate_line", "fan_out", "latency_chart", "nearest_rank", "scenario_figures",
]


# ---- certificates ---------------------------------------------------------------------------------------


def certificate_line(certificate: CertificateExpiry, phrases: Mapping[str, str]) -> str:
    """The console's line of a certificate advisory: which certificate of which channel expires (or expired)
    on which day (UTC), in the words of ``phrases``."""
    what = phrases[f"certificate_{certificate.role.value}"].format(
        component=phrases[f"component_{certificate.component.value}"], target=certificate.target_id)
    key = "certificate_expired" if certificate.warning_days == 0 else "certificate_expires"
    return phrases[key].format(what=what, date=certificate.expires_at.astimezone(UTC).strftime("%Y-%m-%d"))


# ---- fan-out ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FanOut:
    """Of the ``concerned`` EOs: reached, still being retried, given up on (dead), not tried yet (pending)."""

    concerned: int
    reached: int
    retrying: int
    dead: int
    pending: int
    complete: bool
    """False when the notifier listed more failing deliveries than were read: retrying/dead are lower bounds."""


def fan_out(*, concerned: int, reached: int, unreached: Collection[str], retrying: Collection[str],
            dead: Collection[str], complete: bool = True) -> FanOut:
    """Sort the unreached EOs: one with a delivery still retrying is retrying (it may yet be reached, e.g. by
    e-mail after its webhook died); else one with a dead delivery is dead; else it is pending."""
    waiting = set(unreached)
    still_trying = waiting & set(retrying)
    given_up = (waiting & set(dead)) - still_trying
    return FanOut(concerned=concerned, reached=reached, retrying=len(still_trying), dead=len(given_up),
                  pending=max(0, concerned - reached - len(still_trying) - len(given_up)), complete=complete)


# ---- statistics ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcedureFacts:
    """One procedure that opened: the scenario it opened in, when, when it closed, and when the first EO was
    reached (seconds after the opening, as the notifier reported; None: unknown or nobody yet)."""

    scenario: Scenario
    opened_at: datetime
    closed_at: datetime | None
    first_notice_s: float | None


@dataclass(frozen=True)
class ScenarioFigures:
    scenario: Scenario
    opened: int
    closed: int
    open_p50_s: float | None
    open_max_s: float | None
    first_notice_p50_s: float | None
    first_notice_max_s: float | None
    first_notice_known: int


def nearest_rank(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile: the ``ceil(share * n)``-th smallest value (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(share * len(ordered))) - 1]


def scenario_figures(facts: Iterable[ProcedureFacts], scenarios: Sequence[Scenario]) -> list[ScenarioFigures]:
    """Per scenario (each of ``scenarios``, in that order, zero counts included): procedures opened, those
    closed, how long the closed ones were open (p50 and max) and how long until the first EO was reached
    (p50 and max, over the procedures for which it is known)."""
    facts = list(facts)
    figures = []
    for scenario in scenarios:
        mine = [f for f in facts if f.scenario == scenario]
        durations = [(f.closed_at - f.opened_at).total_seconds() for f in mine if f.closed_at is not None]
        notices = [f.first_notice_s for f in mine if f.first_notice_s is not None]
        figures.append(ScenarioFigures(
            scenario=scenario, opened=len(mine), closed=len(durations),
            open_p50_s=nearest_rank(durations, 0.5), open_max_s=max(durations, default=None),
            first_notice_p50_s=nearest_rank(notices, 0.5), first_notice_max_s=max(notices, default=None),
            first_notice_known=len(notices),
        ))
    return figures


# ---- 90-day availability cells ------------------------------------------------------------------------


@dataclass(frozen=True)
class AvailabilityCell:
    """One day of one component: its availability, the colour class it is shown in, and its outages."""

    component: Component
    day: datetime
    availability: float | None
    level: str
    """``full`` (100 %), ``high`` (99 % or more), ``fair`` (95 % or more), ``low`` (less), ``none`` (not known)."""
    downtime_s: float
    outages: tuple[Outage, ...]


def _level(availability: float | None) -> str:
    if availability is None:
        return "none"
    if availability >= 1.0:
        return "full"
    return "high" if availability >= 0.99 else "fair" if availability >= 0.95 else "low"


def availability_cells(days: Sequence[BucketFigures], outages: Sequence[Outage]) -> list[AvailabilityCell]:
    """A cell per daily bucket, with the outages of its component that overlap that day."""
    cells = []
    for bucket in days:
        end = bucket.bucket_start + timedelta(days=1)
        mine = tuple(o for o in outages if o.component == bucket.component and o.started_at < end
                     and (o.ended_at is None or o.ended_at > bucket.bucket_start))
        cells.append(AvailabilityCell(component=bucket.component, day=bucket.bucket_start,
                                      availability=bucket.availability, level=_level(bucket.availability),
                                      downtime_s=bucket.downtime_s, outages=mine))
    return cells


# ---- response-time chart ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyChart:
    """An SVG polyline per run of consecutive slots with probes (a gap where none were reported)."""

    width: int
    height: int
    peak_ms: float
    """The top of the y axis: the largest mean in the window (0 when there is none)."""
    lines: tuple[str, ...]
    """Each line's ``points`` attribute."""
    mean_ms: float | None
    """The mean over the window (None: no probe reported)."""


def latency_chart(slots: Sequence[LatencySlot], *, start: datetime, end: datetime, width: int = 600,
                  height: int = 120) -> LatencyChart:
    """The mean latency per slot of one component in ``[start, end)``, scaled into ``width`` x ``height``."""
    inside = sorted((s for s in slots if start <= s.slot_start < end), key=lambda s: s.slot_start)
    peak = max((s.mean_ms for s in inside), default=0.0)
    span = (end - start).total_seconds() or 1.0
    lines: list[list[str]] = []
    previous: datetime | None = None
    for slot in inside:
        x = (slot.slot_start - start).total_seconds() / span * width
        y = height - (slot.mean_ms / peak * (height - 4) if peak > 0 else 0) - 2
        if previous is None or slot.slot_start - previous > SLOT:
            lines.append([])
        lines[-1].append(f"{x:.1f},{y:.1f}")
        previous = slot.slot_start
    # A lone slot is drawn as a short flat stroke, so that it shows.
    drawn = tuple(" ".join(p if len(p) > 1 else [p[0], f"{float(p[0].split(',')[0]) + 2:.1f},{p[0].split(',')[1]}"])
                  for p in lines)
    samples = sum(s.samples for s in inside)
    mean = sum(s.total_ms for s in inside) / samples if samples else None
    return LatencyChart(width=width, height=height, peak_ms=peak, lines=drawn, mean_ms=mean)
