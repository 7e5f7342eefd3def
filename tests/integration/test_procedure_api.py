"""The procedure service's HTTP API, served by uvicorn on loopback over the real broker and SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from services.procedure.app import create_app
from shared.config import ApiSettings, KafkaSettings, Settings
from shared.events import EoData, parse_event
from tests.support import serving

pytestmark = pytest.mark.integration

OPERATOR = "operator-token-for-tests"
AUTH = {"Authorization": f"Bearer {OPERATOR}"}


@dataclass
class Api:
    client: httpx.AsyncClient
    settings: Settings

    async def create_eo(self, eori: str, **fields: Any) -> dict[str, Any]:
        body = {"eori": eori, "name": f"EO {eori}", "language": "en", "webhook_url": "https://eo.example/hook",
                "webhook_secret": "a-secret-of-enough-length"} | fields
        response = await self.client.post("/api/v1/eos", json=body, headers=AUTH)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created


@pytest.fixture
async def api(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[Api]:
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
        api=ApiSettings(operator_tokens=[SecretStr(OPERATOR)]),
    )
    async with serving(create_app(settings)) as client:
        yield Api(client, settings)


async def test_auth_is_401_without_credentials_and_403_with_wrong_ones(api: Api) -> None:
    body = {"eori": "LU1", "name": "x"}
    missing = await api.client.post("/api/v1/eos", json=body)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = await api.client.post("/api/v1/eos", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert (await api.client.post("/api/v1/procedures/x/close", json={"reason": "r"})).status_code == 401
    assert (await api.client.get("/api/v1/status")).status_code == 200  # reads are open by default


async def test_eo_registry_validates_hides_secrets_and_publishes_changes(api: Api) -> None:
    created = await api.create_eo("lu0001", email="ops@eo.example")
    assert created["eori"] == "LU0001"
    assert created["api_key"].startswith("luccs_eo_")
    assert created["has_webhook_secret"] is True
    assert "webhook_secret" not in created
    again = await api.client.post("/api/v1/eos", json={"eori": "LU0001", "name": "x"}, headers=AUTH)
    assert again.status_code == 409

    bad_bodies = [
        {"eori": "L", "name": "x"},
        {"eori": "LU1", "name": "x", "language": "it"},
        {"eori": "LU1", "name": "x", "email": "not-an-address"},
        {"eori": "LU1", "name": "x", "webhook_url": "ftp://eo.example/"},
        {"eori": "LU1", "name": "x", "webhook_url": "https://eo.example/"},  # no secret to sign with
        {"eori": "LU1", "name": "x", "webhook_url": "https://eo.example/", "webhook_secret": "short"},
        {"eori": "LU1", "name": "x", "unexpected": 1},
    ]
    for body in bad_bodies:
        response = await api.client.post("/api/v1/eos", json=body, headers=AUTH)
        assert response.status_code == 422, (body, response.text)

    fetched = (await api.client.get("/api/v1/eos/LU0001", headers=AUTH)).json()
    assert "api_key" not in fetched
    assert "a-secret-of-enough-length" not in json.dumps(fetched)
    patched = await api.client.patch("/api/v1/eos/LU0001", json={"language": "de", "email": None}, headers=AUTH)
    assert patched.status_code == 200
    assert (patched.json()["language"], patched.json()["email"]) == ("de", None)
    assert (await api.client.patch("/api/v1/eos/LU9", json={"language": "de"}, headers=AUTH)).status_code == 404

    await api.create_eo("LU0002")
    await api.create_eo("LU0003")
    first = (await api.client.get("/api/v1/eos", params={"limit": 2}, headers=AUTH)).json()
    second = (await api.client.get("/api/v1/eos", params={"limit": 2, "cursor": first["next"]},
                                   headers=AUTH)).json()
    assert [e["eori"] for e in first["items"] + second["items"]] == ["LU0001", "LU0002", "LU0003"]
    assert second["next"] is None

    assert (await api.client.delete("/api/v1/eos/LU0002", headers=AUTH)).status_code == 204
    assert (await api.client.get("/api/v1/eos/LU0002", headers=AUTH)).status_code == 404

    # The detector and the notifier follow the registry through the compacted topic.
    messages = await _read_topic(api.settings, api.settings.kafka.eos_topic, count=5)
    upserts = [(key, parse_event(value, EoData).data) for key, value in messages if value is not None]
    tombstones = [key for key, value in messages if value is None]
    assert [key for key, _ in upserts] == ["LU0001", "LU0001", "LU0002", "LU0003"]
    assert upserts[1][1].language == "de"
    secret = upserts[0][1].webhook_secret
    assert secret is not None
    assert secret.get_secret_value() == "a-secret-of-enough-length"
    assert tombstones == ["LU0002"]


async def test_an_eo_reports_only_for_itself_and_opens_and_closes_scenario_1(api: Api) -> None:
    mine = await api.create_eo("LU0001")
    await api.create_eo("LU0002")
    key = {"Authorization": f"Bearer {mine['api_key']}"}
    down = {"eori": "LU0001", "status": "down", "detail": "our gateway is being replaced"}

    assert (await api.client.post("/api/v1/eo-reports", json=down)).status_code == 401
    bad_key = {"Authorization": "Bearer luccs_eo_forged"}
    assert (await api.client.post("/api/v1/eo-reports", json=down, headers=bad_key)).status_code == 403
    other = await api.client.post("/api/v1/eo-reports", json=down | {"eori": "LU0002"}, headers=key)
    assert other.status_code == 403

    opened = (await api.client.post("/api/v1/eo-reports", json=down, headers=key)).json()
    assert opened["result"] == "open"
    assert (opened["procedure"]["scenario"], opened["procedure"]["origin"]) == ("EO_B2G_UNAVAILABLE", "eo_report")
    repeat = (await api.client.post("/api/v1/eo-reports", json=down, headers=key)).json()
    assert repeat["result"] == "no change"
    listed = (await api.client.get("/api/v1/procedures", params={"eori": "LU0001", "state": "open"},
                                   headers=key)).json()
    assert [p["procedure_id"] for p in listed["items"]] == [opened["procedure"]["procedure_id"]]

    closed = (await api.client.post("/api/v1/eo-reports", json=down | {"status": "up"}, headers=key)).json()
    assert closed["result"] == "close"
    detail = (await api.client.get(f"/api/v1/procedures/{opened['procedure']['procedure_id']}",
                                   headers=AUTH)).json()
    assert [(t["kind"], t["actor"]) for t in detail["timeline"]] == [
        ("open", "eo:LU0001"), ("close", "eo:LU0001")
    ]

    rotated = (await api.client.post("/api/v1/eos/LU0001/api-key", headers=AUTH)).json()
    assert (await api.client.post("/api/v1/eo-reports", json=down, headers=key)).status_code == 403
    fresh = {"Authorization": f"Bearer {rotated['api_key']}"}
    assert (await api.client.post("/api/v1/eo-reports", json=down, headers=fresh)).status_code == 200


async def test_operator_declares_notes_and_closes_with_clear_errors(api: Api) -> None:
    declared = await api.client.post(
        "/api/v1/procedures", json={"scenario": "ADA_B2G_UNAVAILABLE", "reason": "AS4 gateway maintenance"},
        headers=AUTH,
    )
    assert declared.status_code == 201
    procedure = declared.json()
    assert (procedure["state"], procedure["origin"], procedure["auto_close"]) == ("open", "operator", False)

    clash = await api.client.post("/api/v1/procedures", json={"scenario": "LUCCS_UNAVAILABLE", "reason": "x"},
                                  headers=AUTH)
    assert clash.status_code == 409
    assert procedure["procedure_id"] in clash.json()["detail"]
    no_eori = await api.client.post("/api/v1/procedures", json={"scenario": "EO_B2G_UNAVAILABLE", "reason": "x"},
                                    headers=AUTH)
    assert no_eori.status_code == 422
    pid = procedure["procedure_id"]
    assert (await api.client.post(f"/api/v1/procedures/{pid}/confirm", json={"reason": "x"},
                                  headers=AUTH)).status_code == 409
    note = await api.client.post(f"/api/v1/procedures/{pid}/notes", json={"text": "Bureau informed"}, headers=AUTH)
    assert note.status_code == 201
    closed = await api.client.post(f"/api/v1/procedures/{pid}/close", json={"reason": "gateway back"}, headers=AUTH)
    assert closed.json()["state"] == "closed"
    assert (await api.client.post(f"/api/v1/procedures/{pid}/close", json={"reason": "again"},
                                  headers=AUTH)).status_code == 409
    assert (await api.client.post("/api/v1/procedures/nope/close", json={"reason": "x"},
                                  headers=AUTH)).status_code == 404
    assert (await api.client.post(f"/api/v1/procedures/{pid}/close", json={"reason": ""},
                                  headers=AUTH)).status_code == 422
    timeline = (await api.client.get(f"/api/v1/procedures/{pid}")).json()["timeline"]
    assert [t["kind"] for t in timeline] == ["open", "note", "close"]

    assert (await api.client.get("/api/v1/procedures", params={"cursor": "%%%"})).status_code == 400
    assert (await api.client.get("/api/v1/procedures", params={"state": "sleeping"})).status_code == 422
    assert (await api.client.get("/api/v1/procedures", params={"since": "2026-01-01T00:00:00"})).status_code == 400
    assert (await api.client.get("/api/v1/procedures/unknown")).status_code == 404


async def test_procedure_pages_follow_the_cursor(api: Api) -> None:
    ids = []
    for eori in ("LU1", "LU2", "LU3"):
        response = await api.client.post(
            "/api/v1/procedures", json={"scenario": "EO_B2G_UNAVAILABLE", "reason": "test", "eori": eori},
            headers=AUTH,
        )
        ids.append(response.json()["procedure_id"])
    first = (await api.client.get("/api/v1/procedures", params={"limit": 2}, headers=AUTH)).json()
    second = (await api.client.get("/api/v1/procedures", params={"limit": 2, "cursor": first["next"]},
                                   headers=AUTH)).json()
    assert [p["procedure_id"] for p in first["items"] + second["items"]] == list(reversed(ids))
    assert second["next"] is None


async def test_stream_carries_procedure_events_as_they_happen(api: Api) -> None:
    async with api.client.stream("GET", "/api/v1/stream") as stream:
        lines = stream.aiter_lines()
        assert await anext(lines) == ": connected"
        await api.client.post("/api/v1/procedures", json={"scenario": "LUCCS_UNAVAILABLE", "reason": "drill"},
                              headers=AUTH)
        async with asyncio.timeout(10):
            async for line in lines:
                if line.startswith("event: "):
                    assert line == "event: luccs.procedure.opened"
                    data = json.loads((await anext(lines)).removeprefix("data: "))
                    assert data["data"]["scenario"] == "LUCCS_UNAVAILABLE"
                    break


async def _read_topic(settings: Settings, topic: str, *, count: int) -> list[tuple[str, bytes | None]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka.bootstrap_servers,
                                auto_offset_reset="earliest")
    await consumer.start()
    found: list[tuple[str, bytes | None]] = []
    try:
        async with asyncio.timeout(20):
            while len(found) < count:
                batch = await consumer.getmany(timeout_ms=200)
                found += [(r.key.decode(), r.value) for rs in batch.values() for r in rs if r.key is not None]
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
    return found
