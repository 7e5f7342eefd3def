"""The detector app over the real broker: EOs from the registry topic are probed, their outages published."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI
from pydantic import SecretStr

from services.detector.app import create_app
from services.detector.registry import RegistryFollower
from shared.config import ApiSettings, ConfigError, KafkaSettings, Settings
from shared.events import AvailabilityData, CloudEvent, DeadLetterData, EoData, EventType, Language, parse_event
from shared.kafka import Publisher, ensure_topics
from tests.integration.test_probes_servers import MAINTENANCE, LoopbackServer, Request, receipt_for
from tests.support import BUREAU, BUREAU_TOKEN, eventually

pytestmark = pytest.mark.integration

EORI = "LU12345678901234"
OTHER = "LU99999999999999"


def settings(kafka_bootstrap: str, topic_prefix: str, data_dir: Path, **detector: Any) -> Settings:
    values: dict[str, Any] = {
        "instance_id": "it-detector", "interval_s": 0.2, "timeout_s": 0.5,
        "failure_threshold": 2, "success_threshold": 2, "heartbeat_s": 1.0,
    }
    values.update(detector)
    return Settings(
        data_dir=data_dir,  # a detector database of its own: no state saved by another test
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix), detector=values,
        api=ApiSettings(bureau_tokens=[SecretStr(BUREAU_TOKEN)]),
    )


class Msh:
    """An AS4 endpoint that answers with receipts, or with a maintenance page while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.server = LoopbackServer(behaviour=self.answer)

    def answer(self, request: Request) -> Any:
        return MAINTENANCE if self.down else receipt_for(request)


@pytest.fixture
async def msh() -> AsyncIterator[Msh]:
    msh = Msh()
    await msh.server.start()
    yield msh
    await msh.server.close()


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://detector", headers=BUREAU) as client:
            yield client


async def publish_eo(kafka: KafkaSettings, eori: str, endpoint: str | None) -> None:
    publisher = Publisher(kafka, client_id="it-registry")
    await publisher.start()
    try:
        event = CloudEvent[EoData](
            source="/tests", type=EventType.EO_UPSERTED, subject=eori,
            data=EoData(eori=eori, name="Test Trading SARL", language=Language.FR, as4_endpoint=endpoint),
        )
        await publisher.publish(kafka.eos_topic, event, key=eori)
    finally:
        await publisher.stop()


async def publish_raw(kafka: KafkaSettings, key: str | None, value: bytes | None) -> None:
    publisher = Publisher(kafka, client_id="it-registry")
    await publisher.start()
    try:
        await publisher.publish_raw(kafka.eos_topic, value, key=key)
    finally:
        await publisher.stop()




async def target_state(client: httpx.AsyncClient, target_id: str) -> dict[str, Any] | None:
    response = await client.get(f"/api/v1/targets/{target_id}")
    return response.json() if response.status_code == 200 else None


async def read_topic(
    kafka_bootstrap: str, topic: str, predicate: Callable[[bytes], bool], timeout: float = 20
) -> bytes:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        if record.value is not None and predicate(record.value):
                            value: bytes = record.value
                            return value
    finally:
        await consumer.stop()


def availability(raw: bytes) -> AvailabilityData:
    data: AvailabilityData = parse_event(raw, AvailabilityData).data
    return data


async def test_a_registered_eo_is_probed_and_its_outage_published(
    kafka_bootstrap: str, topic_prefix: str, msh: Msh, tmp_path: Path
) -> None:
    config = settings(kafka_bootstrap, topic_prefix, tmp_path)
    await ensure_topics(config.kafka)
    async with running(create_app(config)) as client:
        await eventually(lambda: client.get("/readyz"), what="readyz answers")
        await publish_eo(config.kafka, EORI, msh.server.url("/as4"))
        up = await eventually(
            lambda: _in_state(client, f"eo:{EORI}", "up"), what="the EO target up"
        )
        assert (up["component"], up["eori"], up["probe"], up["source"]) == ("eo_b2g", EORI, "as4", "registry")
        assert msh.server.requests, "the EO's endpoint got pings"

        msh.down = True
        down = await eventually(lambda: _in_state(client, f"eo:{EORI}", "down"), what="the EO target down")
        assert down["reason"] == "http_503"

        raw = await read_topic(
            kafka_bootstrap, config.kafka.availability_topic,
            lambda v: (d := availability(v)).target_id == f"eo:{EORI}" and d.state == "down",
        )
        event = json.loads(raw)
        assert event["type"] == EventType.AVAILABILITY_CHANGED
        assert event["data"]["component"] == "eo_b2g"
        assert event["data"]["eori"] == EORI
        assert event["data"]["previous_state"] == "up"
        assert event["data"]["detector_instance"] == "it-detector"
        assert event["data"]["reason"] == "http_503"

        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert (await client.get("/healthz")).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'luccs_detector_target_state{component="eo_b2g",target="eo:LU12345678901234"} 0.0' in metrics
        assert "luccs_detector_scheduler_lag_seconds_bucket" in metrics
        assert 'luccs_detector_probe_results_total{component="eo_b2g",probe="as4",reason="http_503"}' in metrics


