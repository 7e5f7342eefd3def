"""The console's data endpoints over a scripted sequence whose timings the test controls (an injected clock), on
SQLite and PostgreSQL: procedure statistics (exact figures, JSON and CSV, scenario 1 only with a token), the
probe latency series, a procedure's fan-out progress, and the console page's live part built from them.

The notifier is a real loopback HTTP server standing in for its reach and deliveries endpoints (the real
notifier runs in tests/e2e/test_status_page.py): the figures it answers are the script's, so the ones the
procedure service derives from them can be checked exactly.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from pydantic import SecretStr

from services.procedure.app import create_app
from services.procedure.handlers import ProcedureService
from services.procedure.migrate import upgrade
from services.procedure.notifier_summary import NotifierSummary
from shared.config import ApiSettings, KafkaSettings, ProcedureSettings, Settings
from shared.db import make_engine
from shared.events import AvailabilityData, CloudEvent, Component, ComponentState, EventType
from tests.integration.test_procedure_history import _RECORD, Clock, _drop_everything
from tests.support import free_port

pytestmark = pytest.mark.integration

TOKEN = "console-data-operator-token"
OPERATOR = {"Authorization": f"Bearer {TOKEN}"}
ADA, NTP, EO = Component.ADA_B2G, Component.NTP, Component.EO_B2G
UP, DOWN = ComponentState.UP, ComponentState.DOWN
DAY = datetime(2026, 3, 2, tzinfo=UTC)
EORI = "LU1234567"
FIRST_NOTICE = [2.0, 4.0, 1.0, 7.0]
"""Seconds until the first EO was reached, as the stand-in notifier reports them, per procedure in opening order."""


def at(hours: float) -> datetime:
    return DAY + timedelta(hours=hours)


def _seen(component: Component, state: ComponentState, moment: datetime, latency_ms: float | None = None,
          ) -> CloudEvent[AvailabilityData]:
    eori = EORI if component == EO else None
    return CloudEvent[AvailabilityData](
        source="/tests", type=EventType.AVAILABILITY_CHANGED, subject=component.value,
        data=AvailabilityData(
            target_id=f"eo:{EORI}" if eori else component.value, component=component, eori=eori,
            detector_instance="d1", state=state, since=moment, observed_at=moment, probe="as4", ok=state == UP,
            reason="ok" if state == UP else "refused", latency_ms=latency_ms,
        ),
    )


async def _script(service: ProcedureService, clock: Clock) -> None:
    """Scenario 2 01:00-01:30 (30 min); scenario 2 from 02:00, 3 from 02:20, closed 03:00 (60 min, opened in 2);
    scenario 3 04:00-04:15 (15 min); the EO's own endpoint down from 05:00 (scenario 1, still open).
    Latency of ADA B2G: 100 and 300 ms in the 00:00 slot, 50 ms at 00:05; NTP 40 ms at 00:00."""
    steps: list[tuple[float, list[tuple[Component, ComponentState, float | None]]]] = [
        (0, [(ADA, UP, 100.0), (NTP, UP, 40.0), (EO, UP, None)]),
        (1 / 60, [(ADA, UP, 300.0)]),
        (5 / 60, [(ADA, UP, 50.0)]),
        (1, [(ADA, DOWN, None), (NTP, UP, None)]), (1.5, [(ADA, UP, None)]),
        (2, [(ADA, DOWN, None)]), (2 + 1 / 3, [(NTP, DOWN, None)]), (3, [(ADA, UP, None), (NTP, UP, None)]),
        (4, [(ADA, DOWN, None), (NTP, DOWN, None)]), (4.25, [(ADA, UP, None), (NTP, UP, None)]),
        (5, [(EO, DOWN, None), (ADA, UP, None), (NTP, UP, None)]),
    ]
    for hours, seen in steps:
        clock.now = at(hours)
        await service.on_availability_batch([(_seen(c, s, clock.now, ms), _RECORD) for c, s, ms in seen])
    clock.now = at(6)


class StandInNotifier:
    """A loopback HTTP server answering the notifier's reach and deliveries queries with scripted figures."""

    def __init__(self) -> None:
        self.reach: dict[str, dict[str, Any]] = {}
        self.failing: dict[tuple[str, str], list[str | None]] = {}
        self.authorizations: set[str | None] = set()
        app = FastAPI()

        @app.get("/api/v1/procedures/{procedure_id}/reach")
        async def reach(procedure_id: str, request: Request) -> dict[str, Any]:
            self.authorizations.add(request.headers.get("authorization"))
            if procedure_id not in self.reach:
                raise HTTPException(404, "unknown")
            return self.reach[procedure_id]

        @app.get("/api/v1/deliveries")
        async def deliveries(procedure_id: str, status: str) -> dict[str, Any]:
            eoris = self.failing.get((procedure_id, status), [])
            return {"items": [{"eori": e, "status": status} for e in eoris], "next": None}

        @app.get("/api/v1/deliveries/summary")
        async def summary() -> dict[str, Any]:
            return {"counts": {"delivered": 3}, "total": 3}

        self.app = app


