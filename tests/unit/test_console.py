"""The console's pure rules: fan-out progress, procedure statistics, availability cells, latency roll-up and
chart, and its words in every language."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.procedure.availability import BucketFigures, Outage
from services.procedure.console import (
    ProcedureFacts,
    availability_cells,
    fan_out,
    latency_chart,
    nearest_rank,
    scenario_figures,
)
from services.procedure.console_texts import PHRASES
from services.procedure.domain import Action
from services.procedure.latency import LatencySample, LatencySlot, rollup, slot_start
from shared.events import AdvisoryKind, Component, Origin, Scenario

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
ADA, NTP = Component.ADA_B2G, Component.NTP


def test_unreached_eos_are_retrying_before_dead_before_pending() -> None:
    progress = fan_out(concerned=6, reached=2, unreached=["A", "B", "C", "D"], retrying=["A", "Z"],
                       dead=["A", "B", "Y"])
    assert (progress.reached, progress.retrying, progress.dead, progress.pending) == (2, 1, 1, 2)
    assert progress.complete


@settings(max_examples=100, deadline=None, database=None)
@given(st.sets(st.sampled_from("ABCDEFGH")), st.sets(st.sampled_from("ABCDEFGHXY")),
       st.sets(st.sampled_from("ABCDEFGHXY")), st.integers(0, 5))
def test_fan_out_counts_add_up_to_the_concerned(unreached: set[str], retrying: set[str], dead: set[str],
                                                reached: int) -> None:
    progress = fan_out(concerned=reached + len(unreached), reached=reached, unreached=unreached, retrying=retrying,
                       dead=dead)
    assert progress.reached + progress.retrying + progress.dead + progress.pending == progress.concerned


def test_nearest_rank() -> None:
    assert nearest_rank([], 0.5) is None
    assert nearest_rank([30.0, 10.0, 20.0, 40.0], 0.5) == 20.0
    assert nearest_rank([30.0, 10.0, 20.0], 0.5) == 20.0
    assert nearest_rank([5.0], 0.5) == 5.0


def test_scenario_figures_count_closed_durations_and_known_first_notices() -> None:
    def facts(scenario: Scenario, open_s: float | None, first: float | None) -> ProcedureFacts:
        return ProcedureFacts(scenario=scenario, opened_at=NOW,
                              closed_at=None if open_s is None else NOW + timedelta(seconds=open_s),
                              first_notice_s=first)

    figures = scenario_figures(
        [facts(Scenario.ADA_B2G_UNAVAILABLE, 600, 1.0), facts(Scenario.ADA_B2G_UNAVAILABLE, 60, None),
         facts(Scenario.ADA_B2G_UNAVAILABLE, None, 3.0)],
        [Scenario.ADA_B2G_UNAVAILABLE, Scenario.LUCCS_UNAVAILABLE],
    )
    ada, luccs = figures
    assert (ada.opened, ada.closed, ada.open_p50_s, ada.open_max_s) == (3, 2, 60.0, 600.0)
    assert (ada.first_notice_p50_s, ada.first_notice_max_s, ada.first_notice_known) == (1.0, 3.0, 2)
    assert (luccs.opened, luccs.open_p50_s, luccs.first_notice_max_s) == (0, None, None)


@pytest.mark.parametrize(("availability", "level"), [
    (None, "none"), (1.0, "full"), (0.995, "high"), (0.99, "high"), (0.96, "fair"), (0.5, "low"), (0.0, "low")])
def test_a_day_is_coloured_by_its_availability(availability: float | None, level: str) -> None:
    day = BucketFigures(component=ADA, bucket_start=NOW.replace(hour=0), availability=availability, up_s=0,
                        downtime_s=0, unknown_s=0, outages=0)
    (cell,) = availability_cells([day], [])
    assert cell.level == level


def test_a_day_lists_the_outages_of_its_component_that_overlap_it() -> None:
    midnight = NOW.replace(hour=0)
    days = [BucketFigures(component=c, bucket_start=midnight, availability=0.9, up_s=0, downtime_s=0, unknown_s=0,
                          outages=0) for c in (ADA, NTP)]
    overnight = Outage(component=ADA, started_at=midnight - timedelta(hours=1), ended_at=midnight + timedelta(hours=1),
                       duration_s=7200, procedure_id=None)
    ongoing = Outage(component=ADA, started_at=NOW, ended_at=None, duration_s=60, procedure_id="p")
    before = Outage(component=ADA, started_at=midnight - timedelta(hours=3), ended_at=midnight, duration_s=60,
                    procedure_id=None)
    ntp = Outage(component=NTP, started_at=NOW, ended_at=None, duration_s=60, procedure_id=None)
    ada_cell, ntp_cell = availability_cells(days, [before, overnight, ongoing, ntp])
    assert ada_cell.outages == (overnight, ongoing)
    assert ntp_cell.outages == (ntp,)


def test_latency_is_rolled_up_per_component_and_five_minutes() -> None:
    samples = [LatencySample(ADA, NOW + timedelta(seconds=s), ms) for s, ms in ((0, 10.0), (299, 30.0), (300, 5.0))]
    samples.append(LatencySample(NTP, NOW, 7.0))
    slots = rollup(samples)
    assert [(s.component, s.slot_start, s.samples, s.mean_ms, s.max_ms) for s in slots] == [
        (ADA, NOW, 2, 20.0, 30.0), (ADA, NOW + timedelta(minutes=5), 1, 5.0, 5.0), (NTP, NOW, 1, 7.0, 7.0)]
    assert slot_start(datetime(2026, 3, 2, 12, 7, 59, tzinfo=UTC)) == datetime(2026, 3, 2, 12, 5, tzinfo=UTC)


def test_the_chart_breaks_its_line_where_no_probe_was_reported() -> None:
    def slot(minutes: int, mean: float) -> LatencySlot:
        return LatencySlot(ADA, NOW + timedelta(minutes=minutes), 1, mean, mean)

    chart = latency_chart([slot(0, 100.0), slot(5, 50.0), slot(20, 100.0)], start=NOW,
                          end=NOW + timedelta(minutes=30), width=300, height=100)
    assert chart.peak_ms == 100.0 and chart.mean_ms == pytest.approx(250 / 3)
    assert chart.lines == ("0.0,2.0 50.0,50.0", "200.0,2.0 202.0,2.0")
    assert latency_chart([], start=NOW, end=NOW + timedelta(hours=1)).lines == ()


def test_every_language_has_every_phrase_and_every_scenario_and_component_a_name() -> None:
    keys = set(PHRASES[next(iter(PHRASES))])
    for phrases in PHRASES.values():
        assert set(phrases) == keys
    assert {f"scenario_{s.value}" for s in Scenario} | {f"component_{c.value}" for c in Component} <= keys
    assert {f"advisory_{k.value}" for k in AdvisoryKind} | {f"origin_{o.value}" for o in Origin} <= keys
    assert {f"kind_{a.value}" for a in Action} | {"kind_note", "kind_broadcast"} <= keys
