"""Every route of every service, for every kind of caller: the status the roles table (shared.roles.ROUTES) says.

The routes come from each app's own route table, so a route added without an entry in the roles table
fails here (and the app refuses to build). Callers: no credentials, a wrong token, a viewer, an operator,
the bureau, EO A (whose data the path names) and EO B (another EORI). Every response is searched for
secrets, key hashes and, for callers that may not read them, the other EOs' EORIs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from services.detector.domain import ProbeResult
from services.detector.metrics import DetectorMetrics
from services.detector.probes import Prober
from services.detector.service import Detector
from services.detector.targets import from_settings
from services.notifier.migrate import upgrade as upgrade_notifier
from services.notifier.models import DeliveryRow, EoRow, NoticeRow
from shared.config import ApiSettings, DetectorSettings, KafkaSettings, ProcedureSettings, Settings, TargetSettings
from shared.events import AvailabilityData, CloudEvent, EoData
from shared.logging import record_fields
from shared.roles import ROUTES, Role, Rule, Service
from tests.support import free_port

pytestmark = pytest.mark.integration

EO_A, EO_B = "LU0000000001", "LU0000000002"
WEBHOOK_SECRET = "webhook-secret-never-shown-again"
TOKENS = {
    Role.VIEWER: "viewer-token-for-role-tests",
    Role.OPERATOR: "operator-token-for-role-tests",
    Role.BUREAU: "bureau-token-for-role-tests",
}
WRONG = "wrong-token-for-role-tests"
CALLERS = ("none", "wrong", "viewer", "bureau", "eo_other", "eo_own", "operator")  # the one allowed to write last


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _api(*, reads_open: bool) -> ApiSettings:
    return ApiSettings(
        viewer_tokens=[SecretStr(f"wallboard:{TOKENS[Role.VIEWER]}")],
        operator_tokens=[SecretStr(f"alice:{TOKENS[Role.OPERATOR]}")],
        # The bureau's token is configured by its hash only: the configuration holds nothing usable.
        bureau_tokens=[SecretStr(f"bdr:sha256:{_sha256(TOKENS[Role.BUREAU])}")],
        read_requires_token=not reads_open,
        auth_failure_limit=10_000,  # this test fails authentication on purpose, many times
    )


@dataclass
class World:
    """The callers' credentials and what none of the responses may contain."""

    keys: dict[str, str] = field(default_factory=dict)  # EORI -> API key
    procedure_of_a: str = ""

    def headers(self, caller: str) -> dict[str, str]:
        token = {"none": None, "wrong": WRONG, "eo_own": self.keys.get(EO_A), "eo_other": self.keys.get(EO_B),
                 "viewer": TOKENS[Role.VIEWER], "operator": TOKENS[Role.OPERATOR],
                 "bureau": TOKENS[Role.BUREAU]}[caller]
        return {"Authorization": f"Bearer {token}"} if token else {}

    def secrets(self) -> list[str]:
        found = [WEBHOOK_SECRET, WRONG, *TOKENS.values(), *self.keys.values()]
        return found + [_sha256(s) for s in found]


def _role(caller: str) -> Role | None:
    return {"viewer": Role.VIEWER, "operator": Role.OPERATOR, "bureau": Role.BUREAU, "eo_own": Role.EO,
            "eo_other": Role.EO}.get(caller)


def expected(rule: Rule, caller: str, *, reads_open: bool, concerns_a: bool) -> int | None:
    """The status the table implies: 401, 403, or None for "allowed" (the route's own success status)."""
    if rule.anonymous == "always":
        return None
    if caller == "none":
        anonymous_ok = rule.anonymous == "if_reads_open" and reads_open
        return None if anonymous_ok and not concerns_a else 401
    if caller == "wrong":
        return 403
    role = _role(caller)
    if role not in rule.roles:
        return 403
    # EO A's data: readable by operators, the bureau and EO A only.
    if concerns_a and caller not in ("operator", "bureau", "eo_own"):
        return 403
    return None


def _check_body(text: str, caller: str, world: World, *, fresh_key: str | None = None) -> None:
    for secret in world.secrets():
        if secret != fresh_key:
            assert secret not in text, f"a secret or key hash in a response to {caller}"
    foreign = {"eo_own": [EO_B], "eo_other": [EO_A], "viewer": [EO_A, EO_B], "none": [EO_A, EO_B],
               "wrong": [EO_A, EO_B]}.get(caller, [])
    for eori in foreign:
        assert eori not in text, f"{eori}'s data in a response to {caller}"


