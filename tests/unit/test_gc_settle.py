"""Unit tests of the detector's collector settings: thresholds while installed, a freeze once the puts are quiet,
frozen cycles freed at the next settle, and the composition points that report target puts."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from services.detector.probe_worker import ProbeWorker
from services.detector.probes import Prober
from services.detector.targets import from_settings
from shared.config import DetectorSettings, TargetSettings
from shared.gc_settle import GcSettler

DEADLINE_S = 5.0


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


async def until(condition: object, what: str) -> None:
    assert callable(condition)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not condition():
        assert loop.time() < deadline, f"not within {DEADLINE_S}s: {what}"
        await asyncio.sleep(0.005)


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_install_sets_the_young_threshold_and_close_restores_the_collectors() -> None:
    before = gc.get_threshold()
    settler = GcSettler(young_threshold=12_345).install()
    assert gc.get_threshold() == (12_345, 20, 10)
    settler.close()
    assert gc.get_threshold() == before


def test_nothing_changes_without_install() -> None:
    before = gc.get_threshold()
    GcSettler(young_threshold=12_345)
    assert gc.get_threshold() == before


async def test_settles_once_the_puts_are_quiet_and_freezes_the_survivors() -> None:
    settler = GcSettler(quiet_s=0.01, max_delay_s=1.0)
    kept = [_Cycle() for _ in range(100)]
    for _ in range(3):
        settler.changed()
    assert settler.settled == 0  # not at once: after the quiet
    await until(lambda: settler.settled == 1, "one settle")
    assert gc.get_freeze_count() >= len(kept)
    settler.close()
    assert gc.get_freeze_count() == 0


async def test_settles_within_the_max_delay_while_puts_keep_coming() -> None:
    settler = GcSettler(quiet_s=60.0, max_delay_s=0.05)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while settler.settled == 0:
        assert loop.time() < deadline, "never settled while changes kept coming"
        settler.changed()
        await asyncio.sleep(0.005)
    settler.close()


def test_a_frozen_cycle_is_freed_at_the_next_settle() -> None:
    settler = GcSettler()
    cycle = _Cycle()
    alive = weakref.ref(cycle)
    settler.settle()  # frozen while still referenced
    del cycle
    gc.collect()
    assert alive() is not None  # a frozen cycle is not collected...
    settler.settle()
    assert alive() is None  # ...until the next settle unfreezes and collects first
    settler.close()


class _Recorder:
    def __init__(self) -> None:
        self.changes = 0

    def changed(self) -> None:
        self.changes += 1


class _Channel:
    def send(self, message: object) -> None:
        pass


async def test_a_probe_worker_reports_each_target_put() -> None:
    settings = DetectorSettings(instance_id="t", interval_s=10, timeout_s=2, heartbeat_s=15, eo_targets=False)
    recorder = _Recorder()
    worker = ProbeWorker(channel=_Channel(), prober=Prober(), max_concurrency=4, per_host_limit=2,  # type: ignore[arg-type]
                         settler=recorder)  # type: ignore[arg-type]
    for i in range(3):
        target = from_settings(TargetSettings(id=f"t{i}", component="ntp", probe="http",
                                              url=f"http://127.0.0.1:9/{i}"), settings)
        worker.handle(("put", target, i))
    worker.handle(("drop", "t0"))
    assert recorder.changes == 3


async def test_the_detector_reports_each_changed_target_put() -> None:
    from prometheus_client import CollectorRegistry

    from services.detector.metrics import DetectorMetrics
    from services.detector.service import Detector

    async def send(target_id: str, event: object) -> None:
        pass

    settings = DetectorSettings(instance_id="t", interval_s=10, timeout_s=2, heartbeat_s=15, eo_targets=False)
    recorder = _Recorder()
    detector = Detector(settings=settings, prober=Prober(), send=send,
                        metrics=DetectorMetrics.create(CollectorRegistry()), settler=recorder)  # type: ignore[arg-type]
    target = from_settings(TargetSettings(id="t1", component="ntp", probe="http", url="http://127.0.0.1:9/"), settings)
    assert detector.put(target)
    assert not detector.put(target)  # unchanged: nothing new to freeze
    assert recorder.changes == 1
