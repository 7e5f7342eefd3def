"""Unit tests of the probe scheduler with in-memory probes: spread, limits, isolation of slow targets.

Time is a :class:`~tests.clock.ManualClock` the tests advance: no test waits on the wall clock, and what
"within one interval" means is exact."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.detector.domain import ProbeResult, TargetStatus, observe, phase
from services.detector.metrics import DetectorMetrics
from services.detector.scheduler import Scheduler
from services.detector.targets import Target, from_settings
from shared.config import DetectorSettings, TargetSettings
from shared.events import ComponentState
from tests.clock import ManualClock

SETTINGS = DetectorSettings(instance_id="t", interval_s=0.2, timeout_s=0.2)


def target(target_id: str, *, port: int = 8080, interval_s: float = 0.2, url: str | None = None) -> Target:
    return from_settings(
        TargetSettings(
            id=target_id, component="ntp", url=url or f"http://127.0.0.1:{port}/{target_id}", interval_s=interval_s
        ),
        SETTINGS,
    )


def ok() -> ProbeResult:
    return ProbeResult(ok=True, reason="ok", finished_at=datetime.now(UTC), latency_ms=1.0)


class Recorder:
    """A probe function that records calls and concurrency; ``behaviour`` may make a target hang or be slow."""

    def __init__(self, behaviour: Callable[[Target], Any] | None = None) -> None:
        self.clock = ManualClock()
        self.calls: Counter[str] = Counter()
        self.results: list[tuple[str, ProbeResult]] = []
        self.active = 0
        self.max_active = 0
        self.active_by_host: Counter[str] = Counter()
        self.max_by_host: dict[str, int] = defaultdict(int)
        self.behaviour = behaviour

    async def probe(self, target: Target) -> ProbeResult:
        self.calls[target.id] += 1
        host = target.endpoint.host_key
        self.active += 1
        self.active_by_host[host] += 1
        self.max_active = max(self.max_active, self.active)
        self.max_by_host[host] = max(self.max_by_host[host], self.active_by_host[host])
        try:
            if self.behaviour is not None:
                await self.behaviour(target)
            return ok()
        finally:
            self.active -= 1
            self.active_by_host[host] -= 1

    def record(self, target: Target, result: ProbeResult) -> None:
        self.results.append((target.id, result))


@contextlib.asynccontextmanager
async def running(scheduler: Scheduler) -> AsyncIterator[Scheduler]:
    task = asyncio.create_task(scheduler.run())
    try:
        yield scheduler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def scheduler(recorder: Recorder, *, concurrency: int = 100, per_host: int = 100, **kwargs: Any) -> Scheduler:
    return Scheduler(
        probe=recorder.probe, on_result=recorder.record, max_concurrency=concurrency, per_host_limit=per_host,
        clock=recorder.clock, **kwargs
    )


async def test_every_target_is_probed_once_per_interval_at_its_phase() -> None:
    recorder = Recorder()
    sched = scheduler(recorder)
    for i in range(20):
        sched.schedule(target(f"t{i}"))
    async with running(sched):
        await recorder.clock.advance(1.05)  # five intervals of 0.2 s and a bit
    # Fixed-rate slots: the first at the target's phase within the first interval, then one per interval.
    assert recorder.calls == {f"t{i}": 6 if phase(f"t{i}") * 0.2 <= 0.05 else 5 for i in range(20)}
    assert len(recorder.results) == sum(recorder.calls.values())


async def test_a_dense_schedule_wakes_the_loop_at_most_once_per_tick_and_no_probe_starts_a_tick_late() -> None:
    starts: dict[str, float] = {}

    async def note_start(t: Target) -> None:
        starts.setdefault(t.id, recorder.clock.time())

    recorder = Recorder(note_start)
    sched = scheduler(recorder, concurrency=1000, tick_s=0.01)
    origin = recorder.clock.time()
    for i in range(400):  # 400 phases in 0.2 s: one due every 0.5 ms on average
        sched.schedule(target(f"t{i}"))
    async with running(sched):
        await recorder.clock.advance(0.2)
    assert len(starts) == 400, "every target is probed in its first interval"
    # Each probe starts within one tick of its slot (the lag the tick allows), never before it...
    lags = [starts[f"t{i}"] - (origin + phase(f"t{i}") * 0.2) for i in range(400)]
    assert min(lags) >= 0
    assert max(lags) <= 0.01 + 1e-9
    # ...and the 400 probes started in at most one batch per tick, not one wake-up each.
    assert len(set(starts.values())) <= 0.2 / 0.01 + 1


async def test_a_hanging_target_delays_no_other_target() -> None:
    async def behaviour(t: Target) -> None:
        if t.id == "hangs":
            await asyncio.Event().wait()

    recorder = Recorder(behaviour)
    sched = scheduler(recorder)
    sched.schedule(target("hangs"))
    sched.schedule(target("fine"))
    async with running(sched):
        await recorder.clock.advance_until(lambda: recorder.calls["fine"] >= 5, within=1.0)
        assert recorder.calls["hangs"] == 1, "its next slots are skipped while the first probe still runs"
        assert sched.skipped >= 3
    assert [tid for tid, _ in recorder.results] == ["fine"] * len(recorder.results)


async def test_global_concurrency_is_bounded() -> None:
    async def slow(_t: Target) -> None:
        await recorder.clock.sleep(0.15)

    recorder = Recorder(slow)
    sched = scheduler(recorder, concurrency=3)
    for i in range(12):
        sched.schedule(target(f"t{i}", port=9000 + i, interval_s=0.1))
    async with running(sched):
        await recorder.clock.advance_until(lambda: len(recorder.calls) == 12, within=5.0)
    assert recorder.max_active == 3


async def test_per_host_concurrency_is_bounded_and_other_hosts_are_not_held_up() -> None:
    async def slow_shared_host(t: Target) -> None:
        if t.endpoint.port == 8443:
            await recorder.clock.sleep(0.3)

    recorder = Recorder(slow_shared_host)
    sched = scheduler(recorder, per_host=2)
    for i in range(10):
        sched.schedule(target(f"shared{i}", port=8443, interval_s=0.3))
    sched.schedule(target("elsewhere", port=9999))
    async with running(sched):
        await recorder.clock.advance_until(lambda: recorder.calls["elsewhere"] >= 4, within=1.0)
    assert recorder.max_by_host["127.0.0.1:8443"] == 2
    assert recorder.max_by_host["127.0.0.1:9999"] == 1


async def test_unscheduled_targets_are_not_probed_and_their_running_results_dropped() -> None:
    gate = asyncio.Event()

    async def held(t: Target) -> None:
        if t.id == "removed":
            await gate.wait()

    recorder = Recorder(held)
    sched = scheduler(recorder)
    sched.schedule(target("removed"))
    sched.schedule(target("kept"))
    async with running(sched):
        await recorder.clock.advance_until(lambda: recorder.calls["removed"] == 1, within=0.2)
        sched.unschedule("removed")
        gate.set()
        await recorder.clock.advance(0.5)
    assert recorder.calls["removed"] == 1
    assert "removed" not in [tid for tid, _ in recorder.results]
    assert len(sched) == 1


async def test_rescheduling_a_changed_target_drops_the_old_versions_result() -> None:
    gate = asyncio.Event()
    seen_urls: list[str] = []

    async def held(t: Target) -> None:
        seen_urls.append(t.url)
        if t.url.endswith("/old"):
            await gate.wait()

    recorder = Recorder(held)
    sched = scheduler(recorder)
    sched.schedule(target("eo", url="http://127.0.0.1:1/old"))
    async with running(sched):
        await recorder.clock.advance_until(lambda: seen_urls == ["http://127.0.0.1:1/old"], within=0.2)
        sched.schedule(target("eo", url="http://127.0.0.1:1/new"))
        gate.set()
        await recorder.clock.advance_until(lambda: "http://127.0.0.1:1/new" in seen_urls, within=0.2)
        await recorder.clock.advance(0.05)
    assert recorder.results, "the new endpoint's probes are recorded"
    assert all(r[1].ok for r in recorder.results)
    assert len(recorder.results) == seen_urls.count("http://127.0.0.1:1/new")


async def test_a_target_added_while_running_is_probed_within_one_interval() -> None:
    recorder = Recorder()
    sched = scheduler(recorder)
    sched.schedule(target("early", interval_s=5.0))
    async with running(sched):
        await recorder.clock.advance(0.05)
        sched.schedule(target("late", interval_s=0.3))
        took = await recorder.clock.advance_until(lambda: recorder.calls["late"] >= 1, within=0.3)
    assert took == pytest.approx(phase("late") * 0.3)


async def test_lag_and_skips_reach_the_metrics() -> None:
    registry = CollectorRegistry()
    metrics = DetectorMetrics.create(registry)
    recorder = Recorder()
    sched = scheduler(recorder, metrics=metrics)
    sched.schedule(target("a", interval_s=0.05))
    async with running(sched):
        await recorder.clock.advance_until(lambda: recorder.calls["a"] >= 3, within=0.2)
    count = registry.get_sample_value("luccs_detector_scheduler_lag_seconds_count")
    assert count is not None and count >= 3
    assert len(sched.lag_samples) == sched.started >= 3
    assert all(lag == 0 for lag in sched.lag_samples)  # nothing held them up: each started when due


async def test_compaction_keeps_the_heap_bounded_under_churn() -> None:
    recorder = Recorder()
    sched = scheduler(recorder)
    for round_ in range(200):
        sched.schedule(target("churn", url=f"http://127.0.0.1:1/{round_}", interval_s=60))
    assert len(sched._heap) <= 2 * len(sched) + 64


# --- the retry pace -------------------------------------------------------------------------------

RETRY_S = 0.05
SLOW_INTERVAL_S = 60.0  # a regular slot that never comes during a test: any second probe is a retry


def soon_ids(count: int) -> list[str]:
    """Target ids whose phase puts their first probe within 0.3 s of scheduling at SLOW_INTERVAL_S."""
    return list(itertools.islice((i for n in itertools.count() if phase(i := f"t{n}") < 0.005), count))


def slow_target(target_id: str, *, port: int = 8080) -> Target:
    return from_settings(
        TargetSettings(id=target_id, component="ntp", url=f"http://127.0.0.1:{port}/{target_id}",
                       interval_s=SLOW_INTERVAL_S, retry_interval_s=RETRY_S),
        SETTINGS,
    )


class Confirmer:
    """Probes with scripted outcomes and folds them with the real state machine, as the detector does,
    handing the status back so that the scheduler paces the next probe. Records when each probe ran."""

    def __init__(self, outcomes: Callable[[str, int], bool], start: TargetStatus | None = None) -> None:
        self.clock = ManualClock()
        self.outcomes = outcomes
        self.start = start if start is not None else TargetStatus()
        self.statuses: dict[str, TargetStatus] = {}
        self.runs: defaultdict[str, list[tuple[float, float]]] = defaultdict(list)  # (started, finished)
        self.active_by_host: Counter[str] = Counter()
        self.max_by_host: Counter[str] = Counter()

    async def probe(self, target: Target) -> ProbeResult:
        started = self.clock.time()
        host = target.endpoint.host_key
        self.active_by_host[host] += 1
        self.max_by_host[host] = max(self.max_by_host[host], self.active_by_host[host])
        try:
            await self.clock.sleep(0.01)
            ok = self.outcomes(target.id, len(self.runs[target.id]))
        finally:
            self.active_by_host[host] -= 1
        self.runs[target.id].append((started, self.clock.time()))
        return ProbeResult(ok=ok, reason="ok" if ok else "refused", finished_at=datetime.now(UTC))

    def record(self, target: Target, result: ProbeResult) -> TargetStatus:
        status, _ = observe(self.statuses.get(target.id, self.start), result, target.thresholds)
        self.statuses[target.id] = status
        return status

    def calls(self, target_id: str) -> int:
        return len(self.runs[target_id])

    def state(self, target_id: str) -> ComponentState:
        return self.statuses.get(target_id, self.start).state


def confirming_scheduler(confirmer: Confirmer, *, per_host: int = 100) -> Scheduler:
    return Scheduler(probe=confirmer.probe, on_result=confirmer.record, max_concurrency=100, per_host_limit=per_host,
                     clock=confirmer.clock)


UP_BEFORE = TargetStatus(state=ComponentState.UP, since=datetime(2024, 3, 1, tzinfo=UTC), consecutive_successes=9,
                         last=ProbeResult(ok=True, reason="ok", finished_at=datetime(2024, 3, 1, tzinfo=UTC)))


async def test_an_outage_is_confirmed_at_the_retry_pace_then_the_target_waits_for_its_regular_slot() -> None:
    [target_id] = soon_ids(1)
    confirmer = Confirmer(lambda _id, _n: False, start=UP_BEFORE)
    sched = confirming_scheduler(confirmer)
    sched.schedule(slow_target(target_id))  # failure threshold 3 (the detector default)
    async with running(sched):
        await confirmer.clock.advance_until(lambda: confirmer.state(target_id) == ComponentState.DOWN, within=1.0,
                                            what="down")
        # Without the retry pace the second probe would wait a whole interval (60 s).
        assert confirmer.calls(target_id) == 3
        await confirmer.clock.advance(10 * RETRY_S)
        assert confirmer.calls(target_id) == 3, "decided: no more retries, the next probe is the regular one"
    runs = confirmer.runs[target_id]
    for (_, finished), (started, _) in itertools.pairwise(runs):
        assert started - finished == pytest.approx(RETRY_S), "a retry comes a retry interval after the last probe"


async def test_a_streak_broken_by_an_agreeing_probe_goes_back_to_the_regular_slot() -> None:
    [target_id] = soon_ids(1)
    confirmer = Confirmer(lambda _id, n: n != 0, start=UP_BEFORE)  # one failure, then fine again
    sched = confirming_scheduler(confirmer)
    sched.schedule(slow_target(target_id))
    async with running(sched):
        await confirmer.clock.advance_until(lambda: confirmer.calls(target_id) == 2, within=1.0, what="the retry")
        await confirmer.clock.advance(10 * RETRY_S)
        assert confirmer.calls(target_id) == 2, "the streak broke: back to the interval"
    assert confirmer.state(target_id) == ComponentState.UP


async def test_an_unknown_target_is_decided_at_the_retry_pace() -> None:
    [target_id] = soon_ids(1)
    confirmer = Confirmer(lambda _id, _n: True)  # a new target: unknown until success_threshold (2) successes
    sched = confirming_scheduler(confirmer)
    sched.schedule(slow_target(target_id))
    async with running(sched):
        await confirmer.clock.advance_until(lambda: confirmer.state(target_id) == ComponentState.UP, within=1.0,
                                            what="up")
        await confirmer.clock.advance(10 * RETRY_S)
    assert confirmer.calls(target_id) == 2


async def test_retries_keep_the_per_host_limit() -> None:
    ids = soon_ids(6)
    confirmer = Confirmer(lambda _id, _n: False, start=UP_BEFORE)
    sched = confirming_scheduler(confirmer, per_host=2)
    for target_id in ids:
        sched.schedule(slow_target(target_id, port=8443))
    async with running(sched):
        await confirmer.clock.advance_until(lambda: all(confirmer.state(t) == ComponentState.DOWN for t in ids),
                                            within=2.0, what="all down")
    assert all(confirmer.calls(t) == 3 for t in ids)
    assert confirmer.max_by_host["127.0.0.1:8443"] <= 2


async def test_an_unscheduled_target_is_not_retried() -> None:
    [target_id] = soon_ids(1)
    confirmer = Confirmer(lambda _id, _n: False, start=UP_BEFORE)
    sched = confirming_scheduler(confirmer)
    sched.schedule(slow_target(target_id))
    async with running(sched):
        await confirmer.clock.advance_until(lambda: confirmer.calls(target_id) == 1, within=1.0,
                                            what="the first probe")
        sched.unschedule(target_id)
        await confirmer.clock.advance(10 * RETRY_S)
    assert confirmer.calls(target_id) <= 2  # a retry started before the unschedule may finish, none after
    assert len(sched) == 0


async def test_probe_now_probes_a_target_long_before_its_slot_and_keeps_the_slot() -> None:
    recorder = Recorder()
    sched = scheduler(recorder)
    sched.schedule(target("slow", interval_s=3600))  # its first slot: somewhere in the next hour
    async with running(sched):
        assert sched.probe_now("slow")
        took = await recorder.clock.advance_until(lambda: recorder.calls["slow"] == 1, within=1.0)
        await recorder.clock.advance(60)
    assert took == 0  # at once, not at its slot
    assert recorder.calls["slow"] == 1  # once: the regular slot is still the one in the hour
    assert not sched.probe_now("gone")


async def test_probe_now_does_not_probe_a_target_twice_at_once() -> None:
    release = asyncio.Event()

    async def behaviour(_t: Target) -> None:
        await release.wait()

    recorder = Recorder(behaviour)
    sched = scheduler(recorder)
    sched.schedule(target("hanging", interval_s=3600))
    async with running(sched):
        assert sched.probe_now("hanging")
        await recorder.clock.advance_until(lambda: recorder.active == 1, within=1.0)
        assert not sched.probe_now("hanging")  # its running probe's result is as fresh as a new one
        release.set()
        await recorder.clock.advance_until(lambda: len(recorder.results) == 1, within=1.0)
    assert recorder.calls["hanging"] == 1