def _routes(app: FastAPI, service: Service) -> list[tuple[str, str]]:
    found = sorted({(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods or ()})
    missing = [key for key in found if key not in ROUTES[service]]
    assert not missing, f"routes of the {service} without an entry in the roles table: {missing}"
    return found


async def _run(
    client: httpx.AsyncClient,
    service: Service,
    routes: list[tuple[str, str]],
    *,
    world: World,
    reads_open: bool,
    paths: Mapping[str, str],
    bodies: Mapping[tuple[str, str], Any],
    success: Mapping[tuple[str, str], set[int]],
    concerns_a: set[tuple[str, str]],
    last: tuple[tuple[str, str], ...] = (),
) -> int:
    checked = 0
    ordered = [r for r in routes if r not in last] + [r for r in last if r in routes]
    for method, path in ordered:
        rule = ROUTES[service][(method, path)]
        url = path.format(**paths)
        for caller in CALLERS:
            want = expected(rule, caller, reads_open=reads_open, concerns_a=(method, path) in concerns_a)
            headers = world.headers(caller)
            if path.endswith("/stream"):
                async with client.stream(method, url, headers=headers) as response:
                    status, text = response.status_code, ""
                    if status == 200:
                        text = await anext(response.aiter_lines())
                    else:
                        text = (await response.aread()).decode()
            else:
                response = await client.request(method, url, headers=headers, json=bodies.get((method, path)))
                status, text = response.status_code, response.text
            where = f"{service}: {caller} {method} {url} -> {status} {text[:200]}"
            if want is None:
                assert status in success.get((method, path), {200}), where
            else:
                assert status == want, where
                assert set(json.loads(text)) == {"detail"}, where  # one error shape
                if want == 401:
                    assert response.headers["WWW-Authenticate"] == "Bearer", where
            fresh = json.loads(text).get("api_key") if status in (200, 201) and "api_key" in text else None
            if fresh and path == "/api/v1/eos/{eori}/api-key":
                world.keys[EO_A] = fresh
            _check_body(text, caller, world, fresh_key=fresh)
            checked += 1
    return checked


# ---- procedure service ---------------------------------------------------------------------------------


@pytest.fixture
async def procedure(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str,
                    request: pytest.FixtureRequest) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI, bool]]:
    from services.procedure.app import create_app

    reads_open: bool = request.param
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
        api=_api(reads_open=reads_open),
        procedure=ProcedureSettings(notifier_url=None),
    )
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    task = asyncio.create_task(server.serve())
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        async with asyncio.timeout(60):
            while not server.started:
                await asyncio.sleep(0.05)
        yield client, app, reads_open
    server.should_exit = True
    await task


@pytest.mark.parametrize("procedure", [True, False], ids=["reads-open", "reads-need-a-token"], indirect=True)
async def test_procedure_service_routes_by_role(procedure: tuple[httpx.AsyncClient, FastAPI, bool]) -> None:
    client, app, reads_open = procedure
    world = World()
    operator = world.headers("operator")
    for eori in (EO_A, EO_B, "LU0000000003"):
        created = await client.post("/api/v1/eos", headers=operator, json={
            "eori": eori, "name": f"EO {eori}", "webhook_url": "https://eo.example/hook",
            "webhook_secret": WEBHOOK_SECRET, "as4_endpoint": "https://as4.eo.example/msh",
        })
        assert created.status_code == 201, created.text
        world.keys[eori] = created.json()["api_key"]
    declared = await client.post("/api/v1/procedures", headers=operator,
                                 json={"scenario": "EO_B2G_UNAVAILABLE", "reason": "gateway", "eori": EO_A})
    world.procedure_of_a = declared.json()["procedure_id"]
    other = await client.post("/api/v1/procedures", headers=operator,
                              json={"scenario": "EO_B2G_UNAVAILABLE", "reason": "gateway", "eori": EO_B})
    assert other.status_code == 201

    # The listings show each caller only what it may read (both EOs have a scenario-1 procedure).
    for caller, visible in (("eo_own", {EO_A}), ("eo_other", {EO_B}), ("viewer", set()), ("bureau", {EO_A, EO_B})):
        listed = (await client.get("/api/v1/procedures", headers=world.headers(caller))).json()["items"]
        assert {p["eori"] for p in listed} == visible, caller
        status = (await client.get("/api/v1/status", headers=world.headers(caller))).json()
        assert {p["eori"] for p in status["procedures"]} == visible, caller

    routes = _routes(app, "procedure")
    checked = await _run(
        client, "procedure", routes, world=world, reads_open=reads_open,
        paths={"eori": EO_A, "procedure_id": world.procedure_of_a},
        bodies={
            ("POST", "/api/v1/procedures"): {"scenario": "ADA_B2G_UNAVAILABLE", "reason": "drill"},
            ("POST", "/api/v1/procedures/{procedure_id}/confirm"): {"reason": "r"},
            ("POST", "/api/v1/procedures/{procedure_id}/close"): {"reason": "r"},
            ("POST", "/api/v1/procedures/{procedure_id}/notes"): {"text": "called the EO"},
            ("POST", "/api/v1/eo-reports"): {"eori": EO_A, "status": "down"},
            ("POST", "/api/v1/eos"): {"eori": "LU0000000009", "name": "New EO"},
            ("PATCH", "/api/v1/eos/{eori}"): {"language": "de"},
        },
        success={
            ("POST", "/api/v1/procedures"): {201},
            ("POST", "/api/v1/procedures/{procedure_id}/confirm"): {409},  # open already: auth passed
            ("POST", "/api/v1/procedures/{procedure_id}/notes"): {201},
            ("POST", "/api/v1/eos"): {201},
            ("DELETE", "/api/v1/eos/{eori}"): {204},
            ("GET", "/readyz"): {200, 503},
        },
        concerns_a={
            ("GET", "/api/v1/procedures/{procedure_id}"), ("GET", "/api/v1/eos/{eori}"),
            ("POST", "/api/v1/eo-reports"),  # EO B speaking for EO A
        },
        last=(("POST", "/api/v1/eos/{eori}/api-key"), ("DELETE", "/api/v1/eos/{eori}")),
    )
    assert checked == len(routes) * len(CALLERS)



