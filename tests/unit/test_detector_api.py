"""Unit tests of the detector API (in-process ASGI, no sockets): pagination, filters, 404, bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from services.detector.api import router
from services.detector.domain import ProbeResult
from services.detector.metrics import DetectorMetrics
from services.detector.probes import Prober
from services.detector.service import Detector
from services.detector.targets import from_settings
from shared.auth import authorize, build_guard, install_guard
from shared.config import ApiSettings, DetectorSettings, TargetSettings
from shared.events import AvailabilityData, CloudEvent, EoData

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


async def _discard(_target_id: str, _event: CloudEvent[AvailabilityData]) -> None:
    return None


@pytest.fixture
async def detector() -> Detector:
    settings = DetectorSettings(instance_id="t", interval_s=60, failure_threshold=1, success_threshold=1)
    detector = Detector(
        settings=settings, prober=Prober(), send=_discard, metrics=DetectorMetrics.create(CollectorRegistry())
    )
    for i in range(25):
        target = from_settings(TargetSettings(id=f"ntp-{i:02d}", component="ntp", url=f"http://n{i}.lu/"), settings)
        detector.put(target)
        detector.record(target, ProbeResult(i % 5 != 0, "ok" if i % 5 else "refused", T0, 12.5, "HTTP 200"))
    detector.on_eo(EoData(eori="LU12345678901234", name="T", as4_endpoint="https://as4.trader.lu/msh"))
    eo = detector.targets["eo:LU12345678901234"]
    detector.record(
        eo, ProbeResult(True, "ebms_error", T0, 80.0, "EBMS:0103", cert_expires_at=T0 + timedelta(days=10),
                        ebms_error="EBMS:0103"),
    )
    return detector


def _guarded_app() -> FastAPI:
    app = FastAPI(dependencies=[Depends(authorize)])
    app.include_router(router)
    api = ApiSettings(operator_tokens=[SecretStr("operator-token")])
    install_guard(app, build_guard(service="detector", api=api), max_body_bytes=api.max_body_bytes)
    return app


OPERATOR = {"Authorization": "Bearer operator-token"}


@pytest.fixture
async def client(detector: Detector) -> AsyncIterator[httpx.AsyncClient]:
    app = _guarded_app()
    app.state.detector = detector
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://detector",
                                 headers=OPERATOR) as client:
        yield client


async def test_pages_cover_every_target_once_in_id_order(client: httpx.AsyncClient) -> None:
    seen: list[str] = []
    cursor = None
    for _ in range(10):  # bounded: 26 targets, 10 per page
        params: dict[str, str | int] = {"limit": 10}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/v1/targets", params=params)).json()
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen)) == 26


async def test_a_target_shows_state_reason_latency_since_certificate_and_degraded(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/targets/eo:LU12345678901234")
    assert response.status_code == 200
    body = response.json()
    assert body["state"] == "up"
    assert body["component"] == "eo_b2g"
    assert body["eori"] == "LU12345678901234"
    assert body["source"] == "registry"
    assert body["reason"] == "ebms_error"
    assert body["latency_ms"] == 80.0
    assert body["degraded"] is False
    assert body["since"] == "2024-03-01T12:00:00Z"
    assert body["cert_expires_at"] == "2024-03-11T12:00:00Z"
    assert body["cert_warning_days"] == 14
    assert body["last_result"]["ebms_error"] == "EBMS:0103"


async def test_a_suspect_target_shows_its_verdict_time_and_retry_pace(
    client: httpx.AsyncClient, detector: Detector
) -> None:
    settings = DetectorSettings(instance_id="t", interval_s=60, failure_threshold=1, success_threshold=1)
    target = from_settings(
        TargetSettings(id="ada-as4", component="ada_b2g", url="http://b2g.lu/", failure_threshold=3), settings
    )
    detector.put(target)
    detector.record(target, ProbeResult(True, "ok", T0, 10.0))
    detector.record(target, ProbeResult(False, "refused", T0 + timedelta(seconds=1), 10.0))
    body = (await client.get("/api/v1/targets/ada-as4")).json()
    assert (body["state"], body["suspect"], body["retry_interval_s"]) == ("up", True, 12.0)
    assert body["verdict_by"] == "2024-03-01T12:00:29Z"  # two more failures, each within 12 s + a 2 s timeout
    settled = (await client.get("/api/v1/targets/ntp-01")).json()
    assert (settled["suspect"], settled["verdict_by"]) == (False, None)


async def test_filters(client: httpx.AsyncClient) -> None:
    down = (await client.get("/api/v1/targets", params={"state": "down", "limit": 100})).json()
    assert [i["id"] for i in down["items"]] == ["ntp-00", "ntp-05", "ntp-10", "ntp-15", "ntp-20"]
    eos = (await client.get("/api/v1/targets", params={"component": "eo_b2g"})).json()
    assert [i["id"] for i in eos["items"]] == ["eo:LU12345678901234"]
    as4 = (await client.get("/api/v1/targets", params={"probe": "as4"})).json()
    assert len(as4["items"]) == 1 and as4["next"] is None


async def test_unknown_target_is_a_clear_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/targets/nope")
    assert response.status_code == 404
    assert "no target 'nope'" in response.json()["detail"]


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"limit": 0}, 422),
        ({"limit": 1001}, 422),
        ({"limit": "ten"}, 422),
        ({"state": "sideways"}, 422),
        ({"component": "mainframe"}, 422),
        ({"probe": "ping"}, 422),
        ({"cursor": "%%%not-base64"}, 400),
        ({"cursor": "_w"}, 400),  # valid base64, not UTF-8
        ({"cursor": "x" * 2000}, 422),
    ],
)
async def test_bad_query_input_is_a_4xx(client: httpx.AsyncClient, params: dict[str, object], status: int) -> None:
    response = await client.get("/api/v1/targets", params=params)  # type: ignore[arg-type]
    assert response.status_code == status
    assert response.json()["detail"]


async def test_before_the_lifespan_the_api_says_it_is_starting() -> None:
    app = _guarded_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://detector",
                                 headers=OPERATOR) as client:
        response = await client.get("/api/v1/targets")
    assert response.status_code == 503