async def test_endpoint_changes_and_removals_take_effect_without_a_restart(
    kafka_bootstrap: str, topic_prefix: str, msh: Msh, tmp_path: Path
) -> None:
    config = settings(kafka_bootstrap, topic_prefix, tmp_path)
    await ensure_topics(config.kafka)
    other = Msh()
    await other.server.start()
    try:
        # Registered before the detector starts: found by replaying the topic from its beginning.
        await publish_eo(config.kafka, EORI, msh.server.url("/first"))
        await publish_eo(config.kafka, OTHER, other.server.url("/other"))
        async with running(create_app(config)) as client:
            await eventually(lambda: _in_state(client, f"eo:{EORI}", "up"), what="replayed EO up")
            await eventually(lambda: _in_state(client, f"eo:{OTHER}", "up"), what="second EO up")

            await publish_eo(config.kafka, EORI, msh.server.url("/second"))
            await eventually(
                lambda: any(r.path == "/second" for r in msh.server.requests), what="the changed endpoint probed"
            )
            view = await target_state(client, f"eo:{EORI}")
            assert view is not None and view["url"].endswith("/second")

            await publish_eo(config.kafka, EORI, None)  # endpoint removed
            await publish_raw(config.kafka, OTHER, None)  # EO removed (tombstone)
            await eventually(
                lambda: _absent(client, f"eo:{EORI}", f"eo:{OTHER}"), what="both EO targets gone"
            )
            before = len(other.server.requests)
            await asyncio.sleep(0.6)  # three intervals: no more probes of a removed EO
            assert len(other.server.requests) <= before + 1  # at most one that was already in flight
    finally:
        await other.server.close()


async def test_an_invalid_registry_record_is_dead_lettered_and_the_rest_followed(
    kafka_bootstrap: str, topic_prefix: str, msh: Msh, tmp_path: Path
) -> None:
    config = settings(kafka_bootstrap, topic_prefix, tmp_path)
    await ensure_topics(config.kafka)
    await publish_raw(config.kafka, "LU0", b'{"not": "a cloud event"}')
    await publish_eo(config.kafka, EORI, msh.server.url("/as4"))
    async with running(create_app(config)) as client:
        await eventually(lambda: _in_state(client, f"eo:{EORI}", "up"), what="the valid EO probed")
        raw = await read_topic(
            kafka_bootstrap, config.kafka.deadletter_topic,
            lambda v: parse_event(v, DeadLetterData).data.consumer_group.endswith(".detector.it-detector.eos"),
        )
        letter = parse_event(raw, DeadLetterData).data
        assert letter.source_topic == config.kafka.eos_topic
        assert "schema validation failed" in letter.reason


async def test_eo_probing_can_be_turned_off(
    kafka_bootstrap: str, topic_prefix: str, msh: Msh, tmp_path: Path
) -> None:
    config = settings(kafka_bootstrap, topic_prefix, tmp_path, eo_targets=False)
    await ensure_topics(config.kafka)
    await publish_eo(config.kafka, EORI, msh.server.url("/as4"))
    async with running(create_app(config)) as client:
        await eventually(lambda: _ready(client), what="ready")
        await asyncio.sleep(0.6)
        assert (await client.get("/api/v1/targets")).json()["items"] == []
    assert msh.server.requests == []


def test_bad_target_configuration_fails_at_startup(tmp_path: Any) -> None:
    bad = Settings(detector={"targets": [{"id": "x", "component": "ntp", "probe": "tcp", "url": "http://x.lu/"}]})
    with pytest.raises(ConfigError, match=r"detector.targets\[0\]"):
        create_app(bad)
    missing = Settings(
        detector={"targets": [{"id": "x", "component": "ntp", "url": "https://x.lu/", "ca_file": str(tmp_path / "no")}]}
    )
    with pytest.raises(ConfigError, match="TLS files"):
        create_app(missing)


async def _in_state(client: httpx.AsyncClient, target_id: str, state: str) -> dict[str, Any] | None:
    view = await target_state(client, target_id)
    return view if view is not None and view["state"] == state else None


async def _absent(client: httpx.AsyncClient, *target_ids: str) -> bool:
    for target_id in target_ids:
        if (await client.get(f"/api/v1/targets/{target_id}")).status_code != 404:
            return False
    return True


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


async def test_the_follower_replays_the_registry_then_follows_it_without_keeping_the_replayed_eoris(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    await ensure_topics(kafka)
    await publish_eo(kafka, EORI, "https://as4.trader.lu/msh")
    await publish_eo(kafka, OTHER, "https://as4.other.lu/msh")
    await publish_raw(kafka, OTHER, None)  # removed again
    upserts: list[str] = []
    removals: list[str] = []
    replays: list[set[str]] = []

    def upsert(eo: EoData) -> str:
        upserts.append(eo.eori)
        return "upserted"

    def remove(eori: str) -> str:
        removals.append(eori)
        return "removed"

    publisher = Publisher(kafka, client_id="it-registry-sink")
    await publisher.start()
    follower = RegistryFollower(kafka=kafka, name="it-follower", on_upsert=upsert, on_remove=remove,
                                on_replayed=replays.append, sink=publisher)
    task = asyncio.create_task(follower.run())
    try:
        await eventually(lambda: follower.caught_up, what="the registry replayed")
        assert replays == [{EORI}]
        assert (upserts, removals) == ([EORI, OTHER], [OTHER])
        assert follower._seen is None  # the replay's EORIs are not held while following
        await publish_eo(kafka, OTHER, "https://as4.other.lu/msh")
        await eventually(lambda: len(upserts) == 3, what="an EO registered after the replay")
        assert upserts[-1] == OTHER and replays == [{EORI}]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.stop()
