"""Three detector instances with ``vantage_points = 2`` over the real broker: each EO endpoint is probed by two of
them, the procedure service's quorum still opens scenario 1 once when an EO's endpoint fails (and closes it once),
and a stopped instance's share moves to the others."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI
from pydantic import SecretStr

from services.detector.app import create_app as create_detector
from services.detector.service import Detector
from services.procedure.app import create_app as create_procedure
from shared.config import ApiSettings, KafkaSettings, Settings
from shared.events import ProcedureData, Scenario, parse_event
from shared.kafka import ensure_topics
from tests.integration.test_probes_servers import MAINTENANCE, LoopbackServer, Reply, Request, receipt_for
from tests.support import eventually

pytestmark = pytest.mark.integration

OPERATOR = "operator-token-for-vantage-tests"
AUTH = {"Authorization": f"Bearer {OPERATOR}"}
EORIS = [f"LU{i:010d}" for i in range(1, 7)]
INSTANCES = ("dt-a", "dt-b", "dt-c")


class Endpoints:
    """The EOs' AS4 endpoints (one path each) and the NTP page, on one loopback server."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.server = LoopbackServer(behaviour=self.answer)

    def answer(self, request: Request) -> Any:
        if request.path == "/ntp":
            return Reply()
        eori = request.path.rsplit("/", 1)[-1]
        return MAINTENANCE if eori in self.down else receipt_for(request)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[FastAPI]:
    async with app.router.lifespan_context(app):
        yield app


def detector_of(app: FastAPI) -> Detector:
    detector: Detector = app.state.detector
    return detector


async def procedure_events(kafka: KafkaSettings, eori: str, count: int) -> list[str]:
    """The types of the procedure events about ``eori`` once there are ``count`` of them (bounded wait)."""
    consumer = AIOKafkaConsumer(kafka.procedures_topic, bootstrap_servers=kafka.bootstrap_servers,
                                auto_offset_reset="earliest")
    await consumer.start()
    found: list[str] = []
    try:
        async def enough() -> bool:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    if record.key == eori.encode() and record.value is not None:
                        found.append(parse_event(record.value, ProcedureData).type)
            return len(found) >= count

        await eventually(enough, timeout=30, what=f"{count} procedure events about {eori}")
    finally:
        await consumer.stop()
    return found


async def test_k_of_n_instances_probe_each_eo_and_the_quorum_opens_scenario_1_once(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    await ensure_topics(kafka)
    endpoints = Endpoints()
    await endpoints.server.start()
    api = ApiSettings(operator_tokens=[SecretStr(OPERATOR)])
    procedure = Settings(data_dir=tmp_path / "procedure", kafka=kafka, api=api,
                         procedure={"stale_after_s": 5.0, "tick_s": 0.5})

    def detector(instance: str) -> FastAPI:
        return create_detector(Settings(
            data_dir=tmp_path / instance, kafka=kafka, api=api,
            detector={
                "instance_id": instance, "interval_s": 0.3, "timeout_s": 0.5, "failure_threshold": 2,
                "success_threshold": 1, "heartbeat_s": 0.5, "vantage_points": 2, "vantage_timeout_s": 3.0,
                "targets": [{"id": "ntp", "component": "ntp", "probe": "http", "url": endpoints.server.url("/ntp")}],
            },
        ))

    try:
        async with contextlib.AsyncExitStack() as stack:
            service = await stack.enter_async_context(lifespan(create_procedure(procedure)))
            transport = httpx.ASGITransport(app=service)
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://procedure", headers=AUTH))
            for eori in EORIS:
                created = await client.post("/api/v1/eos", json={
                    "eori": eori, "name": f"EO {eori}", "as4_endpoint": endpoints.server.url(f"/as4/{eori}")})
                assert created.status_code == 201, created.text
            apps = {name: await stack.enter_async_context(lifespan(detector(name))) for name in INSTANCES[:2]}
            last = contextlib.AsyncExitStack()  # stopped half-way through
            apps[INSTANCES[2]] = await last.enter_async_context(lifespan(detector(INSTANCES[2])))

            def shared_out(live: tuple[str, ...], k: int) -> bool:
                # Every instance has read the whole registry and sees exactly the live ones, then the shares hold.
                if any(detector_of(apps[name]).vantage_members != frozenset(live) or
                       detector_of(apps[name]).eo_endpoints != len(EORIS) for name in live):
                    return False
                counts = Counter(t for name in live for t in detector_of(apps[name]).targets)
                return counts["ntp"] == len(live) and all(counts[f"eo:{e}"] == k for e in EORIS)

            try:
                await eventually(lambda: shared_out(INSTANCES, 2), timeout=30,
                                 what="each EO probed by 2 of the 3 instances")
                victim = EORIS[0]
                endpoints.down.add(victim)
                assert await procedure_events(kafka, victim, 1) == ["luccs.procedure.opened"]
                listed = (await client.get("/api/v1/procedures", params={"state": "open"})).json()["items"]
                assert [(p["eori"], p["scenario"]) for p in listed] == [(victim, Scenario.EO_B2G_UNAVAILABLE.value)]
                endpoints.down.discard(victim)
                assert await procedure_events(kafka, victim, 2) == ["luccs.procedure.opened", "luccs.procedure.closed"]
            finally:
                await last.aclose()
            # The third instance stops heartbeating: the two left take over its share.
            await eventually(lambda: shared_out(INSTANCES[:2], 2), timeout=30,
                             what="each EO probed by both instances left")
            second = EORIS[1]
            endpoints.down.add(second)
            assert await procedure_events(kafka, second, 1) == ["luccs.procedure.opened"]
            assert await procedure_events(kafka, victim, 2) == ["luccs.procedure.opened", "luccs.procedure.closed"]
    finally:
        await endpoints.server.close()