@dataclass
class Scripted:
    client: httpx.AsyncClient
    procedures: list[dict[str, Any]]
    """Every procedure of the script, in opening order."""
    notifier: StandInNotifier


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def scripted(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Scripted]:
    url = f"sqlite:///{tmp_path / 'procedure.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "postgres_url")
    engine = make_engine(url)
    if request.param == "postgresql":
        await _drop_everything(engine)
    await upgrade(engine)
    await engine.dispose()
    notifier = StandInNotifier()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(notifier.app, host="127.0.0.1", port=port, log_config=None))
    serving = asyncio.create_task(server.serve())
    async with asyncio.timeout(30):
        while not server.started:
            await asyncio.sleep(0.02)
    clock = Clock(at(0))
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        api=ApiSettings(operator_tokens=[SecretStr(TOKEN)]),
        procedure=ProcedureSettings(database_url=url, stale_after_s=36000, notifier_url=f"http://127.0.0.1:{port}",
                                    notifier_token=SecretStr("notifier-bureau-token")),
    )
    app = create_app(settings, clock=clock)
    app.state.procedures.leadership = None  # decided unfenced, without the lifespan (see test_procedure_history)
    assert isinstance(app.state.notifier_summary, NotifierSummary)
    await _script(app.state.procedures, clock)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://procedure") as client:
            listed = (await client.get("/api/v1/procedures", headers=OPERATOR)).json()["items"]
            procedures = sorted(listed, key=lambda p: p["opened_at"])
            for procedure, seconds in zip(procedures, FIRST_NOTICE, strict=True):
                notifier.reach[procedure["procedure_id"]] = {
                    "procedure_id": procedure["procedure_id"], "opened_at": procedure["opened_at"], "concerned": 5,
                    "reached": 2, "unreached": [{"eori": e, "channel": "webhook", "last_error": "503"}
                                                for e in ("LU0000001", "LU0000002", "LU0000003")],
                    "reached_50_s": None, "reached_99_s": None, "reached_all_s": None, "first_reached_s": seconds,
                }
            yield Scripted(client, procedures, notifier)
    finally:
        await app.state.sessions.kw["bind"].dispose()
        server.should_exit = True
        await serving


def _iso(hours: float) -> str:
    return at(hours).isoformat().replace("+00:00", "Z")


