"""A lane's buffer follows its host's pace: about LANE_BUFFER_S of the deliveries it did per second, between
its floor and LANE_BUFFER_MAX (``services/notifier/dispatch.py``, ``_Lane.pace``)."""

from __future__ import annotations

from services.notifier.dispatch import LANE_BUFFER_MAX, LANE_BUFFER_S, _Lane


def _lane(floor: int = 1000) -> _Lane:
    return _Lane(name="hooks.example:443", limit=50, floor=floor, buffer=floor, paced_at=100.0)


def test_a_fast_host_gets_a_deeper_buffer_and_a_hanging_one_goes_back_to_the_floor() -> None:
    lane = _lane()
    lane.done = 3000
    lane.pace(101.0)  # 3,000 deliveries in one second
    assert lane.buffer == int(3000 * LANE_BUFFER_S)
    assert (lane.done, lane.paced_at) == (0, 101.0)
    lane.pace(103.0)  # two seconds without one delivery done: the host hangs
    assert lane.buffer == 1000


def test_the_buffer_is_at_most_lane_buffer_max_and_is_paced_once_a_second_at_most() -> None:
    lane = _lane()
    lane.done = 100_000
    lane.pace(100.5)  # half a second: not yet
    assert (lane.buffer, lane.done) == (1000, 100_000)
    lane.pace(101.0)
    assert lane.buffer == LANE_BUFFER_MAX


def test_a_slow_host_keeps_its_floor() -> None:
    lane = _lane(floor=1600)
    lane.done = 10
    lane.pace(102.0)
    assert lane.buffer == 1600
