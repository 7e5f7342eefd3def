"""What the three services answer in normal use is what their own /openapi.json publishes.

The procedure service, the notifier and the detector run together over the real broker (SQLite in a
temporary directory); a scripted day (register an EO, declare, note, broadcast, an EO's own report, the
notice delivered to its webhook, close, maintenance windows, history, the pages, the bulk registry, and
the usual mistakes) goes through them, and every response is checked against the document of the service
that gave it: status code documented, content type documented, body valid against its schema.
Also: the document declares the bearer schemes, so /docs has "Authorize", and every protected operation
references them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.config import (
    ApiSettings,
    DetectorSettings,
    KafkaSettings,
    NotifierSettings,
    ProcedureSettings,
    Settings,
    TargetSettings,
)
from shared.events import Component
from tests.support import ToggleServer, WebhookReceiver, eventually, free_port

pytestmark = pytest.mark.integration

OPERATOR = "operator-token-for-contracts"
AUTH = {"Authorization": f"Bearer {OPERATOR}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
SECRET = "a-webhook-secret-of-enough-length"


class Checked:
    """An HTTP client of one service whose every response is checked against that service's OpenAPI."""

    def __init__(self, name: str, client: httpx.AsyncClient, spec: dict[str, Any]) -> None:
        self.name = name
        self.client = client
        self.spec = spec
        self.schema = schemathesis.openapi.from_dict(spec)
        self.checked: list[str] = []

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = await self.client.request(method, url, **kwargs)
        path = response.request.url.path
        operation = self.schema.find_operation_by_path(method, path)
        assert operation is not None, f"{self.name}: {method} {path} is not in its OpenAPI document"
        case = operation.Case(path_parameters=_path_parameters(operation.path, path))
        case.validate_response(response, checks=CHECKS)
        self.checked.append(f"{method} {operation.path} {response.status_code}")
        return response

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", url, **kwargs)


def _path_parameters(template: str, path: str) -> dict[str, str]:
    pattern = re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(template))
    found = re.fullmatch(pattern, path)
    assert found is not None, (template, path)
    return found.groupdict()


@contextlib.asynccontextmanager
async def _served(name: str, app: FastAPI) -> AsyncIterator[Checked]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    task = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=15) as client:
            async with asyncio.timeout(60):
                while not server.started:
                    assert not task.done(), f"the {name} app did not start"
                    await asyncio.sleep(0.05)
                while (await client.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.2)
            spec = (await client.get("/openapi.json")).raise_for_status().json()
            yield Checked(name, client, spec)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)


@pytest.fixture
async def services(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[dict[str, Checked]]:
    from services.detector.app import create_app as detector_app
    from services.notifier.app import create_app as notifier_app
    from services.procedure.app import create_app as procedure_app

    portal = ToggleServer()
    portal.up()  # NTP stays up: nothing the probes see changes the script's procedures under it
    ntp = TargetSettings(id="ntp-portal", component=Component.NTP, probe="http", url=portal.url)
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
        api=ApiSettings(operator_tokens=[SecretStr(OPERATOR)]),
        procedure=ProcedureSettings(notifier_url=None),
        notifier=NotifierSettings(allow_insecure_webhooks=True, allow_private_webhooks=True),
        detector=DetectorSettings(instance_id="contract", interval_s=0.5, timeout_s=0.3, targets=[ntp]),
    )
    try:
        async with (_served("procedure", procedure_app(settings)) as procedure,
                    _served("notifier", notifier_app(settings)) as notifier,
                    _served("detector", detector_app(settings)) as detector):
            yield {"procedure": procedure, "notifier": notifier, "detector": detector}
    finally:
        portal.down()


