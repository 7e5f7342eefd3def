"""The EOs' public page and Atom feed over a real procedure service (uvicorn on loopback, real broker, SQLite):
they say what EOs must do, in fr/en/de, and leak nothing — no evidence, detector or target names, recorded
reasons, notes, EO data or scenario-1 procedures — however much of it the service holds."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select, text

from services.procedure.app import create_app
from services.procedure.migrate import upgrade
from services.procedure.models import TimelineRow
from services.procedure.public_texts import PHRASES
from shared.config import ApiSettings, KafkaSettings, Settings
from shared.db import make_engine
from shared.events import AvailabilityData, CloudEvent, Component, ComponentState, EventType, Language
from shared.kafka import Publisher
from tests.support import eventually, serving

pytestmark = pytest.mark.integration

OPERATOR = "operator-token-for-public-tests"
OPS = {"Authorization": f"Bearer {OPERATOR}"}
ATOM = "{http://www.w3.org/2005/Atom}"
EORI = "LU7777PUBLIC99"
DETECTOR, TARGET, DETAIL = "detector-zebra-7731", "ada-target-quokka", "probe-detail-narwhal"
SECRETS = [
    EORI, "EO Capybara Logistics", "capybara@eo.example", "eo-detail-walrus",  # the EO and its own report
    DETECTOR, TARGET, DETAIL,  # evidence
    "reason-pelican-4242", "close-reason-moose", "reason-lynx-808", "note-heron-5150",  # recorded reasons, notes
    "maint-reason-ibis",  # the operator's reason for a window (EOs get its message)
]
# Each text holds what the timeline's old "[author] fr: ...\nen: ...\nde: ..." text could not carry: its
# separators, quotes, colons, line breaks. The feed must give each one back exactly.
BROADCAST = {"fr": 'diffusion-fr-loutre : « appelez » le "123"\nen: reste en français\nde: aussi',
             "en": 'broadcast-en-otter: "call" 123\nde: still English\n[bureau] fr: too',
             "de": "rundspruch-de-fischotter: „rufen“ Sie 123 an\n\nfr: bleibt Deutsch"}
WINDOW_MESSAGE = {"fr": "maintenance-fr-castor", "en": "maintenance-en-beaver", "de": "wartung-de-biber"}


@dataclass
class Service:
    client: httpx.AsyncClient
    settings: Settings


@pytest.fixture
async def service(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[Service]:
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
        api=ApiSettings(operator_tokens=[SecretStr(OPERATOR)]),
    )
    async with serving(create_app(settings)) as client:
        yield Service(client, settings)


async def _observe(settings: Settings, component: Component, target: str) -> None:
    now = datetime.now(UTC)
    event = CloudEvent[AvailabilityData](
        source="/tests", type=EventType.AVAILABILITY_CHANGED, subject=target,
        data=AvailabilityData(target_id=target, component=component, detector_instance=DETECTOR,
                              state=ComponentState.UP, since=now, observed_at=now, probe="as4", ok=True,
                              reason="ok", detail=DETAIL),
    )
    publisher = Publisher(settings.kafka, client_id="test-public-observations")
    await publisher.start()
    try:
        await publisher.publish(settings.kafka.availability_topic, event, key=target)
    finally:
        await publisher.stop()


async def _post(client: httpx.AsyncClient, path: str, body: dict[str, object], status: int = 201) -> dict[str, str]:
    response = await client.post(path, json=body, headers=OPS)
    assert response.status_code in (status, 200), (path, response.text)
    result: dict[str, str] = response.json()
    return result


async def _a_month_of_events(service: Service) -> None:
    """Evidence, an EO and its own procedure, a closed exception case with a broadcast and a note, a window,
    and an ADA B2G procedure in force."""
    client = service.client
    await _observe(service.settings, Component.ADA_B2G, TARGET)
    await _observe(service.settings, Component.NTP, "ntp-target-public")

    async def seen() -> bool:
        status = (await client.get("/api/v1/status", headers=OPS)).json()
        return DETECTOR in str(status) and all(c["state"] == "up" for c in status["components"])
    await eventually(seen, timeout=30, what="the observations recorded")

    eo = await _post(client, "/api/v1/eos", {"eori": EORI, "name": "EO Capybara Logistics", "language": "de",
                                              "email": "capybara@eo.example"})
    report = await client.post("/api/v1/eo-reports", json={"eori": EORI, "status": "down",
                                                           "detail": "eo-detail-walrus"},
                               headers={"Authorization": f"Bearer {eo['api_key']}"})
    assert report.json()["result"] == "open", report.text

    exception = await _post(client, "/api/v1/procedures", {"scenario": "LUCCS_UNAVAILABLE",
                                                            "reason": "reason-pelican-4242"})
    exception_id = exception["procedure_id"]
    await _post(client, f"/api/v1/procedures/{exception_id}/notes", {"text": "note-heron-5150"})
    await _post(client, f"/api/v1/procedures/{exception_id}/broadcasts", {"text": BROADCAST, "author": "bureau"})
    await _post(client, f"/api/v1/procedures/{exception_id}/close", {"reason": "close-reason-moose"}, 200)
    start = datetime.now(UTC) + timedelta(days=2)
    await _post(client, "/api/v1/maintenances", {
        "component": "ada_b2g", "starts_at": start.isoformat(), "ends_at": (start + timedelta(hours=2)).isoformat(),
        "reason": "maint-reason-ibis", "message": WINDOW_MESSAGE,
    })
    await _post(client, "/api/v1/procedures", {"scenario": "ADA_B2G_UNAVAILABLE", "reason": "reason-lynx-808"})


def _assert_leaks_nothing(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret


async def test_the_page_and_the_feed_say_what_to_do_in_each_language_and_leak_nothing(service: Service) -> None:
    await _a_month_of_events(service)
    client = service.client
    for language in Language:
        t = PHRASES[language]
        others = [lang for lang in Language if lang != language]

        page = await client.get("/public", params={"lang": language.value})
        assert page.status_code == 200 and page.headers["Content-Language"] == language.value
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        html = page.text
        _assert_leaks_nothing(html)
        assert f'<html lang="{language.value}">' in html
        assert 'data-advice="lodge_in_ntp"' in html  # scenario 2 in force, NTP seen up
        # The probes see ADA B2G up, but the procedure in force was declared: the page says what it says.
        assert '<tr class="state-down" data-component="ada_b2g">' in html
        assert '<tr class="state-up" data-component="ntp">' in html
        assert t["advice_lodge_in_ntp"].replace("'", "&#39;") in html
        assert 'data-scenario="ADA_B2G_UNAVAILABLE"' in html
        assert html.count("<tr data-procedure=") == 2  # the exception case (closed) and the one in force
        assert WINDOW_MESSAGE[language.value] in html
        assert BROADCAST[language.value] not in html  # broadcasts are in the feed
        assert not any(WINDOW_MESSAGE[o.value] in html for o in others)

        feed = await client.get("/public/feed.atom", params={"lang": language.value})
        assert feed.status_code == 200 and feed.headers["content-type"].startswith("application/atom+xml")
        _assert_leaks_nothing(feed.text)
        root = ET.fromstring(feed.content)
        assert root.tag == f"{ATOM}feed"
        assert root.get("{http://www.w3.org/XML/1998/namespace}lang") == language.value
        assert root.findtext(f"{ATOM}title") == t["feed_title"]
        entries = {e.findtext(f"{ATOM}id", ""): e for e in root.findall(f"{ATOM}entry")}
        kinds = sorted(i.split(":")[2] + (":" + i.split(":")[4] if i.count(":") == 4 else "") for i in entries)
        assert kinds == ["broadcast", "maintenance", "procedure:closed", "procedure:opened", "procedure:opened"]
        texts = {e.findtext(f"{ATOM}summary", ""): e.findtext(f"{ATOM}title", "") for e in entries.values()}
        assert BROADCAST[language.value] in texts and WINDOW_MESSAGE[language.value] in texts
        assert texts[BROADCAST[language.value]] == t["feed_broadcast_bureau"]
        titles = [e.findtext(f"{ATOM}title", "") for e in entries.values()]
        assert sum(title.startswith(t["feed_opened"] + ":") for title in titles) == 2
        assert sum(title.startswith(t["feed_closed"] + ":") for title in titles) == 1
        for entry in entries.values():
            assert entry.findtext(f"{ATOM}updated")
        assert not any(BROADCAST[o.value].split(":")[0] in feed.text or WINDOW_MESSAGE[o.value] in feed.text
                       for o in others)


async def test_the_language_follows_accept_language_when_not_asked(service: Service) -> None:
    german = await service.client.get("/public", headers={"Accept-Language": "de-LU,de;q=0.9,en;q=0.5"})
    assert german.headers["Content-Language"] == "de" and PHRASES[Language.DE]["no_procedure"] in german.text
    english = await service.client.get("/public/feed.atom", headers={"Accept-Language": "nl, en-GB;q=0.8"})
    assert ET.fromstring(english.content).findtext(f"{ATOM}title") == PHRASES[Language.EN]["feed_title"]
    asked = await service.client.get("/public", params={"lang": "en"}, headers={"Accept-Language": "de"})
    assert asked.headers["Content-Language"] == "en"
    default = await service.client.get("/public")
    assert default.headers["Content-Language"] == "fr"
    # Nothing recorded yet: monitoring has seen neither channel, so B2G is advised with the caveat only.
    assert 'data-advice="b2g_unconfirmed"' in default.text


async def test_broadcasts_recorded_before_the_detail_column_keep_their_texts(tmp_path: Path) -> None:
    """Migration 0007 reads the broadcasts of the timeline's old text form into the structured detail once."""
    engine = make_engine(f"sqlite:///{tmp_path / 'before-0007.db'}")
    try:
        await upgrade(engine, "0006")
        at = "2026-11-30 10:00:00.000000"
        async with engine.begin() as connection:
            await connection.execute(text(
                "INSERT INTO procedures (id, scenario, scope, eori, state, origin, auto_close, reason, created_at,"
                " opened_at, closed_at, updated_at) VALUES ('p-1', 'LUCCS_UNAVAILABLE', 'national', NULL, 'open',"
                " 'operator', 1, 'r', :at, :at, NULL, :at)"), {"at": at})
            for kind, reason in (("broadcast", "[bureau] fr: Appelez le 123.\nen: Call 123.\nde: Rufen Sie 123 an."),
                                 ("note", "[bureau] fr: a\nen: b\nde: c")):
                await connection.execute(text(
                    "INSERT INTO timeline (procedure_id, at, kind, scenario, previous_scenario, reason, actor,"
                    " event_id, evidence) VALUES ('p-1', :at, :kind, 'LUCCS_UNAVAILABLE', NULL, :reason, 'op', NULL,"
                    " '[]')"), {"at": at, "kind": kind, "reason": reason})
        await upgrade(engine)
        async with engine.connect() as connection:
            rows = (await connection.execute(select(TimelineRow.kind, TimelineRow.detail))).all()
        details = {kind: detail for kind, detail in rows}
    finally:
        await engine.dispose()
    assert details == {"broadcast": {"broadcast": {"author": "bureau", "text": {
        "fr": "Appelez le 123.", "en": "Call 123.", "de": "Rufen Sie 123 an."}}}, "note": None}
