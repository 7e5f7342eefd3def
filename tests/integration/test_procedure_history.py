"""The history and outages API over a scripted day of outages whose timings the test controls (an injected
clock), on SQLite and PostgreSQL: exact figures, in JSON and CSV, paged, and clear errors for bad input.

The app is driven without its lifespan (no broker needed): observations go straight to its procedure
service, as the availability consumer would hand them over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import ConsumerRecord
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.procedure.app import create_app
from services.procedure.handlers import ProcedureService
from services.procedure.migrate import upgrade
from services.procedure.models import Base
from shared.config import KafkaSettings, ProcedureSettings, Settings
from shared.db import make_engine
from shared.events import AvailabilityData, CloudEvent, Component, ComponentState, EventType

pytestmark = pytest.mark.integration

ADA, NTP = Component.ADA_B2G, Component.NTP
UP, DOWN = ComponentState.UP, ComponentState.DOWN
DAY = datetime(2026, 3, 2, tzinfo=UTC)
_RECORD: ConsumerRecord[bytes, bytes] = ConsumerRecord(
    topic="t", partition=0, offset=0, timestamp=0, timestamp_type=0, key=None, value=None, checksum=None,
    serialized_key_size=0, serialized_value_size=0, headers=(),
)


def at(hours: float) -> datetime:
    return DAY + timedelta(hours=hours)


def iso(hours: float) -> str:
    return at(hours).isoformat().replace("+00:00", "Z")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Scripted:
    client: httpx.AsyncClient
    procedures: list[str]
    """The national procedures the script caused, oldest first."""


async def _drop_everything(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.execute(text("DROP TABLE IF EXISTS alembic_version"))


def _seen(component: Component, state: ComponentState, moment: datetime) -> CloudEvent[AvailabilityData]:
    return CloudEvent[AvailabilityData](
        source="/tests", type=EventType.AVAILABILITY_CHANGED, subject=component.value,
        data=AvailabilityData(
            target_id=component.value, component=component, detector_instance="d1", state=state, since=moment,
            observed_at=moment, probe="http", ok=state == UP, reason="scripted",
        ),
    )


async def _script(service: ProcedureService, clock: Clock) -> None:
    """ADA B2G down 01:00-01:30 and 02:20-03:00 and from 05:30 on; NTP down 00:15-00:30 (alone: no
    procedure) and 02:00-02:40 (scenario 3 from 02:20); no observation from 03:00 to 05:00, so both are
    unknown from 04:30 (stale after an hour) to 05:00."""
    steps: list[tuple[float, ComponentState | None, ComponentState | None]] = [
        (0, UP, UP), (0.25, UP, DOWN), (0.5, UP, UP), (1, DOWN, UP), (1.5, UP, UP), (2, UP, DOWN),
        (2 + 1 / 3, DOWN, DOWN), (2 + 2 / 3, DOWN, UP), (3, UP, UP), (4.5, None, None), (5, UP, UP),
        (5.5, DOWN, UP),
    ]
    for hours, ada, ntp in steps:
        clock.now = at(hours)
        if ada is None or ntp is None:
            await service.tick()
        else:
            await service.on_availability_batch([(_seen(ADA, ada, clock.now), _RECORD),
                                                 (_seen(NTP, ntp, clock.now), _RECORD)])
    clock.now = at(6.25)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def scripted(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Scripted]:
    url = f"sqlite:///{tmp_path / 'procedure.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "postgres_url")
    engine = make_engine(url)
    if request.param == "postgresql":
        await _drop_everything(engine)  # tests run one at a time: each starts from an empty schema
    await upgrade(engine)
    await engine.dispose()
    clock = Clock(at(0))
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        procedure=ProcedureSettings(database_url=url, stale_after_s=3600, notifier_url=None),
    )
    app = create_app(settings, clock=clock)
    # The script drives the decisions itself, without the lifespan (broker, leader election): the one
    # instance decides unfenced, as a single-instance service whose lease is not in question.
    app.state.procedures.leadership = None
    await _script(app.state.procedures, clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://procedure") as client:
        listed = (await client.get("/api/v1/procedures")).json()["items"]
        yield Scripted(client, [p["procedure_id"] for p in sorted(listed, key=lambda p: p["created_at"])])
    await app.state.sessions.kw["bind"].dispose()


def _bucket(component: str, hours: float, availability: float | None, up: float, down: float, unknown: float,
            outages: int) -> dict[str, Any]:
    return {"component": component, "bucket_start": iso(hours), "availability": availability, "up_s": up,
            "downtime_s": down, "unknown_s": unknown, "outages": outages}


ADA_HOURS = [
    _bucket("ada_b2g", 0, 1.0, 3600, 0, 0, 0),
    _bucket("ada_b2g", 1, 0.5, 1800, 1800, 0, 1),
    _bucket("ada_b2g", 2, 0.333333, 1200, 2400, 0, 1),
    _bucket("ada_b2g", 3, 1.0, 3600, 0, 0, 0),
    _bucket("ada_b2g", 4, 1.0, 1800, 0, 1800, 0),
    _bucket("ada_b2g", 5, 0.5, 1800, 1800, 0, 1),
    _bucket("ada_b2g", 6, 0.0, 0, 900, 0, 0),
]
NTP_HOURS = [
    _bucket("ntp", 0, 0.75, 2700, 900, 0, 1),
    _bucket("ntp", 1, 1.0, 3600, 0, 0, 0),
    _bucket("ntp", 2, 0.333333, 1200, 2400, 0, 1),
    _bucket("ntp", 3, 1.0, 3600, 0, 0, 0),
    _bucket("ntp", 4, 1.0, 1800, 0, 1800, 0),
    _bucket("ntp", 5, 1.0, 3600, 0, 0, 0),
    _bucket("ntp", 6, 1.0, 900, 0, 0, 0),
]


async def test_hourly_and_daily_history_has_the_exact_figures(scripted: Scripted) -> None:
    response = await scripted.client.get("/api/v1/history", params={"from": iso(0), "to": iso(7)})
    assert response.status_code == 200, response.text
    assert response.json() == {"items": ADA_HOURS + NTP_HOURS, "next": None}

    daily = await scripted.client.get("/api/v1/history", params={
        "from": iso(0), "to": iso(24), "bucket": "day", "component": "ada_b2g"})
    assert daily.json()["items"] == [_bucket("ada_b2g", 0, 0.666667, 13800, 6900, 1800, 3)]
    before = await scripted.client.get("/api/v1/history", params={"from": iso(-1), "to": iso(0), "component": "ntp"})
    assert before.json()["items"] == [_bucket("ntp", -1, None, 0, 0, 3600, 0)]  # nothing recorded yet


async def test_history_pages_follow_each_other(scripted: Scripted) -> None:
    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = {"from": iso(0), "to": iso(7), "limit": 4}
    while True:
        page = (await scripted.client.get("/api/v1/history", params=params)).json()
        seen += page["items"]
        if page["next"] is None:
            break
        params["cursor"] = page["next"]
    assert seen == ADA_HOURS + NTP_HOURS
    assert len(seen) == 14  # four pages of 4, 4, 4, 2


async def test_outages_name_the_procedure_each_caused(scripted: Scripted) -> None:
    p1, p2, p3 = scripted.procedures
    response = await scripted.client.get("/api/v1/outages", params={"from": iso(0), "to": iso(7)})
    assert response.status_code == 200, response.text
    assert response.json() == {"next": None, "items": [
        {"component": "ntp", "started_at": iso(0.25), "ended_at": iso(0.5), "duration_s": 900.0,
         "procedure_id": None},
        {"component": "ada_b2g", "started_at": iso(1), "ended_at": iso(1.5), "duration_s": 1800.0,
         "procedure_id": p1},
        {"component": "ntp", "started_at": iso(2), "ended_at": iso(2 + 2 / 3), "duration_s": 2400.0,
         "procedure_id": p2},
        {"component": "ada_b2g", "started_at": iso(2 + 1 / 3), "ended_at": iso(3), "duration_s": 2400.0,
         "procedure_id": p2},
        {"component": "ada_b2g", "started_at": iso(5.5), "ended_at": None, "duration_s": 2700.0,
         "procedure_id": p3},
    ]}
    # an outage that began before the window is listed whole; paging keeps the order
    first = (await scripted.client.get("/api/v1/outages", params={
        "from": iso(2.5), "to": iso(7), "component": "ada_b2g", "limit": 1})).json()
    assert [o["started_at"] for o in first["items"]] == [iso(2 + 1 / 3)]
    rest = (await scripted.client.get("/api/v1/outages", params={
        "from": iso(2.5), "to": iso(7), "component": "ada_b2g", "limit": 1, "cursor": first["next"]})).json()
    assert [o["started_at"] for o in rest["items"]] == [iso(5.5)]
    assert rest["next"] is None


async def test_csv_with_a_header_row_and_the_next_page_as_a_link(scripted: Scripted) -> None:
    p1, p2, p3 = scripted.procedures
    csv_headers = {"Accept": "text/csv"}
    outages = await scripted.client.get("/api/v1/outages", params={"from": iso(0), "to": iso(7)}, headers=csv_headers)
    assert outages.status_code == 200
    assert outages.headers["content-type"].startswith("text/csv")
    assert outages.text.splitlines() == [
        "component,started_at,ended_at,duration_s,procedure_id",
        f"ntp,{iso(0.25)},{iso(0.5)},900.0,",
        f"ada_b2g,{iso(1)},{iso(1.5)},1800.0,{p1}",
        f"ntp,{iso(2)},{iso(2 + 2 / 3)},2400.0,{p2}",
        f"ada_b2g,{iso(2 + 1 / 3)},{iso(3)},2400.0,{p2}",
        f"ada_b2g,{iso(5.5)},,2700.0,{p3}",
    ]
    history = await scripted.client.get("/api/v1/history", params={
        "from": iso(3), "to": iso(7), "component": "ada_b2g", "limit": 2}, headers=csv_headers)
    assert history.text.splitlines() == [
        "component,bucket_start,availability,up_s,downtime_s,unknown_s,outages",
        f"ada_b2g,{iso(3)},1.0,3600.0,0.0,0.0,0",
        f"ada_b2g,{iso(4)},1.0,1800.0,0.0,1800.0,0",
    ]
    link = history.headers["link"]
    assert link.endswith('>; rel="next"')
    following = await scripted.client.get(link[1:link.index(">")], headers=csv_headers)
    assert following.text.splitlines()[1:] == [
        f"ada_b2g,{iso(5)},0.5,1800.0,1800.0,0.0,1",
        f"ada_b2g,{iso(6)},0.0,0.0,900.0,0.0,0",
    ]
    assert "link" not in following.headers


@pytest.mark.parametrize(("path", "params", "status", "says"), [
    ("/api/v1/history", {"from": "2026-03-02T05:00:00Z", "to": "2026-03-02T04:00:00Z"}, 422, "before"),
    ("/api/v1/history", {"from": "2026-01-01T00:00:00Z", "to": "2026-06-01T00:00:00Z"}, 422, "at most 92 days"),
    ("/api/v1/history", {"from": "2026-03-02T00:00:00", "to": "2026-03-02T04:00:00Z"}, 422, "timezone"),
    ("/api/v1/history", {"bucket": "week"}, 422, "hour"),
    ("/api/v1/history", {"component": "eo_b2g"}, 422, "ada_b2g"),
    ("/api/v1/history", {"cursor": "not-a-cursor"}, 400, "cursor"),
    ("/api/v1/outages", {"from": "2026-03-02T05:00:00Z", "to": "2026-03-02T05:00:00Z"}, 422, "before"),
    ("/api/v1/outages", {"from": "2020-01-01T00:00:00Z", "to": "2026-03-02T05:00:00Z"}, 422, "at most 731 days"),
    ("/api/v1/outages", {"cursor": "eA=="}, 400, "cursor"),
    ("/api/v1/history", {"to": "0001-01-01T00:00:00Z"}, 422, "between 1970 and 9000"),
    ("/api/v1/outages", {"from": "9999-12-31T00:00:00Z", "to": "9999-12-31T23:00:00Z"}, 422, "between"),
])
async def test_bad_queries_are_clear_client_errors(
    scripted: Scripted, path: str, params: dict[str, str], status: int, says: str
) -> None:
    response = await scripted.client.get(path, params=params)
    assert response.status_code == status, response.text
    assert says in response.text


async def test_metrics_show_the_scripted_state(scripted: Scripted) -> None:
    """After the script (06:15, ADA B2G down since 05:30, nothing published: no outbox task runs here)."""
    response = await scripted.client.get("/metrics")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text) for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("luccs_component_state", component="ada_b2g") == 0
    assert value("luccs_component_state", component="ntp") == 1
    assert value("luccs_procedures_active", scenario="ADA_B2G_UNAVAILABLE", scope="national") == 1
    assert value("luccs_procedures_active", scenario="LUCCS_UNAVAILABLE", scope="national") == 0
    assert value("luccs_procedures_active", scenario="EO_B2G_UNAVAILABLE", scope="eo") == 0
    decisions = {(k[1][0][1], k[1][1][1]): v for k, v in samples.items()
                 if k[0] == "luccs_procedure_decisions_total" and v}
    assert decisions == {("open", "ADA_B2G_UNAVAILABLE"): 2, ("open", "LUCCS_UNAVAILABLE"): 1,
                         ("update", "ADA_B2G_UNAVAILABLE"): 1, ("close", "ADA_B2G_UNAVAILABLE"): 2}
    assert value("luccs_eo_endpoints_down") == 0
    assert value("luccs_advisory_active", kind="ntp_unavailable") == 0
    assert value("luccs_detector_observation_age_seconds", detector_instance="d1") == 2700  # last seen 05:30
    # the first event recorded, the NTP advisory of 00:15, is still unpublished: 6 hours old
    assert value("luccs_procedure_outbox_oldest_unpublished_seconds") == 6 * 3600
    # counted once each: a second scrape adds nothing
    again = await scripted.client.get("/metrics")
    assert 'luccs_procedure_decisions_total{action="open",scenario="ADA_B2G_UNAVAILABLE"} 2.0' in again.text