async def test_a_scripted_day_answers_as_each_service_publishes(services: dict[str, Checked]) -> None:
    api, notifier, detector = services["procedure"], services["notifier"], services["detector"]
    receiver = WebhookReceiver().start()
    try:
        for service in services.values():
            for path in ("/healthz", "/readyz", "/metrics"):
                assert (await service.get(path)).status_code == 200

        # The registry.
        eo = {"eori": "LU0001", "name": "EO one", "language": "en", "webhook_url": receiver.url(),
              "webhook_secret": SECRET, "email": "ops@eo.example"}
        created = await api.post("/api/v1/eos", json=eo, headers=AUTH)
        assert created.status_code == 201, created.text
        eo_key = {"Authorization": f"Bearer {created.json()['api_key']}"}
        assert (await api.post("/api/v1/eos", json=eo, headers=AUTH)).status_code == 409
        assert (await api.get("/api/v1/eos", headers=AUTH)).json()["items"][0]["eori"] == "LU0001"
        assert (await api.get("/api/v1/eos/LU0001", headers=eo_key)).status_code == 200
        assert (await api.request("PATCH", "/api/v1/eos/LU0001", json={"name": "EO One SA"}, headers=AUTH)
                ).json()["name"] == "EO One SA"
        assert (await api.post("/api/v1/eos/LU0002/api-key", headers=AUTH)).status_code == 404

        # A national procedure, declared by hand, with a note and a broadcast; the EO's notice delivered.
        declared = await api.post("/api/v1/procedures", json={"scenario": "ADA_B2G_UNAVAILABLE",
                                                               "reason": "AS4 gateway replaced"}, headers=AUTH)
        assert declared.status_code == 201, declared.text
        pid = declared.json()["procedure_id"]
        assert (await api.post(f"/api/v1/procedures/{pid}/confirm", json={"reason": "x"}, headers=AUTH)
                ).status_code == 409
        assert (await api.post(f"/api/v1/procedures/{pid}/notes", json={"text": "Bureau told"}, headers=AUTH)
                ).status_code == 201
        sent = await api.post(f"/api/v1/procedures/{pid}/broadcasts", headers=AUTH, json={
            "author": "servicedesk", "text": {"fr": "Utilisez le portail.", "en": "Use the portal.",
                                              "de": "Nutzen Sie das Portal."}})
        assert sent.status_code == 201, sent.text
        await eventually(lambda: receiver.of_type("luccs.procedure.opened"), timeout=30,
                         what="the opening notice at the EO's webhook")
        deliveries = await notifier.get("/api/v1/deliveries", params={"procedure_id": pid, "limit": 1},
                                        headers=AUTH)
        assert deliveries.json()["items"], deliveries.text
        assert (await notifier.get("/api/v1/deliveries/summary")).json()["total"] >= 1
        assert (await notifier.get(f"/api/v1/procedures/{pid}/reach", headers=AUTH)).json()["concerned"] == 1
        assert (await notifier.get("/api/v1/procedures/nope/reach", headers=AUTH)).status_code == 404

        # The EO reports its own B2G down (scenario 1), and back up.
        down = await api.post("/api/v1/eo-reports", json={"eori": "LU0001", "status": "down"}, headers=eo_key)
        assert down.json()["result"] == "open", down.text
        assert (await api.post("/api/v1/eo-reports", json={"eori": "LU0001", "status": "down"}, headers=eo_key)
                ).json()["result"] == "no change"
        assert (await api.post("/api/v1/eo-reports", json={"eori": "LU0001", "status": "up"}, headers=eo_key)
                ).json()["result"] == "close"

        # Reading it all back, and closing.
        status = (await api.get("/api/v1/status", headers=AUTH)).json()
        assert [p["procedure_id"] for p in status["procedures"]] == [pid]
        page = await api.get("/api/v1/procedures", params={"limit": 1}, headers=AUTH)
        assert page.json()["next"] is not None
        assert (await api.get("/api/v1/procedures", params={"cursor": page.json()["next"]}, headers=AUTH)
                ).json()["items"]
        assert [t["kind"] for t in (await api.get(f"/api/v1/procedures/{pid}")).json()["timeline"]][:2] == [
            "open", "note"]
        closed = await api.post(f"/api/v1/procedures/{pid}/close", json={"reason": "gateway back"}, headers=AUTH)
        assert closed.json()["state"] == "closed"
        assert (await api.get("/api/v1/history", params={"bucket": "day"})).json()["items"]
        assert (await api.get("/api/v1/history", headers={"Accept": "text/csv"})).text.startswith("component,")
        assert (await api.get("/api/v1/outages")).status_code == 200

        # Maintenance windows.
        window = await api.post("/api/v1/maintenances", headers=AUTH, json={
            "component": "ntp", "starts_at": "2099-01-01T20:00:00Z", "ends_at": "2099-01-01T22:00:00Z",
            "reason": "NTP upgrade"})
        assert window.status_code == 201, window.text
        mid = window.json()["maintenance_id"]
        assert (await api.get("/api/v1/maintenances")).json()["items"][0]["maintenance_id"] == mid
        assert (await api.get(f"/api/v1/maintenances/{mid}")).status_code == 200
        assert (await api.request("PATCH", f"/api/v1/maintenances/{mid}", json={"ends_at": "2099-01-01T23:00:00Z"},
                                  headers=AUTH)).status_code == 200
        assert (await api.post(f"/api/v1/maintenances/{mid}/cancel", json={"reason": "postponed"}, headers=AUTH)
                ).json()["state"] == "cancelled"
        assert b"BEGIN:VCALENDAR" in (await api.get("/api/v1/maintenances.ics")).content

        # The pages, and the bulk registry.
        assert (await api.get("/")).status_code == 200
        assert (await api.get("/public", params={"lang": "de"})).status_code == 200
        assert (await api.get("/public/feed.atom")).status_code == 200
        imported = await api.post("/api/v1/eos:import", params={"keys": "none"}, headers=AUTH | {
            "Content-Type": "application/x-ndjson"}, content=b'{"eori": "LU0002", "name": "EO two"}\n{"eori": 1}\n')
        assert (imported.json()["created"], len(imported.json()["rejected"])) == (1, 1), imported.text
        assert b"LU0002" in (await api.get("/api/v1/eos:export", headers=AUTH)).content

        # The usual mistakes, all in the one error shape.
        mistakes = [
            await api.post("/api/v1/eos", json=eo),  # 401
            await api.post("/api/v1/eos", json=eo, headers={"Authorization": "Bearer wrong"}),  # 403
            await api.get("/api/v1/procedures/nope"),  # 404
            await api.post("/api/v1/procedures", json={"scenario": "SOMETIMES"}, headers=AUTH),  # 422
            await api.get("/api/v1/eos", params={"cursor": "not-ours"}, headers=AUTH),  # 400
            await api.post("/api/v1/eos", content=b"x" * 2_000_000, headers=AUTH),  # 413
            await notifier.get("/api/v1/deliveries", params={"cursor": "not-ours"}, headers=AUTH),  # 400
            await detector.get("/api/v1/targets/nope"),  # 404
        ]
        assert [m.status_code for m in mistakes] == [401, 403, 404, 422, 400, 413, 400, 404]
        assert all(isinstance(m.json()["detail"], str) and m.json()["detail"] for m in mistakes)
        assert {e["loc"][-1] for e in mistakes[3].json()["errors"]} == {"scenario", "reason"}

        assert (await api.request("DELETE", "/api/v1/eos/LU0002", headers=AUTH)).status_code == 204
        targets = await detector.get("/api/v1/targets")
        assert [t["id"] for t in targets.json()["items"]] == ["ntp-portal"]
        assert (await detector.get("/api/v1/targets/ntp-portal")).status_code == 200
    finally:
        receiver.stop()
    assert len(api.checked) > 40, api.checked


