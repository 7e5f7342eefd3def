"""Unit tests of the detector's time decisions: schedule spread, next slot, certificate warnings, coalescing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.detector.domain import (
    Transition,
    coalesce,
    first_due,
    next_due,
    phase,
)
from shared.certificates import cert_warning, cert_warning_crossed
from shared.events import ComponentState

UP = ComponentState.UP
DOWN = ComponentState.DOWN
UNKNOWN = ComponentState.UNKNOWN
NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
FAST = settings(max_examples=300, deadline=None, database=None)


# --- spread -------------------------------------------------------------------------------------


def test_phase_is_stable_and_within_the_interval() -> None:
    assert phase("eo:LU12345678901234") == phase("eo:LU12345678901234")
    assert 0 <= phase("x") < 1


def test_five_thousand_targets_spread_evenly_over_the_interval() -> None:
    interval = 10.0
    dues = [first_due(target_id=f"eo:LU{i:015d}", now=100.0, interval_s=interval) for i in range(5000)]
    assert all(100.0 <= d < 100.0 + interval for d in dues)
    per_second = [0] * 10
    for d in dues:
        per_second[int(d - 100.0)] += 1
    # 500 expected per second: no second gets a herd, none is empty.
    assert max(per_second) < 600
    assert min(per_second) > 400


@FAST
@given(
    due=st.floats(min_value=0, max_value=1e6),
    late=st.floats(min_value=0, max_value=1e4),
    interval=st.floats(min_value=0.05, max_value=600),
)
def test_next_due_is_in_the_future_on_the_same_phase_without_catching_up(
    due: float, late: float, interval: float
) -> None:
    now = due + late
    following = next_due(due=due, now=now, interval_s=interval)
    assert following > now
    assert following <= now + interval * 1.000001 + 1e-6, "never more than one interval ahead"
    slots = (following - due) / interval
    assert abs(slots - round(slots)) < 1e-6, "stays on the target's phase"


def test_next_due_on_time_is_one_interval_later() -> None:
    assert next_due(due=100.0, now=100.0, interval_s=5.0) == 105.0
    assert next_due(due=100.0, now=104.9, interval_s=5.0) == 105.0


def test_next_due_skips_missed_slots() -> None:
    assert next_due(due=100.0, now=112.0, interval_s=5.0) == 115.0


# --- certificates -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "level"),
    [
        (timedelta(days=90), None),
        (timedelta(days=30, seconds=1), None),
        (timedelta(days=30), 30),
        (timedelta(days=20), 30),
        (timedelta(days=14), 14),
        (timedelta(days=8), 14),
        (timedelta(days=7), 7),
        (timedelta(hours=1), 7),
        (timedelta(0), 0),
        (timedelta(days=-3), 0),
    ],
)
def test_cert_warning_levels(left: timedelta, level: int | None) -> None:
    assert cert_warning(NOW + left, now=NOW) == level


def test_cert_warning_without_a_certificate_and_with_custom_levels() -> None:
    assert cert_warning(None, now=NOW) is None
    assert cert_warning(NOW + timedelta(days=50), now=NOW, levels=[60, 3]) == 60


@pytest.mark.parametrize(
    ("previous", "current", "crossed"),
    [
        (None, 30, True), (30, 30, False), (30, 14, True), (14, 30, False),
        (7, 0, True), (7, None, False), (None, None, False),
    ],
)
def test_each_warning_level_is_crossed_once(previous: int | None, current: int | None, crossed: bool) -> None:
    assert cert_warning_crossed(previous, current) is crossed


# --- coalescing unpublished changes -------------------------------------------------------------


def t(previous: ComponentState, current: ComponentState, minute: int) -> Transition:
    return Transition(previous=previous, current=current, at=NOW + timedelta(minutes=minute))


def test_down_then_up_while_unpublished_cancels_out() -> None:
    assert coalesce(t(UP, DOWN, 1), t(DOWN, UP, 2)) is None


def test_changes_chain_from_what_consumers_saw_to_the_latest_state() -> None:
    assert coalesce(t(UNKNOWN, UP, 1), t(UP, DOWN, 2)) == t(UNKNOWN, DOWN, 2)


def test_nothing_pending_keeps_the_other_side() -> None:
    assert coalesce(None, t(UP, DOWN, 1)) == t(UP, DOWN, 1)
    assert coalesce(t(UP, DOWN, 1), None) == t(UP, DOWN, 1)
    assert coalesce(None, None) is None


states = st.sampled_from([UP, DOWN])


@FAST
@given(start=st.sampled_from([UP, DOWN, UNKNOWN]), path=st.lists(states, min_size=1, max_size=12))
def test_folding_any_chain_tells_consumers_exactly_the_net_change(
    start: ComponentState, path: list[ComponentState]
) -> None:
    chain: list[Transition] = []
    previous = start
    for minute, state in enumerate(path):
        if state != previous:
            chain.append(t(previous, state, minute))
            previous = state
    folded: Transition | None = None
    for transition in chain:
        folded = coalesce(folded, transition)
    if previous == start:
        assert folded is None
    else:
        assert folded is not None
        assert (folded.previous, folded.current, folded.at) == (start, previous, chain[-1].at)
