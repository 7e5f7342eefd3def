"""/metrics rendered in chunks: the same bytes as prometheus_client's generate_latest, whatever the chunk size."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from services.detector.domain import ProbeResult
from services.detector.metrics import DetectorMetrics
from services.detector.probes import Prober
from services.detector.service import Detector
from shared.config import DetectorSettings
from shared.events import EoData
from shared.exposition import exposition
from shared.http import add_ops_routes

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def detector_with_eo_targets(count: int) -> tuple[Detector, CollectorRegistry]:
    """A detector holding ``count`` EO targets, some probed (up, down, with certificate expiries), and a registry
    with its per-target collector beside the other kinds of series a service has."""
    registry = CollectorRegistry()
    holder: list[Detector] = []
    metrics = DetectorMetrics.create(registry, statuses=lambda: holder[0].view())

    async def send(*_args: object) -> None:
        return None

    detector = Detector(settings=DetectorSettings(interval_s=60, failure_threshold=1, success_threshold=1),
                        prober=Prober(), send=send, metrics=metrics)
    holder.append(detector)
    for i in range(count):
        detector.on_eo(EoData(eori=f"LU{i:010d}", name=f"Operator {i}", as4_endpoint=f"https://as4.eo{i}.lu/msh"))
    for i, target in enumerate(list(detector.targets.values())[: count // 3]):
        detector.record(target, ProbeResult(
            ok=i % 2 == 0, reason="ok" if i % 2 == 0 else "refused", finished_at=T0, latency_ms=12.5,
            cert_expires_at=T0 + timedelta(days=i) if i % 5 == 0 else None,
            signing_cert_expires_at=T0 + timedelta(days=30) if i % 7 == 0 else None,
            partner_cert_expires_at=T0 + timedelta(days=90) if i % 11 == 0 else None,
        ))
    Counter("luccs_test_things", "Things counted", ["kind"], registry=registry).labels("a").inc(3)
    Histogram("luccs_test_seconds", "A duration", registry=registry).observe(0.2)
    Gauge("luccs_test_weird", 'Help with a \\ backslash and a "quote"\nover two lines', ["label"],
          registry=registry).labels('va"l\\ue\nnext').set(1.5)
    Gauge("luccs_test_empty", "A labelled gauge without series yet", ["label"], registry=registry)
    return detector, registry


async def rendered(registry: CollectorRegistry, chunk_size: int) -> bytes:
    return b"".join([chunk async for chunk in exposition(registry, chunk_size=chunk_size)])


@pytest.mark.parametrize("chunk_size", [1, 7, 100, 10_000])
async def test_the_chunks_make_the_bytes_of_generate_latest(chunk_size: int) -> None:
    _, registry = detector_with_eo_targets(250)
    expected = generate_latest(registry)
    assert b'luccs_detector_target_state{component="eo_b2g",target="eo:LU0000000249"} -1.0' in expected
    assert b"luccs_detector_as4_cert_expiry_timestamp_seconds{" in expected
    assert await rendered(registry, chunk_size) == expected


async def test_a_large_gauge_family_comes_in_several_chunks_its_header_once() -> None:
    _, registry = detector_with_eo_targets(120)
    chunks = [chunk async for chunk in exposition(registry, chunk_size=50)]
    state = [c for c in chunks if b"luccs_detector_target_state{" in c]
    assert len(state) == 3  # 120 targets, 50 a chunk
    assert b"".join(state).count(b"# TYPE luccs_detector_target_state gauge") == 1


async def test_per_target_series_follow_the_targets_at_each_scrape() -> None:
    detector, registry = detector_with_eo_targets(3)
    assert registry.get_sample_value("luccs_detector_target_state",
                                     {"target": "eo:LU0000000002", "component": "eo_b2g"}) == -1
    detector.on_eo_removed("LU0000000002")
    assert registry.get_sample_value("luccs_detector_target_state",
                                     {"target": "eo:LU0000000002", "component": "eo_b2g"}) is None
    assert registry.get_sample_value("luccs_detector_targets", {"component": "eo_b2g", "state": "unknown"}) == 1
    assert registry.get_sample_value("luccs_detector_targets", {"component": "eo_b2g", "state": "up"}) == 1


async def test_the_metrics_route_serves_the_exposition() -> None:
    _, registry = detector_with_eo_targets(40)
    app = FastAPI()
    add_ops_routes(app, checks={}, registry=registry)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    assert response.content == generate_latest(registry)
