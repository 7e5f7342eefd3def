"""Unit tests of suspicion and the retry pace (services/detector/domain.py): what a target's latest probe
says about a change to come, when that change is decided at the latest, and when the target is probed next."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.detector.domain import (
    ProbeResult,
    Suspicion,
    TargetStatus,
    Thresholds,
    confirming,
    due_after_probe,
    is_suspect,
    observe,
    reset_counters,
    resume,
    streak,
    suspicion,
)
from shared.events import ComponentState

UP, DOWN, UNKNOWN = ComponentState.UP, ComponentState.DOWN, ComponentState.UNKNOWN
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
RETRY_S = 1.0
TIMEOUT_S = 2.0
STEP = timedelta(seconds=RETRY_S + TIMEOUT_S)  # the longest a retry takes, from finish to finish
THRESHOLDS = Thresholds(failure=3, success=2)
FAST = settings(max_examples=300, deadline=None, database=None)


def probe(ok: bool, second: float, latency_ms: float = 10.0) -> ProbeResult:
    return ProbeResult(ok=ok, reason="ok" if ok else "refused", finished_at=T0 + timedelta(seconds=second),
                       latency_ms=latency_ms)


def fold(outcomes: Sequence[bool], thresholds: Thresholds = THRESHOLDS, start: TargetStatus | None = None,
         first_second: int = 1) -> TargetStatus:
    """Probe i (from ``first_second``) finishes at second i."""
    status = start if start is not None else TargetStatus()
    for i, ok in enumerate(outcomes, start=first_second):
        status, _ = observe(status, probe(ok, i), thresholds)
    return status


def suspicion_of(status: TargetStatus, thresholds: Thresholds = THRESHOLDS) -> Suspicion:
    return suspicion(status, thresholds, retry_interval_s=RETRY_S, timeout_s=TIMEOUT_S)


UP_TARGET = fold([True, True])  # up since second 2
DOWN_TARGET = fold([False, False, False])  # down since second 3


# --- suspicion --------------------------------------------------------------------------------


def test_a_never_probed_target_says_nothing() -> None:
    assert suspicion_of(TargetStatus()) == Suspicion(suspect=False, streak=0, threshold=None, verdict_by=None)
    assert not confirming(TargetStatus())


def test_the_first_failure_of_an_up_target_is_suspect_with_the_latest_verdict_time() -> None:
    status = fold([False], start=UP_TARGET, first_second=10)
    assert status.state == UP
    # Two more failures needed, each at most a retry interval plus a timeout after the previous one.
    assert suspicion_of(status) == Suspicion(
        suspect=True, streak=1, threshold=3, verdict_by=T0 + timedelta(seconds=10) + 2 * STEP
    )


def test_each_further_failure_brings_the_verdict_estimate_forward_from_the_latest_probe() -> None:
    status = fold([False, False], start=UP_TARGET, first_second=10)
    assert suspicion_of(status) == Suspicion(
        suspect=True, streak=2, threshold=3, verdict_by=T0 + timedelta(seconds=11) + STEP
    )


def test_the_failure_that_reaches_the_threshold_is_a_change_not_a_suspicion() -> None:
    status = fold([False, False, False], start=UP_TARGET, first_second=10)
    assert status.state == DOWN
    assert suspicion_of(status) == Suspicion(suspect=False, streak=3, threshold=3, verdict_by=None)


def test_the_first_success_of_a_down_target_is_suspect_against_the_success_threshold() -> None:
    status = fold([True], start=DOWN_TARGET, first_second=10)
    assert status.state == DOWN
    assert suspicion_of(status) == Suspicion(
        suspect=True, streak=1, threshold=2, verdict_by=T0 + timedelta(seconds=10) + STEP
    )


@pytest.mark.parametrize(("start", "ok"), [(UP_TARGET, True), (DOWN_TARGET, False)])
def test_a_probe_agreeing_with_the_state_is_not_suspect(start: TargetStatus, ok: bool) -> None:
    status = fold([ok, ok], start=start, first_second=10)
    found = suspicion_of(status)
    assert not found.suspect and found.verdict_by is None
    assert found.streak == (status.consecutive_successes if ok else status.consecutive_failures) >= 2
    assert found.threshold == (THRESHOLDS.success if ok else THRESHOLDS.failure)


def test_a_streak_broken_by_an_agreeing_probe_is_no_longer_suspect() -> None:
    status = fold([False, False, True], start=UP_TARGET, first_second=10)
    assert status.state == UP
    assert suspicion_of(status) == Suspicion(suspect=False, streak=1, threshold=2, verdict_by=None)


@pytest.mark.parametrize("outcomes", [[False], [False, False], [True], [True, False], [False, True]])
def test_an_unknown_target_is_never_suspect_but_counts_its_streak(outcomes: list[bool]) -> None:
    status = fold(outcomes)
    assert status.state == UNKNOWN
    found = suspicion_of(status)
    assert not found.suspect and found.verdict_by is None
    assert found.streak == (1 if len(set(outcomes)) == 2 else len(outcomes))
    assert found.threshold == (THRESHOLDS.success if outcomes[-1] else THRESHOLDS.failure)


def test_a_failure_threshold_of_one_decides_at_once_without_suspicion() -> None:
    thresholds = Thresholds(failure=1, success=1)
    status = fold([True, False], thresholds)
    assert status.state == DOWN
    assert not suspicion_of(status, thresholds).suspect


def test_a_degraded_target_that_fails_is_suspect_and_a_slow_one_is_not() -> None:
    thresholds = Thresholds(failure=2, success=2, degraded_latency_ms=100)
    status = TargetStatus()
    for second in range(1, 4):
        status, _ = observe(status, probe(True, second, latency_ms=900), thresholds)
    assert status.state == UP and status.degraded
    assert not suspicion_of(status, thresholds).suspect, "slow but up: degraded, not a change to come"
    failed, _ = observe(status, probe(False, 4), thresholds)
    assert failed.degraded, "a failed probe leaves degraded alone"
    assert suspicion_of(failed, thresholds) == Suspicion(
        suspect=True, streak=1, threshold=2, verdict_by=T0 + timedelta(seconds=4) + STEP
    )


def test_counters_reset_for_a_changed_endpoint_end_the_suspicion() -> None:
    status = reset_counters(fold([False], start=UP_TARGET, first_second=10))
    assert status.state == UP and status.last is not None and not status.last.ok
    assert suspicion_of(status) == Suspicion(suspect=False, streak=0, threshold=3, verdict_by=None)
    assert not confirming(status), "the next regular probe starts a streak, if there is one"


def test_a_recent_restart_resumes_a_suspicion_as_it_was() -> None:
    saved = fold([False], start=UP_TARGET, first_second=10)
    resumed = resume(saved, now=T0 + timedelta(seconds=20), interval_s=5.0, thresholds=THRESHOLDS)
    assert suspicion_of(resumed) == suspicion_of(saved)
    assert suspicion_of(resumed).suspect
    after = fold([False], start=resumed, first_second=25)
    assert suspicion_of(after) == Suspicion(suspect=True, streak=2, threshold=3,
                                            verdict_by=T0 + timedelta(seconds=25) + STEP)


def test_an_old_restart_starts_from_zero_and_fresh_probes_count_again() -> None:
    saved = fold([False], start=UP_TARGET, first_second=10)
    resumed = resume(saved, now=T0 + timedelta(hours=1), interval_s=5.0, thresholds=THRESHOLDS)
    assert resumed.unconfirmed and resumed.state == UP
    assert not suspicion_of(resumed).suspect, "the old probe is history, not a streak"
    fresh = fold([False], start=resumed, first_second=3600)
    assert suspicion_of(fresh).suspect and suspicion_of(fresh).streak == 1


def test_a_streak_already_at_a_lowered_threshold_still_waits_for_one_more_probe() -> None:
    status = fold([False, False], start=UP_TARGET, first_second=10)  # 2 of 3
    found = suspicion_of(status, Thresholds(failure=2, success=2))  # the threshold lowered meanwhile
    assert found.suspect
    assert found.verdict_by == T0 + timedelta(seconds=11) + STEP


outcome_lists = st.lists(st.booleans(), min_size=1, max_size=30)
threshold_values = st.integers(min_value=1, max_value=5)


@FAST
@given(outcomes=outcome_lists, failure=threshold_values, success=threshold_values)
def test_suspect_exactly_when_the_latest_probe_disagrees_with_a_decided_state(
    outcomes: list[bool], failure: int, success: int
) -> None:
    thresholds = Thresholds(failure=failure, success=success)
    status = fold(outcomes, thresholds)
    found = suspicion_of(status, thresholds)
    disagrees = status.state == (DOWN if outcomes[-1] else UP)
    assert found.suspect == disagrees == is_suspect(status)
    assert found.streak == streak(status) >= 1
    assert found.threshold == (success if outcomes[-1] else failure)
    assert (found.verdict_by is not None) == found.suspect
    if found.suspect:
        assert found.streak < found.threshold


@FAST
@given(
    outcomes=outcome_lists,
    failure=threshold_values,
    success=threshold_values,
    gaps=st.lists(st.floats(min_value=0.001, max_value=1.0), min_size=5, max_size=5),
)
def test_verdict_by_is_a_tight_upper_bound_when_every_retry_keeps_its_outcome(
    outcomes: list[bool], failure: int, success: int, gaps: list[float]
) -> None:
    """Retries at most a retry interval plus a timeout apart (the pace :func:`due_after_probe` keeps) decide
    the change by ``verdict_by``; retries exactly that far apart decide it exactly then."""
    thresholds = Thresholds(failure=failure, success=success)
    status = fold(outcomes, thresholds)
    found = suspicion_of(status, thresholds)
    if not found.suspect:
        return
    assert status.last is not None and found.verdict_by is not None
    ok = status.last.ok
    for share, slowest in ((gaps, False), ([1.0] * len(gaps), True)):  # share of the longest gap: any, the slowest
        current, finished, changed_at = status, status.last.finished_at, None
        for fraction in share:
            finished += STEP * fraction
            current, transition = observe(current, ProbeResult(ok, "x", finished), thresholds)
            if transition is not None:
                changed_at = transition.at
                break
        assert changed_at is not None and changed_at <= found.verdict_by
        if slowest:
            assert changed_at == found.verdict_by, "not a day later: exactly the slowest allowed pace"


# --- the retry pace ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (TargetStatus(), False),
        (fold([False]), True),  # unknown: not decided yet
        (fold([True, False]), True),
        (UP_TARGET, False),
        (fold([False], start=UP_TARGET, first_second=10), True),
        (fold([False, False, False], start=UP_TARGET, first_second=10), False),  # decided: down
        (DOWN_TARGET, False),
        (fold([True], start=DOWN_TARGET, first_second=10), True),
        (fold([True, False], start=UP_TARGET, first_second=10), True),
        (fold([False, True], start=UP_TARGET, first_second=10), False),  # the streak broke
    ],
)
def test_confirming_while_a_streak_disagrees_or_the_state_is_undecided(status: TargetStatus, expected: bool) -> None:
    assert confirming(status) is expected


def test_an_unconfirmed_state_is_confirmed_at_the_retry_pace() -> None:
    resumed = resume(UP_TARGET, now=T0 + timedelta(hours=1), interval_s=5.0, thresholds=THRESHOLDS)
    fresh = fold([True], start=resumed, first_second=3600)
    assert fresh.unconfirmed and confirming(fresh)
    confirmed = fold([True], start=fresh, first_second=3601)
    assert not confirmed.unconfirmed and not confirming(confirmed)


def test_a_confirming_target_is_next_probed_a_retry_interval_after_its_probe_finished() -> None:
    suspect = fold([False], start=UP_TARGET, first_second=10)
    assert due_after_probe(suspect, finished=100.3, regular_due=105.0, retry_interval_s=1.0) == 101.3


def test_the_regular_slot_wins_when_it_comes_sooner() -> None:
    suspect = fold([False], start=UP_TARGET, first_second=10)
    assert due_after_probe(suspect, finished=104.5, regular_due=105.0, retry_interval_s=1.0) == 105.0


@pytest.mark.parametrize("status", [UP_TARGET, DOWN_TARGET, fold([False, True], start=UP_TARGET, first_second=10)])
def test_a_settled_target_keeps_its_regular_slot(status: TargetStatus) -> None:
    assert due_after_probe(status, finished=100.3, regular_due=105.0, retry_interval_s=1.0) == 105.0


def test_an_outage_is_confirmed_after_one_interval_and_the_retries() -> None:
    """interval 5 s, retry 1 s, probes taking 0.1 s, threshold 3: the regular probe, then two retries."""
    interval, retry, took = 5.0, 1.0, 0.1
    status, regular, start, starts = UP_TARGET, 100.0, 100.0, []
    while status.state == UP:
        starts.append(start)
        finished = start + took
        status, _ = observe(status, probe(False, finished), THRESHOLDS)
        regular = regular + interval if regular <= start else regular
        start = due_after_probe(status, finished=finished, regular_due=regular, retry_interval_s=retry)
    assert starts == pytest.approx([100.0, 101.1, 102.2])
    assert start == 105.0, "decided: back to the regular slot, on the same phase"
