"""Unit tests of the latest-state buffer: one pending event per target, latest state after a broker outage."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from services.detector.domain import Transition
from services.detector.latest import LatestStates, note_superseded
from shared.events import AvailabilityData, CloudEvent, Component, ComponentState, EventType
from tests.clock import ManualClock, settle

UP = ComponentState.UP
DOWN = ComponentState.DOWN
UNKNOWN = ComponentState.UNKNOWN
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class World:
    """The targets' current states (what the event builder reads) and a broker that can be switched off."""

    states: dict[str, ComponentState] = field(default_factory=dict)
    broker_up: bool = True
    sent: list[CloudEvent[AvailabilityData]] = field(default_factory=list)
    attempts: int = 0

    def build(
        self, target_id: str, transition: Transition | None, superseded: int
    ) -> CloudEvent[AvailabilityData] | None:
        state = self.states.get(target_id)
        if state is None:
            return None
        return CloudEvent[AvailabilityData](
            source="/tests",
            type=EventType.AVAILABILITY_CHANGED if transition else EventType.AVAILABILITY_HEARTBEAT,
            subject=target_id,
            data=AvailabilityData(
                target_id=target_id, component=Component.ADA_B2G, detector_instance="t", state=state,
                previous_state=transition.previous if transition else None, since=T0, observed_at=T0,
                probe="http", ok=state == UP, reason="ok" if state == UP else "refused",
                detail=note_superseded(None, superseded),
            ),
        )

    async def send(self, target_id: str, event: CloudEvent[AvailabilityData]) -> None:
        self.attempts += 1
        if not self.broker_up:
            raise ConnectionError("broker unreachable")
        self.sent.append(event)

    def latest(self, **kwargs: object) -> LatestStates:
        return LatestStates(build=self.build, send=self.send, **kwargs)  # type: ignore[arg-type]

    def summary(self) -> list[tuple[str, str, str | None, str]]:
        return [
            (e.data.target_id, e.type, e.data.previous_state and e.data.previous_state.value, e.data.state.value)
            for e in self.sent
        ]


def change(previous: ComponentState, current: ComponentState, minute: int = 0) -> Transition:
    return Transition(previous=previous, current=current, at=T0 + timedelta(minutes=minute))


async def test_a_change_is_published_once_as_a_changed_event() -> None:
    world = World(states={"a": DOWN})
    latest = world.latest()
    latest.changed("a", change(UP, DOWN))
    assert await latest.flush()
    assert world.summary() == [("a", EventType.AVAILABILITY_CHANGED, "up", "down")]
    assert len(latest) == 0
    assert await latest.flush()
    assert len(world.sent) == 1


async def test_a_heartbeat_does_not_replace_a_pending_change() -> None:
    world = World(states={"a": DOWN})
    latest = world.latest()
    latest.changed("a", change(UP, DOWN))
    latest.refresh("a")
    await latest.flush()
    assert world.summary() == [("a", EventType.AVAILABILITY_CHANGED, "up", "down")]


async def test_pending_is_bounded_by_the_number_of_targets() -> None:
    world = World(states={f"t{i}": UP for i in range(50)}, broker_up=False)
    latest = world.latest()
    for _round in range(20):
        for i in range(50):
            latest.refresh(f"t{i}")
        assert not await latest.flush()
    assert len(latest) == 50


async def test_after_an_outage_the_latest_state_of_every_target_is_published() -> None:
    world = World(states={"a": DOWN, "b": UP}, broker_up=False)
    latest = world.latest(batch_size=1)
    latest.changed("a", change(UP, DOWN, 1))
    latest.refresh("b")
    assert not await latest.flush()
    assert latest.last_error is not None and "broker unreachable" in latest.last_error
    world.broker_up = True
    while len(latest):
        assert await latest.flush()
    assert sorted(world.summary()) == [
        ("a", EventType.AVAILABILITY_CHANGED, "up", "down"),
        ("b", EventType.AVAILABILITY_HEARTBEAT, None, "up"),
    ]
    assert latest.last_error is None