WINDOW = {"from": _iso(0), "to": _iso(6)}
NATIONAL_FIGURES = [
    {"scenario": "ADA_B2G_UNAVAILABLE", "opened": 2, "closed": 2, "open_p50_s": 1800.0, "open_max_s": 3600.0,
     "first_notice_p50_s": 2.0, "first_notice_max_s": 4.0, "first_notice_known": 2},
    {"scenario": "LUCCS_UNAVAILABLE", "opened": 1, "closed": 1, "open_p50_s": 900.0, "open_max_s": 900.0,
     "first_notice_p50_s": 1.0, "first_notice_max_s": 1.0, "first_notice_known": 1},
]
EO_FIGURES = {"scenario": "EO_B2G_UNAVAILABLE", "opened": 1, "closed": 0, "open_p50_s": None, "open_max_s": None,
              "first_notice_p50_s": 7.0, "first_notice_max_s": 7.0, "first_notice_known": 1}


async def test_procedure_statistics_have_the_exact_figures(scripted: Scripted) -> None:
    # The second one ended in scenario 3 but opened in 2: it counts for 2.
    assert [p["scenario"] for p in scripted.procedures] == [
        "ADA_B2G_UNAVAILABLE", "LUCCS_UNAVAILABLE", "LUCCS_UNAVAILABLE", "EO_B2G_UNAVAILABLE"]
    national = await scripted.client.get("/api/v1/history/procedures", params=WINDOW)
    assert national.status_code == 200, national.text
    assert national.json() == {"from": _iso(0), "to": _iso(6), "items": NATIONAL_FIGURES, "notifier_problem": None,
                               "next": None}
    everything = await scripted.client.get("/api/v1/history/procedures", params=WINDOW, headers=OPERATOR)
    assert everything.json()["items"] == [EO_FIGURES, *NATIONAL_FIGURES]
    assert scripted.notifier.authorizations == {"Bearer notifier-bureau-token"}
    # A window that leaves out the first opening: what opened in it only.
    later = await scripted.client.get("/api/v1/history/procedures", params={"from": _iso(1.75), "to": _iso(6)})
    assert [(i["scenario"], i["opened"], i["open_max_s"]) for i in later.json()["items"]] == [
        ("ADA_B2G_UNAVAILABLE", 1, 3600.0), ("LUCCS_UNAVAILABLE", 1, 900.0)]


async def test_procedure_statistics_as_csv(scripted: Scripted) -> None:
    response = await scripted.client.get("/api/v1/history/procedures", params=WINDOW,
                                         headers={"Accept": "text/csv"})
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert rows[0] == {"scenario": "ADA_B2G_UNAVAILABLE", "opened": "2", "closed": "2", "open_p50_s": "1800.0",
                       "open_max_s": "3600.0", "first_notice_p50_s": "2.0", "first_notice_max_s": "4.0",
                       "first_notice_known": "2"}
    assert [r["scenario"] for r in rows] == ["ADA_B2G_UNAVAILABLE", "LUCCS_UNAVAILABLE"]


async def test_statistics_say_why_first_notices_are_missing_when_the_notifier_does_not_answer(
    scripted: Scripted,
) -> None:
    scripted.notifier.reach.clear()
    gone = NotifierSummary(url=f"http://127.0.0.1:{free_port()}", token=None)
    app = scripted.client._transport.app  # type: ignore[attr-defined]
    app.state.notifier_summary = gone
    response = (await scripted.client.get("/api/v1/history/procedures", params=WINDOW)).json()
    assert "did not answer" in response["notifier_problem"]
    assert [(i["opened"], i["first_notice_p50_s"]) for i in response["items"]] == [(2, None), (1, None)]


async def test_latency_series_per_five_minutes(scripted: Scripted) -> None:
    response = await scripted.client.get("/api/v1/history/latency",
                                         params={"from": _iso(0), "to": _iso(1), "component": "ada_b2g"})
    assert response.status_code == 200, response.text
    assert response.json() == {"step_s": 300, "items": [
        {"component": "ada_b2g", "slot_start": _iso(0), "samples": 2, "mean_ms": 200.0, "max_ms": 300.0},
        {"component": "ada_b2g", "slot_start": _iso(5 / 60), "samples": 1, "mean_ms": 50.0, "max_ms": 50.0},
    ], "next": None}
    both = (await scripted.client.get("/api/v1/history/latency", params={"from": _iso(0), "to": _iso(1)})).json()
    assert [(i["component"], i["samples"]) for i in both["items"]] == [("ada_b2g", 2), ("ada_b2g", 1), ("ntp", 1)]
    bad = await scripted.client.get("/api/v1/history/latency", params={"from": _iso(1), "to": _iso(0)})
    assert bad.status_code == 422 and "from must be before to" in bad.text