async def test_the_timeline_and_the_audit_log_name_the_actor(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    from services.procedure.app import create_app

    settings = Settings(data_dir=tmp_path, api=_api(reads_open=False),
                        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
                        procedure=ProcedureSettings(notifier_url=None))
    app = create_app(settings)
    operator = {"Authorization": f"Bearer {TOKENS[Role.OPERATOR]}"}
    caplog.set_level("INFO", logger="luccs.audit")
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("192.0.2.7", 4711)), base_url="http://procedure"
    ) as client:
        declared = (await client.post("/api/v1/procedures", headers=operator,
                                      json={"scenario": "LUCCS_UNAVAILABLE", "reason": "drill"})).json()
        pid = declared["procedure_id"]
        await client.post(f"/api/v1/procedures/{pid}/close", headers=operator, json={"reason": "over"})
        timeline = (await client.get(f"/api/v1/procedures/{pid}", headers=operator)).json()["timeline"]
        refused = await client.post(f"/api/v1/procedures/{pid}/notes", headers={"Authorization": "Bearer x"},
                                    json={"text": "t"})
    assert refused.status_code == 403
    assert [(t["kind"], t["actor"]) for t in timeline] == [("open", "operator:alice"), ("close", "operator:alice")]
    lines = [record_fields(r) for r in caplog.records if r.name == "luccs.audit"]
    close = next(line for line in lines if line["action"] == "POST /api/v1/procedures/{procedure_id}/close")
    assert close == {"actor": "operator:alice", "role": "operator", "from": "192.0.2.7", "status": 200,
                     "action": "POST /api/v1/procedures/{procedure_id}/close", "procedure_id": pid}
    assert any(line["status"] == 403 and line["actor"] is None for line in lines)
    assert "Bearer x" not in caplog.text and TOKENS[Role.OPERATOR] not in caplog.text


# ---- notifier ------------------------------------------------------------------------------------------


async def test_notifier_routes_by_role(tmp_path: Path) -> None:
    from services.notifier.app import create_app

    world = World(keys={EO_A: "luccs_eo_key-of-eo-a", EO_B: "luccs_eo_key-of-eo-b"})
    settings = Settings(data_dir=tmp_path, api=_api(reads_open=True))
    app = create_app(settings)  # its lifespan (the broker) is not needed to read the delivery log
    sessions = app.state.sessions
    await upgrade_notifier(sessions.kw["bind"])
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        notice = NoticeRow(event_id="e1", audience="eo", language="en", variant="", subject="s", message="m")
        session.add(notice)
        await session.flush()
        for eori in (EO_A, EO_B):
            session.add(EoRow(eori=eori, name=eori, language="en", email=None, webhook_url="https://eo.example/h",
                              webhook_secret=WEBHOOK_SECRET, api_key_hash=_sha256(world.keys[eori]), updated_at=now))
            session.add(DeliveryRow(
                id=str(uuid.uuid4()), event_id="e1", event_type="luccs.procedure.opened", procedure_id="p1",
                notice_id=notice.id, audience="eo", recipient_key=eori, eori=eori, channel="webhook",
                recipient=f"https://{eori}.example/hook", lane="l", idempotency_key=f"k-{eori}", status="dead",
                attempts=1, created_at=now, updated_at=now,
            ))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notifier") as client:
        routes = _routes(app, "notifier")
        reach = ("GET", "/api/v1/procedures/{procedure_id}/reach")
        checked = await _run(client, "notifier", routes, world=world, reads_open=True,
                             paths={"procedure_id": "p1"}, bodies={},
                             success={("GET", "/readyz"): {200, 503}, reach: {200, 404}}, concerns_a=set())
        assert checked == len(routes) * len(CALLERS)
        own = (await client.get("/api/v1/deliveries", headers=world.headers("eo_own"))).json()["items"]
        assert [d["eori"] for d in own] == [EO_A]
        asked = await client.get("/api/v1/deliveries", params={"eori": EO_B}, headers=world.headers("eo_own"))
        assert asked.status_code == 403
        every = (await client.get("/api/v1/deliveries", headers=world.headers("bureau"))).json()["items"]
        assert {d["eori"] for d in every} == {EO_A, EO_B}
        summary = (await client.get("/api/v1/deliveries/summary")).json()
        assert summary == {"counts": {"dead": 2}, "total": 2}
    await sessions.kw["bind"].dispose()


