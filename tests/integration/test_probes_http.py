"""The http, tcp and domibus probes against real loopback servers, and a detector isolating a hanging target."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.detector.metrics import DetectorMetrics
from services.detector.probes import Prober
from services.detector.service import Detector
from services.detector.targets import Target, from_settings
from shared.config import DetectorSettings, TargetSettings
from shared.events import AvailabilityData, CloudEvent, ComponentState
from tests.integration.test_probes_servers import Hang, LoopbackServer, Reply, Request, static
from tests.support import free_port

pytestmark = pytest.mark.integration

DETECTOR = DetectorSettings(instance_id="it", interval_s=5, timeout_s=1.0)


@pytest.fixture
async def servers() -> AsyncIterator[list[LoopbackServer]]:
    started: list[LoopbackServer] = []
    yield started
    for s in started:
        await s.close()


async def start(servers: list[LoopbackServer], behaviour: Any) -> LoopbackServer:
    server = await LoopbackServer(behaviour=behaviour).start()
    servers.append(server)
    return server


def target(url: str, **overrides: Any) -> Target:
    values: dict[str, Any] = {"id": "ntp", "component": "ntp", "url": url}
    values.update(overrides)
    return from_settings(TargetSettings(**values), DETECTOR)


@pytest.mark.parametrize(
    ("reply", "overrides", "ok", "reason"),
    [
        (Reply(200, b"<title>National Trader Portal</title>"), {}, True, "ok"),
        (Reply(200, b"<title>National Trader Portal</title>"), {"body_contains": "National Trader Portal"}, True, "ok"),
        (Reply(200, b"<title>Maintenance</title>"), {"body_contains": "Trader Portal"}, False, "body_mismatch"),
        (Reply(302, b"", extra_headers=(("Location", "/login"),)), {}, False, "http_302"),
        (Reply(302, b"", extra_headers=(("Location", "/login"),)), {"expected_status": [200, 302]}, True, "ok"),
        (Reply(503, b"down for maintenance"), {}, False, "http_503"),
    ],
)
async def test_http_probe(
    servers: list[LoopbackServer], reply: Reply, overrides: dict[str, Any], ok: bool, reason: str
) -> None:
    server = await start(servers, static(reply))
    result = await Prober().probe(target(server.url("/portal"), **overrides))
    assert (result.ok, result.reason) == (ok, reason)
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/portal")]


async def test_http_probe_head_request(servers: list[LoopbackServer]) -> None:
    server = await start(servers, static(Reply(200, b"")))
    result = await Prober().probe(target(server.url(), method="HEAD"))
    assert result.ok
    assert server.requests[0].method == "HEAD"


async def test_tcp_probe() -> None:
    listener = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        up = await Prober().probe(target(f"127.0.0.1:{port}", probe="tcp"))
    finally:
        listener.close()
    down = await Prober().probe(target(f"tcp://127.0.0.1:{free_port()}", probe="tcp"))
    assert (up.ok, up.reason) == (True, "ok")
    assert (down.ok, down.reason) == (False, "refused")


# --- domibus -------------------------------------------------------------------------------------


def domibus(statuses: dict[str, str]) -> Any:
    expected = "Basic " + base64.b64encode(b"monitor:s3cret").decode()

    def answer(request: Request) -> Reply:
        if request.headers.get("authorization") != expected:
            return Reply(401, b"")
        services = ",".join(f'{{"name":"{n}","status":"{s}"}}' for n, s in statuses.items())
        return Reply(200, f'{{"services":[{services}]}}'.encode(), "application/json")

    return answer


@pytest.mark.parametrize(
    ("statuses", "ok", "reason", "detail"),
    [
        ({"Database": "NORMAL", "JMSBroker": "NORMAL", "Quartz Trigger": "NORMAL"}, True, "ok", "all NORMAL"),
        ({"Database": "NORMAL", "JMSBroker": "ERROR"}, False, "domibus_error", "JMSBroker: ERROR"),
        ({"Database": "NORMAL", "Quartz Trigger": "BLOCKED"}, False, "domibus_blocked", "Quartz Trigger: BLOCKED"),
    ],
)
async def test_domibus_probe(
    servers: list[LoopbackServer], statuses: dict[str, str], ok: bool, reason: str, detail: str
) -> None:
    server = await start(servers, domibus(statuses))
    result = await Prober().probe(
        target(server.url(), probe="domibus", username="monitor", password="s3cret", component="ada_b2g")
    )
    assert (result.ok, result.reason) == (ok, reason)
    assert detail in (result.detail or "")
    assert server.requests[0].path == "/ext/monitoring/application/status"


async def test_domibus_probe_without_credentials_is_down(servers: list[LoopbackServer]) -> None:
    server = await start(servers, domibus({"Database": "NORMAL"}))
    result = await Prober().probe(target(server.url(), probe="domibus", component="ada_b2g"))
    assert (result.ok, result.reason) == (False, "http_401")


# --- a whole detector: a hanging target delays no other ---------------------------------------------


async def test_a_hanging_target_does_not_delay_the_others(servers: list[LoopbackServer]) -> None:
    hanging = await start(servers, static(Hang()))
    healthy = [await start(servers, static(Reply())) for _ in range(3)]
    settings = DetectorSettings(
        instance_id="it", interval_s=0.2, timeout_s=0.2, failure_threshold=2, success_threshold=2
    )

    async def discard(_t: str, _e: CloudEvent[AvailabilityData]) -> None:
        return None

    detector = Detector(
        settings=settings, prober=Prober(), send=discard, metrics=DetectorMetrics.create(CollectorRegistry())
    )
    for i, server in enumerate([hanging, *healthy]):
        detector.put(from_settings(TargetSettings(id=f"t{i}", component="ntp", url=server.url()), settings))
    runner = asyncio.create_task(detector.scheduler.run())
    try:
        async with asyncio.timeout(10):
            while detector.statuses["t0"].state != ComponentState.DOWN or any(
                detector.statuses[f"t{i}"].state != ComponentState.UP for i in (1, 2, 3)
            ):
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # five more intervals while t0 keeps hanging
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert detector.statuses["t0"].last is not None and detector.statuses["t0"].last.reason == "timeout"
    hanging_probes = len(hanging.requests)
    for server in healthy:
        # each healthy target kept its one-per-interval rhythm: far more probes than the hanging one's
        assert len(server.requests) >= hanging_probes + 3