async def test_fan_out_progress_sorts_the_unreached(scripted: Scripted) -> None:
    procedure = scripted.procedures[0]["procedure_id"]
    scripted.notifier.failing = {(procedure, "retrying"): ["LU0000001", None],
                                 (procedure, "dead"): ["LU0000001", "LU0000002", "LU9999999"]}
    response = await scripted.client.get(f"/api/v1/procedures/{procedure}/fanout")
    assert response.status_code == 200, response.text
    assert response.json() == {"procedure_id": procedure, "notified": True, "concerned": 5, "reached": 2,
                               "retrying": 1, "dead": 1, "pending": 1, "complete": True}
    eo_procedure = scripted.procedures[3]["procedure_id"]
    assert (await scripted.client.get(f"/api/v1/procedures/{eo_procedure}/fanout")).status_code == 401
    assert (await scripted.client.get(f"/api/v1/procedures/{eo_procedure}/fanout", headers=OPERATOR)).status_code \
        == 200
    assert (await scripted.client.get("/api/v1/procedures/nope/fanout")).status_code == 404
    scripted.notifier.reach.pop(procedure)
    unknown = (await scripted.client.get(f"/api/v1/procedures/{procedure}/fanout")).json()
    assert (unknown["notified"], unknown["concerned"]) == (False, 0)


async def test_the_console_shows_bars_chart_and_the_eo_table_only_to_who_may_read_it(scripted: Scripted) -> None:
    anonymous = (await scripted.client.get("/")).text
    assert anonymous.count('class="cell l-') == 2 * 90
    assert 'data-day="2026-03-02" data-level="low" data-outages="3"' in anonymous  # ADA B2G: 3 outages that day
    assert "<polyline" in anonymous and "LU1234567" not in anonymous and 'id="eo-down"' not in anonymous
    live = await scripted.client.get("/console/live", headers=OPERATOR)
    assert live.status_code == 200
    assert '<tr data-eori="LU1234567"><td>LU1234567</td><td>2026-03-02 05:00:00 UTC</td><td>refused</td>' in live.text
    assert 'data-action="close"' in live.text
    french = (await scripted.client.get("/console/live", params={"lang": "fr"})).text
    assert "Disponibilité, 90 derniers jours" in french and 'data-action=' not in french
    assert (await scripted.client.get("/console/live", headers={"Authorization": "Bearer wrong"})).status_code == 403


async def test_with_read_requires_token_the_page_holds_no_data_and_its_live_part_needs_a_token(
    tmp_path: Path,
) -> None:
    settings = Settings(
        data_dir=tmp_path, kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        api=ApiSettings(operator_tokens=[SecretStr(TOKEN)], read_requires_token=True),
        procedure=ProcedureSettings(notifier_url=None),
    )
    engine = make_engine(settings.database_url("procedure"))
    await upgrade(engine)
    await engine.dispose()
    app = create_app(settings)
    app.state.procedures.leadership = None  # no lifespan (see the scripted fixture)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://procedure") as client:
            shell = await client.get("/")
            assert shell.status_code == 200
            assert "Sign in to see the status" in shell.text and 'data-component="ada_b2g"' not in shell.text
            assert (await client.get("/console/live")).status_code == 401
            live = await client.get("/console/live", headers=OPERATOR)
            assert live.status_code == 200 and 'data-component="ada_b2g"' in live.text
            assert (await client.get("/api/v1/history/procedures")).status_code == 401
    finally:
        await app.state.sessions.kw["bind"].dispose()
