"""``detector.workers``: probe processes sharing the targets, results folded in by the detector process; each
target has exactly one owner among the live workers, also while a killed worker is restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from services.detector.app import create_app
from services.detector.metrics import DetectorMetrics
from services.detector.probes import Prober
from services.detector.service import Detector
from services.detector.targets import from_settings
from services.detector.workers import WorkerPool
from shared.config import ApiSettings, DetectorSettings, KafkaSettings, Settings, TargetSettings
from shared.events import AvailabilityData, CloudEvent, ComponentState
from shared.kafka import ensure_topics
from tests.integration.test_probes_servers import LoopbackServer, Reply, Request
from tests.support import BUREAU, BUREAU_TOKEN, eventually

pytestmark = pytest.mark.integration

TARGETS = 30


class Pages:
    def __init__(self) -> None:
        self.failing: set[str] = set()
        self.server = LoopbackServer(behaviour=self.answer)

    def answer(self, request: Request) -> Any:
        return Reply(status=503) if request.path in self.failing else Reply()


@pytest.fixture
async def pages() -> AsyncIterator[Pages]:
    pages = Pages()
    await pages.server.start()
    yield pages
    await pages.server.close()


def one_owner_each(pool: WorkerPool, ids: list[str]) -> bool:
    """Every target owned by one live worker, and each worker's scheduler holding exactly its own."""
    live = pool.pids()
    owned = Counter(pool.owner_of(t) for t in ids)
    return set(owned) <= set(live) and None not in owned and pool.reported() == {w: owned[w] for w in live}


async def test_each_target_has_one_owner_among_the_workers_also_after_one_dies(pages: Pages) -> None:
    settings = DetectorSettings(instance_id="it-workers", interval_s=0.5, timeout_s=0.4, failure_threshold=2,
                                success_threshold=1, workers=3, eo_targets=False)
    sent: list[CloudEvent[AvailabilityData]] = []

    async def send(_target_id: str, event: CloudEvent[AvailabilityData]) -> None:
        sent.append(event)

    detector = Detector(settings=settings, prober=Prober(), send=send,
                        metrics=DetectorMetrics.create(CollectorRegistry()))
    pool = detector.scheduler
    assert isinstance(pool, WorkerPool)
    ids = [f"page-{i:02d}" for i in range(TARGETS)]
    for target_id in ids:
        detector.put(from_settings(TargetSettings(id=target_id, component="ntp", probe="http",
                                                  url=pages.server.url(f"/{target_id}")), settings))
    loops = [asyncio.create_task(pool.run()), asyncio.create_task(detector.latest.run())]
    try:
        def probed_since(moment: datetime) -> bool:
            return all((s := detector.statuses[t].last) is not None and s.finished_at > moment for t in ids)

        await eventually(lambda: len(pool.pids()) == 3 and one_owner_each(pool, ids) and probed_since(datetime.min
                         .replace(tzinfo=UTC)), timeout=30, what="3 workers probing every target")
        assert {detector.statuses[t].state for t in ids} == {ComponentState.UP}
        assert len(set(pool.owner_of(t) for t in ids)) == 3  # shared out, not all on one

        # A failing page is decided by the detector process from its worker's results.
        pages.failing.add("/page-07")
        await eventually(lambda: detector.statuses["page-07"].state == ComponentState.DOWN, timeout=30,
                         what="page-07 down")
        assert any(e.data.target_id == "page-07" and e.data.state == ComponentState.DOWN for e in sent)

        victim = pool.owner_of("page-03")
        assert victim is not None
        orphans = [t for t in ids if pool.owner_of(t) == victim]
        os.kill(pool.pids()[victim], signal.SIGKILL)
        killed_at = datetime.now(UTC)
        # While it is away its targets move to the others; once restarted they come back. Every step: one owner.
        await eventually(lambda: pool.restarts == 1 and len(pool.pids()) == 3 and one_owner_each(pool, ids)
                         and probed_since(killed_at), timeout=30, what="the worker restarted, every target probed")
        assert [t for t in ids if pool.owner_of(t) == victim] == orphans  # the same share as before (stable)
        pages.failing.clear()
        await eventually(lambda: detector.statuses["page-07"].state == ComponentState.UP, timeout=30,
                         what="page-07 back up")
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
    assert pool.pids() == {}


async def test_the_detector_app_probes_through_its_workers_and_stops_them(
    pages: Pages, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    await ensure_topics(kafka)
    config = Settings(data_dir=tmp_path, kafka=kafka, api=ApiSettings(bureau_tokens=[SecretStr(BUREAU_TOKEN)]),
                      detector={"instance_id": "it-workers-app", "interval_s": 0.5, "timeout_s": 0.4,
                                "success_threshold": 1, "workers": 2, "eo_targets": False,
                                "targets": [{"id": f"page-{i}", "component": "ntp", "probe": "http",
                                             "url": pages.server.url(f"/page-{i}")} for i in range(6)]})
    app = create_app(config)
    async with app.router.lifespan_context(app):
        detector: Detector = app.state.detector
        pool = detector.scheduler
        assert isinstance(pool, WorkerPool)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://detector", headers=BUREAU) as client:
            async def all_up() -> bool:
                items = (await client.get("/api/v1/targets")).json()["items"]
                return len(items) == 6 and all(item["state"] == "up" for item in items)

            await eventually(all_up, timeout=30, what="every page up, probed by the workers")
        # The workers report what their schedulers hold every half second.
        await eventually(lambda: len(pool.pids()) == 2 and one_owner_each(pool, [f"page-{i}" for i in range(6)]),
                         timeout=30, what="each page owned by one of the two workers")
        pids = list(pool.pids().values())
    for pid in pids:  # stopped with the app: no orphan probe processes
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_a_worker_whose_output_cannot_be_read_is_killed_and_restarted_and_the_pool_goes_on() -> None:
    # Each start of this "worker" writes a frame that does not unpickle, then waits: it is killed (not left
    # running) and restarted after its pause, and the pool's loop goes on rather than ending on the error.
    garbage = "import os, struct, time; os.write(1, struct.pack('>I', 5) + b'hello'); time.sleep(60)"

    pool = WorkerPool(workers=1, on_result=lambda *_: None, max_concurrency=10, per_host_limit=2, restart_s=0.05,
                      command=[sys.executable, "-c", garbage])
    loop = asyncio.create_task(pool.run())
    try:
        await eventually(lambda: pool.restarts >= 2, timeout=30, what="the unreadable worker restarted twice")
        assert not loop.done()
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert pool.pids() == {}
