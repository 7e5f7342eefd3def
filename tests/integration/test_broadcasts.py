"""Broadcasts of the Servicedesk and the Bureau, end to end over the real broker: the procedure service's API
(uvicorn on loopback) records and publishes them, a notifier consuming the procedures topic delivers them to
real webhook receivers, each EO once, in its language, signed with its own secret."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from shared.config import ApiSettings, KafkaSettings, Settings
from shared.events import EventType, Language
from tests.integration.pipeline import ProcedureAndNotifier as Pipeline
from tests.integration.pipeline import procedure_and_notifier
from tests.support import eventually

pytestmark = pytest.mark.integration

OPERATOR = "operator-token-for-tests"
BUREAU = "bureau-token-for-tests"
OPS = {"Authorization": f"Bearer {OPERATOR}"}
EOS = {"LU0000000001": Language.FR, "LU0000000002": Language.EN, "LU0000000003": Language.DE}
TEXT = {"fr": "Appelez le bureau au 123.", "en": "Call the office on 123.", "de": "Rufen Sie das Amt unter 123 an."}
BROADCAST = EventType.PROCEDURE_BROADCAST.value


@pytest.fixture
async def pipeline(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[Pipeline]:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    settings = Settings(data_dir=tmp_path, kafka=kafka,
                        api=ApiSettings(operator_tokens=[SecretStr(OPERATOR)], bureau_tokens=[SecretStr(BUREAU)]))
    async with procedure_and_notifier(settings, tmp_path=tmp_path, eos=EOS) as running:
        yield running


async def _declare(client: httpx.AsyncClient, **body: Any) -> str:
    response = await client.post("/api/v1/procedures", json={"reason": "planned test", **body}, headers=OPS)
    assert response.status_code == 201, response.text
    procedure_id: str = response.json()["procedure_id"]
    return procedure_id


def _signed_by(secret: str, headers: dict[str, str], body: bytes) -> bool:
    parts = dict(p.split("=", 1) for p in headers["X-Luccs-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


async def test_a_national_broadcast_reaches_every_eo_once_in_its_language(pipeline: Pipeline) -> None:
    client = pipeline.client
    procedure_id = await _declare(client, scenario="LUCCS_UNAVAILABLE")
    url = f"/api/v1/procedures/{procedure_id}/broadcasts"

    missing = await client.post(url, json={"text": {"fr": "x", "en": "y"}, "author": "bureau"}, headers=OPS)
    assert missing.status_code == 422
    assert "missing in de" in missing.text
    unknown = await client.post("/api/v1/procedures/nope/broadcasts", json={"text": TEXT, "author": "bureau"},
                                headers=OPS)
    assert unknown.status_code == 404
    # The Bureau speaks for itself: its token may broadcast.
    sent = await client.post(url, json={"text": TEXT, "author": "bureau"},
                             headers={"Authorization": f"Bearer {BUREAU}"})
    assert sent.status_code == 201, sent.text
    assert sent.json()["scope"] == "national"

    await eventually(lambda: len(pipeline.hooks.of_type(BROADCAST)) >= len(EOS),
                     timeout=30, what="the broadcast at every EO")
    await asyncio.sleep(0.5)  # nothing more is on its way
    received = pipeline.hooks.of_type(BROADCAST)
    assert sorted(hook.path for hook in received) == sorted(f"/{eori}" for eori in EOS)
    for hook in received:
        eori = hook.path.strip("/")
        data = hook.event["data"]
        assert data["language"] == EOS[eori].value
        assert data["message"] == TEXT[EOS[eori].value]
        assert data["broadcast"]["author"] == "bureau"
        assert data["procedure_id"] == procedure_id
        assert _signed_by(f"secret-{eori}", hook.headers, hook.body)
        assert hook.headers["Idempotency-Key"]

    detail = (await client.get(f"/api/v1/procedures/{procedure_id}", headers=OPS)).json()
    assert [t["kind"] for t in detail["timeline"]].count("broadcast") == 1

    closed = await client.post(f"/api/v1/procedures/{procedure_id}/close", json={"reason": "over"}, headers=OPS)
    assert closed.status_code == 200, closed.text
    late = await client.post(url, json={"text": TEXT, "author": "servicedesk"}, headers=OPS)
    assert late.status_code == 409


async def test_a_scenario_1_broadcast_reaches_only_that_eo(pipeline: Pipeline) -> None:
    eori = "LU0000000003"
    procedure_id = await _declare(pipeline.client, scenario="EO_B2G_UNAVAILABLE", eori=eori)
    sent = await pipeline.client.post(f"/api/v1/procedures/{procedure_id}/broadcasts",
                                      json={"text": TEXT, "author": "servicedesk"}, headers=OPS)
    assert sent.status_code == 201, sent.text
    assert sent.json()["eori"] == eori
    await eventually(lambda: len(pipeline.hooks.of_type(BROADCAST)) >= 1, timeout=30, what="the broadcast")
    await asyncio.sleep(1.0)  # time for a wrong one to arrive
    received = pipeline.hooks.of_type(BROADCAST)
    assert [hook.path for hook in received] == [f"/{eori}"]
    assert received[0].event["data"]["message"] == TEXT["de"]
