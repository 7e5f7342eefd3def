"""Availability history: per-bucket figures and outages from state spans, with exact numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.procedure.availability import (
    Bucket,
    Outage,
    ScenarioPeriod,
    StateSpan,
    TimelineEntry,
    bucket_figures,
    bucket_starts,
    floor_bucket,
    history,
    outages,
    scenario_periods,
)
from shared.events import Component, ComponentState, Scenario

ADA, NTP = Component.ADA_B2G, Component.NTP
UP, DOWN, UNKNOWN = ComponentState.UP, ComponentState.DOWN, ComponentState.UNKNOWN
DAY = datetime(2026, 3, 2, tzinfo=UTC)


def at(hours: float) -> datetime:
    return DAY + timedelta(hours=hours)


# ADA B2G: up at 00:00, down 01:00-01:30, down 02:20-03:00, unknown 04:30-05:00, down from 05:30 on.
ADA_SPANS = [
    StateSpan(ADA, UP, at(0), at(1)),
    StateSpan(ADA, DOWN, at(1), at(1.5)),
    StateSpan(ADA, UP, at(1.5), at(2 + 1 / 3)),
    StateSpan(ADA, DOWN, at(2 + 1 / 3), at(3)),
    StateSpan(ADA, UP, at(3), at(4.5)),
    StateSpan(ADA, UNKNOWN, at(4.5), at(5)),
    StateSpan(ADA, UP, at(5), at(5.5)),
    StateSpan(ADA, DOWN, at(5.5), None),
]
NOW = at(6.25)


def test_buckets_are_utc_hours_or_days() -> None:
    moment = datetime(2026, 3, 2, 13, 45, 10, tzinfo=UTC)
    assert floor_bucket(moment, Bucket.HOUR) == datetime(2026, 3, 2, 13, tzinfo=UTC)
    assert floor_bucket(moment, Bucket.DAY) == DAY
    assert bucket_starts(at(0.5), at(2), Bucket.HOUR) == [at(0), at(1)]
    assert bucket_starts(at(0.5), at(2.01), Bucket.HOUR) == [at(0), at(1), at(2)]


def test_hourly_figures_of_a_scripted_day() -> None:
    rows = history(ADA_SPANS, components=[ADA], bucket=Bucket.HOUR, start=at(0), end=at(7), now=NOW)
    assert [(f.bucket_start, f.availability, f.up_s, f.downtime_s, f.unknown_s, f.outages) for f in rows] == [
        (at(0), 1.0, 3600.0, 0.0, 0.0, 0),
        (at(1), 0.5, 1800.0, 1800.0, 0.0, 1),
        (at(2), 0.333333, 1200.0, 2400.0, 0.0, 1),
        (at(3), 1.0, 3600.0, 0.0, 0.0, 0),
        (at(4), 1.0, 1800.0, 0.0, 1800.0, 0),  # unknown time is not counted against availability
        (at(5), 0.5, 1800.0, 1800.0, 0.0, 1),
        (at(6), 0.0, 0.0, 900.0, 0.0, 0),  # measured up to now only: 06:00-06:15
    ]


def test_daily_figures_and_a_window_that_cuts_buckets() -> None:
    [day] = history(ADA_SPANS, components=[ADA], bucket=Bucket.DAY, start=DAY, end=DAY + timedelta(days=1), now=NOW)
    assert (day.availability, day.up_s, day.downtime_s, day.unknown_s, day.outages) == (
        0.666667, 13800.0, 6900.0, 1800.0, 3
    )
    # 01:15-02:30: the window's part of each bucket only
    first, second = history(ADA_SPANS, components=[ADA], bucket=Bucket.HOUR, start=at(1.25), end=at(2.5), now=NOW)
    assert (first.up_s, first.downtime_s, first.outages) == (1800.0, 900.0, 0)  # the outage began before 01:15
    assert (second.up_s, second.downtime_s, second.outages) == (1200.0, 600.0, 1)


def test_time_before_anything_was_recorded_is_unknown_and_has_no_availability() -> None:
    figures = bucket_figures(ADA_SPANS, component=ADA, bucket_start=at(-1), bucket=Bucket.HOUR, start=at(-1),
                             end=at(0), now=NOW)
    assert (figures.availability, figures.up_s, figures.downtime_s, figures.unknown_s) == (None, 0.0, 0.0, 3600.0)
    future = bucket_figures(ADA_SPANS, component=ADA, bucket_start=at(7), bucket=Bucket.HOUR, start=at(7),
                            end=at(8), now=NOW)
    assert (future.availability, future.up_s, future.downtime_s, future.unknown_s) == (None, 0.0, 0.0, 0.0)


TIMELINE = [
    TimelineEntry("p1", at(1), "open", Scenario.ADA_B2G_UNAVAILABLE),
    TimelineEntry("p1", at(1.2), "note", Scenario.ADA_B2G_UNAVAILABLE),
    TimelineEntry("p1", at(1.5), "close", Scenario.ADA_B2G_UNAVAILABLE),
    TimelineEntry("p2", at(2 + 1 / 3), "open", Scenario.LUCCS_UNAVAILABLE),
    TimelineEntry("p2", at(2 + 2 / 3), "update", Scenario.ADA_B2G_UNAVAILABLE),
    TimelineEntry("p2", at(3), "close", Scenario.ADA_B2G_UNAVAILABLE),
    TimelineEntry("p3", at(5.5), "propose", Scenario.ADA_B2G_UNAVAILABLE),
    TimelineEntry("p3", at(5.6), "confirm", Scenario.ADA_B2G_UNAVAILABLE),
]


def test_scenario_periods_follow_the_timeline_decisions() -> None:
    assert scenario_periods(TIMELINE) == [
        ScenarioPeriod("p1", Scenario.ADA_B2G_UNAVAILABLE, at(1), at(1.5)),
        ScenarioPeriod("p2", Scenario.LUCCS_UNAVAILABLE, at(2 + 1 / 3), at(2 + 2 / 3)),
        ScenarioPeriod("p2", Scenario.ADA_B2G_UNAVAILABLE, at(2 + 2 / 3), at(3)),
        ScenarioPeriod("p3", Scenario.ADA_B2G_UNAVAILABLE, at(5.5), at(5.6)),
        ScenarioPeriod("p3", Scenario.ADA_B2G_UNAVAILABLE, at(5.6), None),
    ]


def test_outages_with_the_procedure_each_caused() -> None:
    ntp_spans = [
        StateSpan(NTP, UP, at(0), at(0.25)),
        StateSpan(NTP, DOWN, at(0.25), at(0.5)),  # NTP alone: no procedure
        StateSpan(NTP, UP, at(0.5), at(2)),
        StateSpan(NTP, DOWN, at(2), at(2 + 2 / 3)),  # made p2 a scenario 3 while it lasted
        StateSpan(NTP, UP, at(2 + 2 / 3), None),
    ]
    found = outages(ADA_SPANS + ntp_spans, scenario_periods(TIMELINE), now=NOW)
    assert found == [
        Outage(NTP, at(0.25), at(0.5), 900.0, None),
        Outage(ADA, at(1), at(1.5), 1800.0, "p1"),
        Outage(NTP, at(2), at(2 + 2 / 3), 2400.0, "p2"),
        Outage(ADA, at(2 + 1 / 3), at(3), 2400.0, "p2"),
        Outage(ADA, at(5.5), None, 2700.0, "p3"),  # still going: up to now
    ]


def test_an_ntp_outage_during_scenario_2_only_is_not_its_cause_and_touching_periods_do_not_match() -> None:
    periods = [ScenarioPeriod("p", Scenario.ADA_B2G_UNAVAILABLE, at(1), at(3))]
    assert outages([StateSpan(NTP, DOWN, at(1.5), at(2))], periods, now=NOW)[0].procedure_id is None
    # an ADA B2G outage starting the instant a procedure closed was not caused... by that procedure
    assert outages([StateSpan(ADA, DOWN, at(3), at(4))], periods, now=NOW)[0].procedure_id is None
    assert outages([StateSpan(ADA, DOWN, at(0.5), at(1))], periods, now=NOW)[0].procedure_id is None