async def test_down_and_up_during_an_outage_publish_the_latest_state_without_a_change() -> None:
    superseded: list[int] = []
    world = World(states={"a": UP}, broker_up=False)
    latest = world.latest(on_superseded=superseded.append)
    latest.changed("a", change(UP, DOWN, 1))
    assert not await latest.flush()
    latest.changed("a", change(DOWN, UP, 2))
    world.broker_up = True
    assert await latest.flush()
    assert world.summary() == [("a", EventType.AVAILABILITY_HEARTBEAT, None, "up")]
    assert world.sent[0].data.detail == "2 state change(s) superseded while the broker was unreachable"
    assert superseded == [2]


async def test_changes_during_an_outage_fold_into_the_net_change() -> None:
    world = World(states={"a": DOWN}, broker_up=False)
    latest = world.latest()
    latest.changed("a", change(UNKNOWN, UP, 1))
    latest.changed("a", change(UP, DOWN, 2))
    world.broker_up = True
    await latest.flush()
    assert world.summary() == [("a", EventType.AVAILABILITY_CHANGED, "unknown", "down")]
    assert "1 state change(s) superseded" in (world.sent[0].data.detail or "")


async def test_a_change_made_while_a_publication_fails_is_folded_after_it() -> None:
    world = World(states={"a": DOWN})
    gate = asyncio.Event()
    calls = 0

    async def send(target_id: str, event: CloudEvent[AvailabilityData]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # the first attempt hangs, then fails
            await gate.wait()
            raise ConnectionError("broker went away")
        await world.send(target_id, event)

    latest = LatestStates(build=world.build, send=send)
    latest.changed("a", change(UP, DOWN, 1))
    flushing = asyncio.create_task(latest.flush())
    await asyncio.sleep(0)
    world.states["a"] = UP
    latest.changed("a", change(DOWN, UP, 2))  # marked while the first attempt is in flight
    gate.set()
    assert not await flushing
    assert len(latest) == 1
    assert latest.pending("a") is None, "down then up, neither published: no change to tell"
    assert await latest.flush()
    assert world.summary() == [("a", EventType.AVAILABILITY_HEARTBEAT, None, "up")]


async def test_a_change_made_while_a_publication_succeeds_is_published_next() -> None:
    world = World(states={"a": DOWN})
    gate = asyncio.Event()

    async def send(target_id: str, event: CloudEvent[AvailabilityData]) -> None:
        await gate.wait()
        await world.send(target_id, event)

    latest = LatestStates(build=world.build, send=send)
    latest.changed("a", change(UP, DOWN, 1))
    flushing = asyncio.create_task(latest.flush())
    await asyncio.sleep(0)
    latest.changed("a", change(DOWN, UP, 2))
    gate.set()
    assert await flushing
    world.states["a"] = UP
    assert await latest.flush()
    assert world.summary() == [
        ("a", EventType.AVAILABILITY_CHANGED, "up", "down"),
        ("a", EventType.AVAILABILITY_CHANGED, "down", "up"),
    ]


async def test_a_target_that_is_gone_is_not_published() -> None:
    world = World(states={"a": UP})
    latest = world.latest()
    latest.refresh("a")
    latest.refresh("gone")
    latest.drop("a")
    latest.refresh("a")
    del world.states["a"]
    assert await latest.flush()
    assert world.sent == []


async def test_run_retries_until_the_broker_is_back() -> None:
    failures: list[BaseException] = []
    world = World(states={"a": DOWN}, broker_up=False)
    ticks = ManualClock()
    latest = world.latest(retry_initial_s=1.0, retry_max_s=4.0, on_failure=failures.append, clock=ticks)
    runner = asyncio.create_task(latest.run())
    try:
        latest.changed("a", change(UP, DOWN))
        await settle()
        assert world.attempts == 1
        # Backoff 1, 2, 4, 4 s: the fifth attempt 11 s after the first.
        await ticks.advance(10.9)
        assert world.attempts == 4
        await ticks.advance(0.1)
        assert world.attempts == 5
        world.broker_up = True
        await ticks.advance(4.0)
        assert world.sent
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
    assert world.summary() == [("a", EventType.AVAILABILITY_CHANGED, "up", "down")]
    assert len(failures) >= 3


def test_note_superseded() -> None:
    assert note_superseded("HTTP 200", 0) == "HTTP 200"
    assert note_superseded(None, 0) is None
    assert note_superseded("HTTP 200", 2) == "HTTP 200; 2 state change(s) superseded while the broker was unreachable"
