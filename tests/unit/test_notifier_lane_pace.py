"""A lane's buffer follows its host's pace: about LANE_BUFFER_S of the deliveries it did per second, between
its floor and LANE_BUFFER_MAX, learnt too by a lane that runs empty within its first second (``_Lane.pace``,
``_Lane.ended`` in ``services/notifier/dispatch.py``)."""

from __future__ import annotations

from services.notifier.dispatch import LANE_BUFFER_MAX, LANE_BUFFER_S, LANE_PACE_MIN_S, _Lane


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


def test_a_lane_that_runs_empty_within_its_first_second_still_learns_its_host_s_pace() -> None:
    lane = _lane()
    lane.done = 1000
    lane.ended(100.25)  # its 1,000 deliveries done in a quarter of a second: 4,000 a second
    assert lane.buffer == min(LANE_BUFFER_MAX, int(1000 / 0.25 * LANE_BUFFER_S))


def test_a_few_deliveries_in_a_few_milliseconds_count_over_the_shortest_moment() -> None:
    lane = _lane()
    lane.done = 300
    lane.ended(100.001)  # 300 in a millisecond would say 300,000 a second
    assert lane.buffer == max(1000, int(300 / LANE_PACE_MIN_S * LANE_BUFFER_S))


def test_a_lane_that_ran_out_of_work_keeps_the_buffer_its_pace_gave_it() -> None:
    lane = _lane()
    lane.done = 4000
    lane.pace(101.0)
    assert lane.buffer == 8000
    lane.done = 10  # then its last few deliveries, and no more work
    lane.ended(101.5)
    assert lane.buffer == 8000


def test_a_lane_that_lived_longer_than_a_second_is_paced_over_its_last_stretch_when_it_ends() -> None:
    lane = _lane()
    lane.done = 3000
    lane.ended(102.0)  # 1,500 a second over two seconds
    assert lane.buffer == int(1500 * LANE_BUFFER_S)


def test_a_lane_s_slow_last_stretch_before_it_ends_never_shrinks_its_buffer() -> None:
    lane = _lane()
    lane.done = 4000
    lane.pace(101.0)
    lane.done = 50  # then a second and a half of a last few deliveries, for want of work
    lane.ended(102.5)
    assert lane.buffer == 8000


def test_a_lane_is_topped_up_while_more_than_half_its_buffer_waits() -> None:
    lane = _lane()
    lane.queue.extend([None] * 501)  # type: ignore[list-item]
    assert lane.topped_up
    lane.queue.pop()
    assert not lane.topped_up  # half empty: claimed for again
