"""Unit tests of the detector's per-target state machine (services/detector/domain.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.detector.domain import ProbeResult, TargetStatus, Thresholds, Transition, observe
from shared.events import ComponentState

UP = ComponentState.UP
DOWN = ComponentState.DOWN
UNKNOWN = ComponentState.UNKNOWN

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
FAST = settings(max_examples=300, deadline=None, database=None)


def at(i: int) -> datetime:
    """The finish time of the i-th probe (1-based), distinct per probe."""
    return T0 + timedelta(seconds=5 * i)


def probe(ok: bool, i: int) -> ProbeResult:
    return ProbeResult(ok=ok, reason="ok" if ok else "timeout", finished_at=at(i), latency_ms=12.5 if ok else None)


@dataclass(frozen=True)
class Step:
    status: TargetStatus
    transition: Transition | None


def run(outcomes: Sequence[bool], thresholds: Thresholds, start: TargetStatus | None = None) -> list[Step]:
    """Fold a sequence of probe outcomes (True = ok) into a status; probe i finishes at ``at(i)``."""
    status = start if start is not None else TargetStatus()
    steps: list[Step] = []
    for i, ok in enumerate(outcomes, start=1):
        status, transition = observe(status, probe(ok, i), thresholds)
        steps.append(Step(status, transition))
    return steps


# --- Thresholds -------------------------------------------------------------------------------


def test_default_thresholds_are_three_failures_and_two_successes() -> None:
    assert Thresholds() == Thresholds(failure=3, success=2)


@pytest.mark.parametrize(("failure", "success"), [(0, 2), (3, 0), (-1, 1), (0, 0)])
def test_thresholds_below_one_are_rejected(failure: int, success: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Thresholds(failure=failure, success=success)


def test_initial_status_is_unknown_without_since() -> None:
    status = TargetStatus()
    assert status.state == UNKNOWN
    assert status.since is None
    assert (status.consecutive_failures, status.consecutive_successes) == (0, 0)


# --- table-driven transitions -----------------------------------------------------------------


@pytest.mark.parametrize("failure", [1, 2, 3, 4, 5])
def test_unknown_goes_down_after_exactly_failure_threshold_failures(failure: int) -> None:
    steps = run([False] * failure, Thresholds(failure=failure, success=2))
    for step in steps[:-1]:
        assert step.status.state == UNKNOWN
        assert step.transition is None
        assert step.status.since is None
    last = steps[-1]
    assert last.status.state == DOWN
    assert last.transition == Transition(previous=UNKNOWN, current=DOWN, at=at(failure))
    assert last.status.since == at(failure)
    assert last.status.consecutive_failures == failure


@pytest.mark.parametrize("success", [1, 2, 3, 4])
def test_unknown_goes_up_after_exactly_success_threshold_successes(success: int) -> None:
    steps = run([True] * success, Thresholds(failure=3, success=success))
    for step in steps[:-1]:
        assert step.status.state == UNKNOWN
        assert step.transition is None
    last = steps[-1]
    assert last.status.state == UP
    assert last.transition == Transition(previous=UNKNOWN, current=UP, at=at(success))
    assert last.status.since == at(success)


@pytest.mark.parametrize(
    ("outcomes", "thresholds", "expected_states", "transition_at"),
    [
        # default thresholds: down after 3 failures, up after 2 successes
        ([False, False, False], Thresholds(), [UNKNOWN, UNKNOWN, DOWN], {3: (UNKNOWN, DOWN)}),
        ([True, True], Thresholds(), [UNKNOWN, UP], {2: (UNKNOWN, UP)}),
        # down -> up: two successes after an established outage
        (
            [False, False, False, True, True],
            Thresholds(),
            [UNKNOWN, UNKNOWN, DOWN, DOWN, UP],
            {3: (UNKNOWN, DOWN), 5: (DOWN, UP)},
        ),
        # up -> down: three failures after being up
        (
            [True, True, False, False, False],
            Thresholds(),
            [UNKNOWN, UP, UP, UP, DOWN],
            {2: (UNKNOWN, UP), 5: (UP, DOWN)},
        ),
        # a success in the middle resets the failure counter: 2 + 2 failures never reach 3
        (
            [False, False, True, False, False],
            Thresholds(),
            [UNKNOWN] * 5,
            {},
        ),
        # a failure in the middle resets the success counter while down: stays down
        (
            [False, False, False, True, False, True],
            Thresholds(),
            [UNKNOWN, UNKNOWN, DOWN, DOWN, DOWN, DOWN],
            {3: (UNKNOWN, DOWN)},
        ),
        # more failures while down: no new transition
        (
            [False] * 6,
            Thresholds(),
            [UNKNOWN, UNKNOWN, DOWN, DOWN, DOWN, DOWN],
            {3: (UNKNOWN, DOWN)},
        ),
        # threshold 1 on both sides follows every probe
        (
            [True, False, True, False],
            Thresholds(failure=1, success=1),
            [UP, DOWN, UP, DOWN],
            {1: (UNKNOWN, UP), 2: (UP, DOWN), 3: (DOWN, UP), 4: (UP, DOWN)},
        ),
        # asymmetric thresholds: 1 failure downs it, 3 successes bring it back
        (
            [False, True, True, True, False],
            Thresholds(failure=1, success=3),
            [DOWN, DOWN, DOWN, UP, DOWN],
            {1: (UNKNOWN, DOWN), 4: (DOWN, UP), 5: (UP, DOWN)},
        ),
    ],
)
def test_transition_table(
    outcomes: list[bool],
    thresholds: Thresholds,
    expected_states: list[ComponentState],
    transition_at: dict[int, tuple[ComponentState, ComponentState]],
) -> None:
    steps = run(outcomes, thresholds)
    assert [s.status.state for s in steps] == expected_states
    for i, step in enumerate(steps, start=1):
        if i in transition_at:
            previous, current = transition_at[i]
            assert step.transition == Transition(previous=previous, current=current, at=at(i))
            assert step.status.since == at(i)
        else:
            assert step.transition is None


def test_since_is_kept_while_the_state_does_not_change() -> None:
    steps = run([False, False, False, False, True, False, False], Thresholds())
    assert steps[2].status.since == at(3)
    assert all(s.status.since == at(3) for s in steps[2:])


def test_counters_reset_on_the_opposite_outcome() -> None:
    steps = run([False, False, True, True, True, False], Thresholds(failure=3, success=5))
    assert (steps[1].status.consecutive_failures, steps[1].status.consecutive_successes) == (2, 0)
    assert (steps[2].status.consecutive_failures, steps[2].status.consecutive_successes) == (0, 1)
    assert (steps[4].status.consecutive_failures, steps[4].status.consecutive_successes) == (0, 3)
    assert (steps[5].status.consecutive_failures, steps[5].status.consecutive_successes) == (1, 0)


def test_last_is_always_the_latest_probe_result() -> None:
    thresholds = Thresholds()
    status = TargetStatus()
    for i, ok in enumerate([True, False, True, True, False], start=1):
        result = probe(ok, i)
        status, _ = observe(status, result, thresholds)
        assert status.last == result


def test_observe_does_not_mutate_the_given_status() -> None:
    before = TargetStatus()
    after, _ = observe(before, probe(True, 1), Thresholds(success=1))
    assert before == TargetStatus()
    assert after.state == UP


def test_down_to_up_from_an_explicit_down_status() -> None:
    start = TargetStatus(state=DOWN, since=T0 - timedelta(hours=1), consecutive_failures=9)
    steps = run([True, True], Thresholds(), start=start)
    assert steps[0].transition is None
    assert steps[0].status.since == T0 - timedelta(hours=1)
    assert steps[1].transition == Transition(previous=DOWN, current=UP, at=at(2))
    assert steps[1].status.since == at(2)
    assert steps[1].status.consecutive_failures == 0


# --- properties -------------------------------------------------------------------------------


def reference_state(outcomes: Sequence[bool], thresholds: Thresholds) -> tuple[ComponentState, int | None]:
    """The expected (state, index of the deciding probe) after a sequence, computed from runs.

    The sequence is split into maximal runs of identical outcomes; a run "qualifies" once it is at least
    as long as the threshold of its kind. The state is that of the last qualifying run (unknown if none);
    ``since`` is the probe at which the state was last *entered*, i.e. where the first qualifying run of
    the current state, after a qualifying run of the other state, reached its threshold.
    """
    runs: list[tuple[bool, int, int]] = []  # (ok, start index 1-based, length)
    for i, ok in enumerate(outcomes, start=1):
        if runs and runs[-1][0] == ok:
            runs[-1] = (ok, runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((ok, i, 1))
    state = UNKNOWN
    since: int | None = None
    for ok, start, length in runs:
        needed = thresholds.success if ok else thresholds.failure
        if length >= needed:
            new_state = UP if ok else DOWN
            if new_state != state:
                state = new_state
                since = start + needed - 1
    return state, since


outcome_lists = st.lists(st.booleans(), max_size=40)
threshold_values = st.integers(min_value=1, max_value=5)


@FAST
@given(outcomes=outcome_lists, failure=threshold_values, success=threshold_values)
def test_state_matches_the_reference_model(outcomes: list[bool], failure: int, success: int) -> None:
    thresholds = Thresholds(failure=failure, success=success)
    steps = run(outcomes, thresholds)
    for n in range(1, len(outcomes) + 1):
        expected_state, expected_since = reference_state(outcomes[:n], thresholds)
        status = steps[n - 1].status
        assert status.state == expected_state
        assert status.since == (at(expected_since) if expected_since is not None else None)


@FAST
@given(outcomes=outcome_lists, failure=threshold_values, success=threshold_values)
def test_counters_equal_the_length_of_the_trailing_run(outcomes: list[bool], failure: int, success: int) -> None:
    steps = run(outcomes, Thresholds(failure=failure, success=success))
    if not outcomes:
        return
    last_ok = outcomes[-1]
    trailing = len(outcomes) - next((i + 1 for i in range(len(outcomes) - 1, -1, -1) if outcomes[i] != last_ok), 0)
    status = steps[-1].status
    if last_ok:
        assert (status.consecutive_successes, status.consecutive_failures) == (trailing, 0)
    else:
        assert (status.consecutive_failures, status.consecutive_successes) == (trailing, 0)


@FAST
@given(
    establish_down=st.booleans(),
    first_ok=st.booleans(),
    length=st.integers(min_value=1, max_value=40),
    failure=st.integers(min_value=2, max_value=6),
    success=st.integers(min_value=2, max_value=6),
)
def test_alternating_outcomes_never_change_an_established_state(
    establish_down: bool, first_ok: bool, length: int, failure: int, success: int
) -> None:
    thresholds = Thresholds(failure=failure, success=success)
    prefix = [False] * failure if establish_down else [True] * success
    established = run(prefix, thresholds)[-1].status
    assert established.state == (DOWN if establish_down else UP)

    alternating = [first_ok if i % 2 == 0 else not first_ok for i in range(length)]
    status = established
    for i, ok in enumerate(alternating, start=len(prefix) + 1):
        status, transition = observe(status, probe(ok, i), thresholds)
        assert transition is None
        assert status.state == established.state
        assert status.since == established.since


@FAST
@given(
    length=st.integers(min_value=0, max_value=40),
    first_ok=st.booleans(),
    failure=st.integers(min_value=2, max_value=6),
    success=st.integers(min_value=2, max_value=6),
)
def test_alternating_outcomes_from_unknown_never_decide(
    length: int, first_ok: bool, failure: int, success: int
) -> None:
    alternating = [first_ok if i % 2 == 0 else not first_ok for i in range(length)]
    steps = run(alternating, Thresholds(failure=failure, success=success))
    assert all(s.status.state == UNKNOWN and s.transition is None for s in steps)


@FAST
@given(outcomes=outcome_lists, failure=threshold_values, success=threshold_values)
def test_each_transition_describes_the_state_change_it_made(outcomes: list[bool], failure: int, success: int) -> None:
    thresholds = Thresholds(failure=failure, success=success)
    status = TargetStatus()
    for i, ok in enumerate(outcomes, start=1):
        result = probe(ok, i)
        new_status, transition = observe(status, result, thresholds)
        if new_status.state == status.state:
            assert transition is None
            assert new_status.since == status.since
        else:
            assert transition is not None
            assert transition.previous == status.state
            assert transition.current == new_status.state
            assert transition.at == result.finished_at == new_status.since
            assert transition.current != UNKNOWN  # probes only ever decide up or down
            assert transition.current == (UP if ok else DOWN)
        status = new_status
