"""Unit tests of ``degraded`` in the detector's state machine: up, but slower than the latency bound."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.detector.domain import ProbeResult, TargetStatus, Thresholds, observe, reset_counters
from shared.events import ComponentState

UP = ComponentState.UP
DOWN = ComponentState.DOWN
UNKNOWN = ComponentState.UNKNOWN
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
FAST = settings(max_examples=300, deadline=None, database=None)
BOUND = 500.0

# A probe outcome: ("fast" | "slow" | "fail")
Outcome = str


def result(outcome: Outcome, i: int) -> ProbeResult:
    at = T0 + timedelta(seconds=5 * i)
    if outcome == "fail":
        return ProbeResult(ok=False, reason="timeout", finished_at=at, latency_ms=2000.0)
    return ProbeResult(ok=True, reason="ok", finished_at=at, latency_ms=900.0 if outcome == "slow" else 40.0)


def run(outcomes: Sequence[Outcome], thresholds: Thresholds) -> list[TargetStatus]:
    status = TargetStatus()
    out: list[TargetStatus] = []
    for i, outcome in enumerate(outcomes, start=1):
        status, _ = observe(status, result(outcome, i), thresholds)
        out.append(status)
    return out


def test_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Thresholds(degraded_latency_ms=0)
    assert Thresholds(degraded_latency_ms=1).degraded_latency_ms == 1


def test_degraded_after_failure_threshold_slow_probes_and_cleared_after_success_threshold_fast_ones() -> None:
    thresholds = Thresholds(failure=3, success=2, degraded_latency_ms=BOUND)
    steps = run(["fast", "fast", "slow", "slow", "slow", "fast", "fast"], thresholds)
    assert [s.state for s in steps] == [UNKNOWN, UP, UP, UP, UP, UP, UP]
    assert [s.degraded for s in steps] == [False, False, False, False, True, True, False]


def test_a_single_slow_probe_is_not_degraded_and_a_single_fast_one_does_not_clear_it() -> None:
    thresholds = Thresholds(failure=3, success=2, degraded_latency_ms=BOUND)
    steps = run(["fast", "fast", "slow", "fast", "slow", "slow", "slow", "fast", "slow"], thresholds)
    assert [s.degraded for s in steps] == [False, False, False, False, False, False, True, True, True]


def test_without_a_bound_nothing_is_ever_degraded() -> None:
    steps = run(["slow"] * 10, Thresholds())
    assert not any(s.degraded for s in steps)
    assert steps[-1].state == UP


def test_a_down_target_is_never_degraded_and_failures_keep_the_speed_counters() -> None:
    thresholds = Thresholds(failure=2, success=2, degraded_latency_ms=BOUND)
    steps = run(["slow", "slow", "fail", "slow", "fail", "fail"], thresholds)
    assert steps[1].state == UP and steps[1].degraded
    assert steps[2].state == UP and steps[2].degraded, "one failure below the threshold keeps up and degraded"
    assert steps[3].consecutive_slow == 3
    assert steps[5].state == DOWN and not steps[5].degraded


def test_reset_counters_keeps_state_and_since() -> None:
    status = run(["fail", "fail", "fail"], Thresholds())[-1]
    reset = reset_counters(status)
    assert (reset.state, reset.since, reset.last) == (status.state, status.since, status.last)
    assert (reset.consecutive_failures, reset.consecutive_successes) == (0, 0)
    assert replace(reset, consecutive_failures=3) == status


outcomes = st.lists(st.sampled_from(["fast", "slow", "fail"]), max_size=40)
levels = st.integers(min_value=1, max_value=5)


@FAST
@given(outcomes=outcomes, failure=levels, success=levels)
def test_the_latency_bound_never_changes_the_state(outcomes: list[Outcome], failure: int, success: int) -> None:
    plain = run(outcomes, Thresholds(failure=failure, success=success))
    bounded = run(outcomes, Thresholds(failure=failure, success=success, degraded_latency_ms=BOUND))
    assert [(s.state, s.since) for s in plain] == [(s.state, s.since) for s in bounded]


@FAST
@given(outcomes=outcomes, failure=levels, success=levels)
def test_degraded_only_while_up_and_only_after_enough_slow_probes(
    outcomes: list[Outcome], failure: int, success: int
) -> None:
    steps = run(outcomes, Thresholds(failure=failure, success=success, degraded_latency_ms=BOUND))
    for n, status in enumerate(steps, start=1):
        if status.degraded:
            assert status.state == UP
            successes = [o for o in outcomes[:n] if o != "fail"]
            assert successes[-failure:] == ["slow"] * failure or status.consecutive_fast < success


@FAST
@given(outcomes=outcomes, failure=levels, success=levels)
def test_degraded_changes_only_at_a_threshold_or_a_state_change(
    outcomes: list[Outcome], failure: int, success: int
) -> None:
    thresholds = Thresholds(failure=failure, success=success, degraded_latency_ms=BOUND)
    previous = TargetStatus()
    for i, outcome in enumerate(outcomes, start=1):
        status, _ = observe(previous, result(outcome, i), thresholds)
        if status.degraded and not previous.degraded:
            assert status.consecutive_slow >= failure or previous.state != UP
        if previous.degraded and not status.degraded:
            assert status.consecutive_fast >= success or status.state != UP
        previous = status
