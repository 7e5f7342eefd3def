"""Unit tests of what a detector keeps across a restart: the resume rule (pure), the latest-state buffer's
unpublished changes, and the detector's side of saving (what is marked, what resumes, what is forgotten)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from services.detector.domain import (
    RESUME_WINDOWS,
    ProbeResult,
    TargetStatus,
    Thresholds,
    Transition,
    detection_window,
    observe,
    resume,
)
from services.detector.latest import LatestStates
from services.detector.metrics import DetectorMetrics
from services.detector.probes import Prober
from services.detector.service import Detector, SavedTarget
from services.detector.store import _SWEEP_LIMIT, TargetStore, WriteBehind
from services.detector.targets import Target, from_settings
from shared.config import DetectorSettings, TargetSettings
from shared.events import AvailabilityData, CloudEvent, Component, ComponentState, EoData, EventType
from tests.clock import ManualClock, settle

UP, DOWN, UNKNOWN = ComponentState.UP, ComponentState.DOWN, ComponentState.UNKNOWN
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
INTERVAL_S = 10.0
THRESHOLDS = Thresholds(failure=3, success=2)
WINDOW = RESUME_WINDOWS * detection_window(interval_s=INTERVAL_S, thresholds=THRESHOLDS)  # 60 s
EORI = "LU12345678901234"


def probe(ok: bool, second: float) -> ProbeResult:
    return ProbeResult(ok=ok, reason="ok" if ok else "refused", finished_at=T0 + timedelta(seconds=second),
                       latency_ms=10.0)


def run(results: list[ProbeResult], status: TargetStatus | None = None) -> TargetStatus:
    status = status or TargetStatus()
    for result in results:
        status, _ = observe(status, result, THRESHOLDS)
    return status


# --- the resume rule (pure) -----------------------------------------------------------------------


def test_the_window_is_twice_the_time_the_thresholds_take() -> None:
    assert timedelta(seconds=60) == WINDOW


def test_a_recent_state_resumes_as_it_was_counters_included() -> None:
    saved = run([probe(False, i) for i in range(5)])
    assert (saved.state, saved.consecutive_failures) == (DOWN, 5)
    assert resume(saved, now=saved.last.finished_at + WINDOW, interval_s=INTERVAL_S,  # type: ignore[union-attr]
                  thresholds=THRESHOLDS) == saved


def test_an_old_state_keeps_state_and_since_but_is_unconfirmed_and_counts_from_zero() -> None:
    saved = run([probe(True, 0), probe(True, 1), probe(False, 2), probe(False, 3)])  # up, a detection under way
    assert (saved.state, saved.since, saved.consecutive_failures) == (UP, T0 + timedelta(seconds=1), 2)
    now = T0 + timedelta(seconds=3) + WINDOW + timedelta(seconds=1)
    resumed = resume(saved, now=now, interval_s=INTERVAL_S, thresholds=THRESHOLDS)
    assert (resumed.state, resumed.since, resumed.last) == (UP, saved.since, saved.last)
    assert (resumed.consecutive_failures, resumed.consecutive_successes, resumed.unconfirmed) == (0, 0, True)


def test_an_old_unknown_state_asserts_nothing_and_needs_no_confirmation() -> None:
    saved = run([probe(False, 0)])
    resumed = resume(saved, now=T0 + timedelta(hours=1), interval_s=INTERVAL_S, thresholds=THRESHOLDS)
    assert (resumed.state, resumed.consecutive_failures, resumed.unconfirmed) == (UNKNOWN, 0, False)


def test_a_never_probed_state_resumes_as_a_new_target() -> None:
    assert resume(TargetStatus(consecutive_failures=2), now=T0, interval_s=1, thresholds=THRESHOLDS) == TargetStatus()


def test_an_unconfirmed_down_is_confirmed_by_threshold_failures_keeping_its_since() -> None:
    down = run([probe(False, i) for i in range(3)])
    status = resume(down, now=T0 + timedelta(hours=1), interval_s=INTERVAL_S, thresholds=THRESHOLDS)
    later = 3600
    for i in range(THRESHOLDS.failure):
        assert status.unconfirmed
        status, transition = observe(status, probe(False, later + i), THRESHOLDS)
        assert transition is None
    assert (status.state, status.since, status.unconfirmed) == (DOWN, down.since, False)


def test_an_unconfirmed_down_that_recovered_changes_as_usual() -> None:
    down = run([probe(False, i) for i in range(3)])
    status = resume(down, now=T0 + timedelta(hours=1), interval_s=INTERVAL_S, thresholds=THRESHOLDS)
    status, _ = observe(status, probe(True, 3600), THRESHOLDS)
    status, transition = observe(status, probe(True, 3601), THRESHOLDS)
    assert transition == Transition(DOWN, UP, T0 + timedelta(seconds=3601))
    assert (status.state, status.unconfirmed) == (UP, False)


def test_mixed_probes_leave_an_unconfirmed_state_unconfirmed() -> None:
    up = run([probe(True, 0), probe(True, 1)])
    status = resume(up, now=T0 + timedelta(hours=1), interval_s=INTERVAL_S, thresholds=THRESHOLDS)
    status = run([probe(True, 3600), probe(False, 3601), probe(True, 3602)], status)
    assert (status.state, status.unconfirmed) == (UP, True)


@settings(max_examples=200, deadline=None)
@given(
    before=st.lists(st.booleans(), max_size=12), after=st.lists(st.booleans(), max_size=12),
    gap=st.floats(min_value=0, max_value=60),
)
def test_a_restart_within_the_window_changes_no_decision(before: list[bool], after: list[bool], gap: float) -> None:
    """Property: stopping after ``before`` and resuming within the window decides exactly as never stopping."""
    first = [probe(ok, 10 * i) for i, ok in enumerate(before)]
    start = 10 * len(before) + gap
    second = [probe(ok, start + 10 * i) for i, ok in enumerate(after)]
    uninterrupted = run(first + second)
    saved = run(first)
    now = (saved.last.finished_at if saved.last else T0) + timedelta(seconds=gap)
    resumed = resume(saved, now=now, interval_s=INTERVAL_S, thresholds=THRESHOLDS)
    assert run(second, resumed) == uninterrupted


# --- the latest-state buffer's unpublished changes -------------------------------------------------------------


def _event(target_id: str, transition: Transition | None, _superseded: int) -> CloudEvent[AvailabilityData]:
    return CloudEvent[AvailabilityData](
        source="/tests", type=EventType.AVAILABILITY_CHANGED if transition else EventType.AVAILABILITY_HEARTBEAT,
        subject=target_id,
        data=AvailabilityData(
            target_id=target_id, component=Component.ADA_B2G, detector_instance="t", state=DOWN, since=T0,
            observed_at=T0, probe="http", ok=False, reason="refused",
        ),
    )


async def test_a_change_sent_but_not_acknowledged_is_still_unpublished() -> None:
    release = asyncio.Event()
    published: list[tuple[str, Transition | None, int]] = []

    async def send(_target_id: str, _event: CloudEvent[AvailabilityData]) -> None:
        await release.wait()

    latest = LatestStates(build=_event, send=send, on_published=lambda *args: published.append(args))
    change = Transition(UP, DOWN, T0)
    latest.changed("a", change)
    flushing = asyncio.create_task(latest.flush())
    await asyncio.sleep(0)
    assert len(latest) == 0, "taken by the flush"
    assert latest.unpublished("a") == (change, 0)
    release.set()
    assert await flushing
    assert latest.unpublished("a") == (None, 0)
    assert published == [("a", change, 0)]


async def test_a_cancelled_publication_stays_pending() -> None:
    async def send(_target_id: str, _event: CloudEvent[AvailabilityData]) -> None:
        await asyncio.Event().wait()

    latest = LatestStates(build=_event, send=send)
    latest.changed("a", Transition(UP, DOWN, T0))
    flushing = asyncio.create_task(latest.flush())
    await asyncio.sleep(0)
    flushing.cancel()
    await asyncio.gather(flushing, return_exceptions=True)
    assert len(latest) == 1
    assert latest.unpublished("a") == (Transition(UP, DOWN, T0), 0)


def test_a_restored_change_folds_with_a_newer_one() -> None:
    async def send(_target_id: str, _event: CloudEvent[AvailabilityData]) -> None:
        raise AssertionError("not sent here")

    latest = LatestStates(build=_event, send=send)
    latest.restore("a", Transition(UP, DOWN, T0), 1)
    latest.changed("a", Transition(DOWN, UP, T0 + timedelta(minutes=1)))
    assert latest.unpublished("a") == (None, 3), "down and up again: nothing to tell but three superseded changes"


# --- the detector's side of saving ---------------------------------------------------------------


class Broker:
    def __init__(self) -> None:
        self.up = True
        self.sent: list[CloudEvent[AvailabilityData]] = []

    async def send(self, _target_id: str, event: CloudEvent[AvailabilityData]) -> None:
        if not self.up:
            raise ConnectionError("broker unreachable")
        self.sent.append(event)

    def summary(self) -> list[tuple[str, str, str | None, datetime]]:
        return [(e.type, e.data.state.value, e.data.previous_state and e.data.previous_state.value, e.data.since)
                for e in self.sent]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make(broker: Broker, clock: Clock, *, ticks: ManualClock | None = None, **overrides: Any) -> Detector:
    values: dict[str, Any] = {"instance_id": "vp-1", "interval_s": INTERVAL_S, "failure_threshold": 3,
                              "success_threshold": 2}
    values.update(overrides)
    return Detector(settings=DetectorSettings(**values), prober=Prober(), send=broker.send,
                    metrics=DetectorMetrics.create(CollectorRegistry()), clock=clock, ticks=ticks)


def ada(detector: Detector, url: str = "https://b2g.lu/as4") -> Target:
    target = from_settings(TargetSettings(id="ada-as4", component="ada_b2g", probe="as4", url=url),
                           detector._settings)
    detector.put(target)
    return target


def restart(detector: Detector, broker: Broker, clock: Clock, *, url: str = "https://b2g.lu/as4",
            **overrides: Any) -> Detector:
    """What a restart keeps: everything that was saved (as if every change had been flushed)."""
    saved = [s for target_id in detector.targets if (s := detector.snapshot(target_id)) is not None]
    again = make(broker, clock, **overrides)
    again.resume_from(saved)
    ada(again, url)
    again.forget_unclaimed(registry=False)
    return again


async def test_every_probed_target_is_marked_for_saving_once_and_a_change_asks_for_it_at_once() -> None:
    broker, clock = Broker(), Clock(T0)
    detector = make(broker, clock)
    target = ada(detector)
    assert detector.take_changes() == ([], [])  # put, never probed: nothing to save yet
    detector.record(target, probe(False, 1))
    detector.record(target, probe(False, 2))
    assert not detector.save_now.is_set(), "counters only: with the next batch"
    [saved], forgotten = detector.take_changes()
    assert (saved.status.consecutive_failures, saved.unpublished, forgotten) == (2, None, [])
    assert detector.take_changes() == ([], [])
    detector.record(target, probe(False, 3))
    assert detector.save_now.is_set(), "a state change is saved at once"
    [saved], _ = detector.take_changes()
    assert saved.unpublished == Transition(UNKNOWN, DOWN, T0 + timedelta(seconds=3))


async def test_a_published_change_is_saved_again_without_it() -> None:
    broker, clock = Broker(), Clock(T0)
    detector = make(broker, clock)
    target = ada(detector)
    for i in range(3):
        detector.record(target, probe(False, i))
    detector.take_changes()
    detector.save_now.clear()
    assert await detector.latest.flush()
    assert detector.save_now.is_set()
    [saved], _ = detector.take_changes()
    assert saved.unpublished is None


async def test_a_failed_save_is_marked_again() -> None:
    broker, clock = Broker(), Clock(T0)
    detector = make(broker, clock)
    target = ada(detector)
    detector.record(target, probe(True, 1))
    saved, _ = detector.take_changes()
    detector.untake(saved, ["gone"])
    saved, forgotten = detector.take_changes()
    assert ([s.target_id for s in saved], forgotten) == (["ada-as4"], ["gone"])


async def test_a_restart_within_the_window_resumes_and_publishes_the_first_fresh_probe_at_once() -> None:
    broker, clock = Broker(), Clock(T0)
    detector = make(broker, clock)
    target = ada(detector)
    for i in range(5):
        detector.record(target, probe(False, i))
    await detector.latest.flush()
    clock.now = T0 + timedelta(seconds=30)
    again = restart(detector, broker, clock)
    status = again.statuses["ada-as4"]
    assert (status.state, status.since, status.consecutive_failures, status.unconfirmed) == (
        DOWN, T0 + timedelta(seconds=2), 5, False)
    again.record(again.targets["ada-as4"], probe(False, 30))
    await again.latest.flush()
    assert broker.summary()[1:] == [(EventType.AVAILABILITY_HEARTBEAT, "down", None, T0 + timedelta(seconds=2))]


async def test_an_unpublished_change_is_published_after_a_restart() -> None:
    broker, clock = Broker(), Clock(T0)
    broker.up = False
    detector = make(broker, clock)
    target = ada(detector)
    for i in range(3):
        detector.record(target, probe(False, i))
    assert not await detector.latest.flush()
    broker.up = True
    again = restart(detector, broker, clock)
    assert await again.latest.flush()
    assert broker.summary() == [(EventType.AVAILABILITY_CHANGED, "down", "unknown", T0 + timedelta(seconds=2))]


async def test_an_old_state_is_not_heartbeated_until_fresh_probes_confirm_it() -> None:
    broker, clock = Broker(), Clock(T0)
    detector = make(broker, clock)
    target = ada(detector)
    for i in range(3):
        detector.record(target, probe(False, i))
    await detector.latest.flush()
    clock.now = T0 + timedelta(hours=2)
    ticks = ManualClock()
    again = restart(detector, broker, clock, heartbeat_s=15, ticks=ticks)
    assert again.statuses["ada-as4"].unconfirmed
    heartbeat = asyncio.create_task(again.heartbeat_loop())
    await ticks.advance(45)  # three heartbeats
    heartbeat.cancel()
    assert not len(again.latest), "an unconfirmed state is not heartbeated"
    again.record(again.targets["ada-as4"], probe(False, 7200))
    again.record(again.targets["ada-as4"], probe(False, 7210))
    await again.latest.flush()
    assert len(broker.sent) == 1, "nothing published for the old state yet"
    again.record(again.targets["ada-as4"], probe(False, 7220))
    await again.latest.flush()
    assert broker.summary()[1:] == [(EventType.AVAILABILITY_HEARTBEAT, "down", None, T0 + timedelta(seconds=2))]


async def test_an_old_unpublished_change_waits_for_confirmation_and_folds_if_it_is_over() -> None:
    broker, clock = Broker(), Clock(T0)
    broker.up = False
    detector = make(broker, clock)
    target = ada(detector)
    for i in range(2):
        detector.record(target, probe(True, i))
    broker.up = True
    await detector.latest.flush()  # consumers know it up
    broker.up = False
    for i in range(2, 5):
        detector.record(target, probe(False, i))  # down, not published
    clock.now = T0 + timedelta(hours=2)
    broker.up = True
    again = restart(detector, broker, clock)
    assert await again.latest.flush()
    assert len(broker.sent) == 1, "held until confirmed"
    assert again.snapshot("ada-as4").unpublished == Transition(UP, DOWN, T0 + timedelta(seconds=4))  # type: ignore[union-attr]
    again.record(again.targets["ada-as4"], probe(True, 7200))
    again.record(again.targets["ada-as4"], probe(True, 7210))  # it came back meanwhile
    await again.latest.flush()
    [event] = broker.sent[1:]
    assert (event.type, event.data.state) == (EventType.AVAILABILITY_HEARTBEAT, UP)
    assert "superseded" in (event.data.detail or "")


async def test_a_saved_target_of_another_endpoint_keeps_its_state_and_counts_again() -> None:
    broker, clock = Broker(), Clock(T0)
    detector = make(broker, clock)
    target = ada(detector)
    for i in range(4):
        detector.record(target, probe(False, i))
    again = restart(detector, broker, clock, url="https://b2g-new.lu/as4")
    status = again.statuses["ada-as4"]
    assert (status.state, status.consecutive_failures) == (DOWN, 0)


async def test_saved_targets_no_longer_configured_or_registered_are_forgotten() -> None:
    broker, clock = Broker(), Clock(T0)
    status = run([probe(False, i) for i in range(3)])

    def saved(target_id: str, component: Component = Component.NTP) -> SavedTarget:
        return SavedTarget(target_id=target_id, component=component, probe="as4", url="https://x.lu/", status=status)

    detector = make(broker, clock)
    detector.resume_from([saved("ada-as4", Component.ADA_B2G), saved("old-ntp"), saved(f"eo:{EORI}"),
                          saved("eo:LU999")])
    ada(detector)
    detector.forget_unclaimed(registry=False)
    assert detector.take_changes()[1] == ["old-ntp"]
    detector.on_eo(EoData(eori=EORI, name="Trader", as4_endpoint="https://x.lu/"))
    assert detector.statuses[f"eo:{EORI}"].state == DOWN, "registered again: resumed"
    detector.retain_eos({EORI})
    assert detector.take_changes()[1] == ["eo:LU999"]
    detector.on_eo_removed(EORI)
    assert detector.take_changes()[1] == [f"eo:{EORI}"]


class CountingStore(TargetStore):
    def __init__(self) -> None:
        self.batches: list[tuple[list[str], list[str]]] = []

    async def save(self, saved: Sequence[SavedTarget], forgotten: Sequence[str]) -> None:
        self.batches.append(([s.target_id for s in saved], list(forgotten)))


async def test_a_burst_of_changes_is_saved_in_a_few_batches_and_a_lone_one_at_once() -> None:
    broker, clock = Broker(), Clock(T0)
    detector = make(broker, clock, failure_threshold=1)
    targets = [from_settings(TargetSettings(id=f"t{i}", component="ntp", url=f"https://h{i}.lu/"), detector._settings)
               for i in range(100)]
    for target in targets:
        detector.put(target)
    store = CountingStore()
    ticks = ManualClock()
    loop = asyncio.create_task(
        WriteBehind(detector=detector, store=store, interval_s=60, min_gap_s=0.05, clock=ticks).run())
    try:
        await ticks.advance(0.01)
        detector.record(targets[0], probe(False, 1))
        await settle()
        assert store.batches == [(["t0"], [])], "a lone change: saved at once"
        await ticks.advance(0.1)
        for target in targets[1:]:  # a change every 2 ms: 0.196 s of changes
            detector.record(target, probe(False, 1))
            await ticks.advance(0.002)
        await ticks.advance(0.1)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert sorted(t for saved, _ in store.batches[1:] for t in saved) == sorted(t.id for t in targets[1:])
    # The first change of the burst at once, then one batch per gap of 0.05 s: 5 transactions, not 99.
    assert len(store.batches) - 1 == 5, store.batches


class SweepingStore(CountingStore):
    """Answers each sweep with the next of ``outcomes`` (rows deleted, or an error), then 0; notes when."""

    def __init__(self, outcomes: list[int | Exception], clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock
        self.outcomes = outcomes
        self.sweeps: list[float] = []

    async def sweep(self, *, limit: int = 0) -> int:
        self.sweeps.append(self.clock.time())
        outcome = self.outcomes.pop(0) if self.outcomes else 0
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


async def test_other_instances_expired_rows_are_swept_at_start_then_periodically_backlog_first() -> None:
    broker, clock = Broker(), Clock(T0)
    detector = make(broker, clock)
    target = ada(detector)
    ticks = ManualClock()
    store = SweepingStore([_SWEEP_LIMIT, 3, RuntimeError("database gone"), 0], ticks)
    write_behind = WriteBehind(detector=detector, store=store, interval_s=0.01, min_gap_s=0.01, sweep_every_s=0.2,
                               clock=ticks)
    started = ticks.time()
    loop = asyncio.create_task(write_behind.run())
    try:
        await ticks.advance(0.45)
        detector.record(target, probe(False, 1))
        await ticks.advance(0.05)
        assert not loop.done(), "a failed sweep does not stop the saves"
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    first, backlog, *_ = store.sweeps
    gaps = [later - earlier for earlier, later in zip(store.sweeps, store.sweeps[1:], strict=False)]
    assert first == started, "at start"
    assert backlog - first == pytest.approx(0.01), "a full batch: the rest at the next interval, not in an hour"
    assert len(gaps) == 3 and all(gap == pytest.approx(0.2, abs=0.011) for gap in gaps[1:]), (
        "then every sweep_every_s", gaps)
    assert write_behind.swept == _SWEEP_LIMIT + 3
    assert store.batches[-1] == (["ada-as4"], [])