# ---- detector ------------------------------------------------------------------------------------------


async def _discard(_target_id: str, _event: CloudEvent[AvailabilityData]) -> None:
    return None


@pytest.mark.parametrize("reads_open", [True, False])
async def test_detector_routes_by_role(tmp_path: Path, reads_open: bool) -> None:
    from services.detector.app import create_app

    world = World()
    config = DetectorSettings(instance_id="roles", interval_s=60)
    settings = Settings(data_dir=tmp_path, api=_api(reads_open=reads_open), detector=config)
    app = create_app(settings)
    detector = Detector(settings=config, prober=Prober(), send=_discard,
                        metrics=DetectorMetrics.create(CollectorRegistry()))
    national = from_settings(TargetSettings(id="ntp", component="ntp", url="http://ntp.example.lu/"), config)
    detector.put(national)
    world.keys = {EO_A: "luccs_eo_key-of-eo-a", EO_B: "luccs_eo_key-of-eo-b"}
    for eori in (EO_A, EO_B):  # the registry topic carries each EO's key hash, never the key
        detector.on_eo(EoData(eori=eori, name=eori, as4_endpoint=f"https://as4.{eori.lower()}.example/msh",
                              api_key_hash=_sha256(world.keys[eori])))
    detector.record(national, ProbeResult(True, "ok", datetime.now(UTC), 3.0, "HTTP 200"))
    detector.record(detector.targets[f"eo:{EO_A}"], ProbeResult(True, "ok", datetime.now(UTC), 3.0, None))
    app.state.detector = detector
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://detector") as client:
        routes = _routes(app, "detector")
        checked = await _run(client, "detector", routes, world=world, reads_open=reads_open,
                             paths={"target_id": f"eo:{EO_A}"}, bodies={},
                             success={("GET", "/readyz"): {200, 503}, ("GET", "/healthz"): {200, 503}},
                             concerns_a={("GET", "/api/v1/targets/{target_id}")})
        assert checked == len(routes) * len(CALLERS)
        for caller, ids in (("viewer", ["ntp"]), ("eo_own", [f"eo:{EO_A}", "ntp"]),
                            ("bureau", [f"eo:{EO_A}", f"eo:{EO_B}", "ntp"])):
            listed = (await client.get("/api/v1/targets", headers=world.headers(caller))).json()["items"]
            assert [t["id"] for t in listed] == ids


# ---- the shipped examples ----------------------------------------------------------------------------


async def test_the_shipped_configurations_show_no_eo_data_without_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.notifier.app import create_app as notifier_app
    from services.procedure.app import create_app as procedure_app
    from shared.config import load_settings
    from tests.integration.test_deploy_files import CONTAINER, DEPLOY, shipped_configurations

    shipped = [*shipped_configurations(tmp_path, monkeypatch), CONTAINER / "luccs.toml",
               DEPLOY / "demo" / "luccs.toml", DEPLOY / "luccs.example.toml"]
    eo_data = {
        "procedure": ["/api/v1/eos", f"/api/v1/eos/{EO_A}", f"/api/v1/procedures?eori={EO_A}"],
        "notifier": ["/api/v1/deliveries", f"/api/v1/deliveries?eori={EO_A}"],
    }  # the detector's EO targets are data it learns at run time: test_detector_routes_by_role covers them
    for path in shipped:
        settings = load_settings(path).model_copy(update={"data_dir": tmp_path / path.parent.name})
        apps = {"procedure": procedure_app(settings), "notifier": notifier_app(settings)}
        for service, app in apps.items():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as client:
                for url in eo_data[service]:
                    response = await client.get(url)
                    assert response.status_code == 401, (path, service, url, response.text)