async def test_openapi_declares_the_bearer_schemes_and_protected_operations_use_them(
    services: dict[str, Checked],
) -> None:
    for service in services.values():
        spec = service.spec
        schemes = spec["components"]["securitySchemes"]
        assert {name: (s["type"], s["scheme"]) for name, s in schemes.items()} == {
            "staffToken": ("http", "bearer"), "eoApiKey": ("http", "bearer")}
        for path, operations in spec["paths"].items():
            for method, operation in operations.items():
                security = operation["security"]
                assert {"staffToken": []} in security or {"eoApiKey": []} in security, (service.name, method, path)
                public = {} in security
                if not public:  # a token is needed: the errors say so in the one shape
                    for code in ("401", "403", "429"):
                        schema = operation["responses"][code]["content"]["application/json"]["schema"]
                        assert schema == {"$ref": "#/components/schemas/ApiError"}, (service.name, method, path)
                for code, response in operation["responses"].items():
                    if code.startswith(("4", "5")):
                        schema = response["content"]["application/json"]["schema"]
                        assert schema["$ref"].rsplit("/", 1)[-1] in {"ApiError", "ImportTooLargeError", "Health",
                                                                     "Readiness"}, (service.name, method, path, code)
                ok = next(r for c, r in operation["responses"].items() if c.startswith("2"))
                assert ok.get("content") or method == "delete", (service.name, method, path)
                for media, body in ok.get("content", {}).items():
                    assert body.get("schema") not in (None, {}), (service.name, method, path, media)
    procedure_ops = services["procedure"].spec["paths"]
    assert procedure_ops["/api/v1/eo-reports"]["post"]["security"] == [{"eoApiKey": []}]
    assert {} not in procedure_ops["/api/v1/procedures"]["post"]["security"]
    assert procedure_ops["/api/v1/procedures"]["post"]["responses"]["201"]["content"]["application/json"][
        "schema"] == {"$ref": "#/components/schemas/ProcedureView"}
