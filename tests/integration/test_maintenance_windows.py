"""Maintenance windows end to end over the real broker: the procedure service (uvicorn on loopback, its
leader deciding on availability events published to the broker) and a notifier delivering to real webhook
receivers. Windows are scheduled a few seconds ahead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import icalendar
import pytest
from pydantic import SecretStr

from shared.config import ApiSettings, KafkaSettings, ProcedureSettings, Settings
from shared.events import (
    AvailabilityData,
    CloudEvent,
    Component,
    ComponentState,
    EventType,
    Language,
)
from tests.integration.pipeline import ProcedureAndNotifier, procedure_and_notifier
from tests.support import WebhookReceiver, eventually

pytestmark = pytest.mark.integration

OPERATOR = "operator-token-for-tests"
OPS = {"Authorization": f"Bearer {OPERATOR}"}
EOS = {"LU0000000001": Language.FR, "LU0000000002": Language.EN, "LU0000000003": Language.DE}
MESSAGE = {"fr": "Mise à jour annuelle.", "en": "Yearly upgrade.", "de": "Jährliches Update."}
UP, DOWN = ComponentState.UP, ComponentState.DOWN


class Pipeline(ProcedureAndNotifier):
    """The procedure service and a notifier, with what the tests of maintenance windows do to them."""

    async def observe(self, component: Component, state: ComponentState) -> None:
        now = datetime.now(UTC)
        target = component.value
        event = CloudEvent[AvailabilityData](
            source="/tests", type=EventType.AVAILABILITY_CHANGED, subject=target,
            data=AvailabilityData(target_id=target, component=component, detector_instance="d1", state=state,
                                  since=now, observed_at=now, probe="http", ok=state == UP, reason="test"),
        )
        await self.publisher.publish(self.kafka.availability_topic, event, key=target)

    async def schedule(self, component: str, start_in_s: float, length_s: float) -> dict[str, Any]:
        now = datetime.now(UTC)
        body = {"component": component, "starts_at": (now + timedelta(seconds=start_in_s)).isoformat(),
                "ends_at": (now + timedelta(seconds=start_in_s + length_s)).isoformat(), "reason": "upgrade",
                "message": MESSAGE}
        response = await self.client.post("/api/v1/maintenances", json=body, headers=OPS)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def procedures(self) -> list[dict[str, Any]]:
        response = await self.client.get("/api/v1/procedures", headers=OPS)
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def procedure(self, procedure_id: str) -> dict[str, Any]:
        found: dict[str, Any] = (await self.client.get(f"/api/v1/procedures/{procedure_id}", headers=OPS)).json()
        return found

    async def maintenance(self, maintenance_id: str) -> dict[str, Any]:
        found: dict[str, Any] = (await self.client.get(f"/api/v1/maintenances/{maintenance_id}")).json()
        return found


@pytest.fixture
async def pipeline(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[Pipeline]:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    settings = Settings(data_dir=tmp_path, kafka=kafka, api=ApiSettings(operator_tokens=[SecretStr(OPERATOR)]),
                        procedure=ProcedureSettings(tick_s=0.2, maintenance_reminders_s=[172800, 3600]))
    async with procedure_and_notifier(settings, tmp_path=tmp_path, eos=EOS, maintenance=True) as running:
        pipeline = Pipeline(**vars(running))
        await pipeline.observe(Component.ADA_B2G, UP)
        await pipeline.observe(Component.NTP, UP)
        await eventually(lambda: _components_up(pipeline.client), what="both components up")
        yield pipeline


async def _components_up(client: httpx.AsyncClient) -> bool:
    status = (await client.get("/api/v1/status")).json()
    states = {c["component"]: c["state"] for c in status["components"]}
    return states.get("ada_b2g") == states.get("ntp") == "up"


def _at_every_eo(hooks: WebhookReceiver, event_type: str) -> bool:
    return sorted(h.path for h in hooks.of_type(event_type)) == sorted(f"/{eori}" for eori in EOS)


async def test_a_window_is_announced_reminded_opens_once_and_closes_after_its_end(pipeline: Pipeline) -> None:
    window = await pipeline.schedule("ada_b2g", start_in_s=3, length_s=3)
    hooks = pipeline.hooks
    await eventually(lambda: _at_every_eo(hooks, EventType.MAINTENANCE_SCHEDULED), what="the announcement")
    await eventually(lambda: _at_every_eo(hooks, EventType.MAINTENANCE_REMINDER), what="one reminder")
    for hook in hooks.of_type(EventType.MAINTENANCE_SCHEDULED):
        language = EOS[hook.path.strip("/")]
        assert hook.event["data"]["language"] == language.value
        assert MESSAGE[language.value] in hook.event["data"]["message"]
    # The planned procedure opens at the start; the probes failing then open nothing more.
    await eventually(lambda: _at_every_eo(hooks, EventType.PROCEDURE_OPENED), what="the planned procedure")
    for hook in hooks.of_type(EventType.PROCEDURE_OPENED):  # told it is the planned maintenance, until when
        data = hook.event["data"]
        assert (data["origin"], data["maintenance_id"]) == ("planned", window["maintenance_id"])
        assert datetime.fromisoformat(data["maintenance_ends_at"]) == datetime.fromisoformat(window["ends_at"])
        planned = {"fr": "Maintenance planifiée", "en": "Planned maintenance", "de": "Geplante Wartung"}
        assert planned[data["language"]] in data["subject"] and planned[data["language"]] in data["message"]
        assert "upgrade" not in data["message"]  # the operator's reason for the window stays internal
    await pipeline.observe(Component.ADA_B2G, DOWN)
    [opened] = await pipeline.procedures()
    assert (opened["origin"], opened["maintenance_id"], opened["scenario"]) == (
        "planned", window["maintenance_id"], "ADA_B2G_UNAVAILABLE")
    await asyncio.sleep(1)
    assert len(await pipeline.procedures()) == 1
    # Back up before the end: still open until the end, then closed.
    await pipeline.observe(Component.ADA_B2G, UP)
    await eventually(lambda: _at_every_eo(hooks, EventType.PROCEDURE_CLOSED), timeout=30, what="the close")
    closed = await pipeline.procedure(opened["procedure_id"])
    assert closed["state"] == "closed"
    assert datetime.fromisoformat(closed["closed_at"]) >= datetime.fromisoformat(window["ends_at"])
    assert len(await pipeline.procedures()) == 1
    assert len(hooks.of_type(EventType.MAINTENANCE_REMINDER)) == len(EOS)  # once each
    assert (await pipeline.maintenance(window["maintenance_id"]))["state"] == "done"

    ics = await pipeline.client.get("/api/v1/maintenances.ics")
    assert ics.headers["content-type"].startswith("text/calendar")
    [event] = icalendar.Calendar.from_ical(ics.content).walk("VEVENT")
    assert str(event["uid"]).startswith(window["maintenance_id"])


async def test_ntp_failing_during_an_ada_window_gives_scenario_3_and_an_overrun_continues(
    pipeline: Pipeline,
) -> None:
    window = await pipeline.schedule("ada_b2g", start_in_s=1, length_s=4)
    await eventually(lambda: pipeline.procedures(), what="the planned procedure")
    await pipeline.observe(Component.ADA_B2G, DOWN)
    await pipeline.observe(Component.NTP, DOWN)
    [procedure] = await eventually(pipeline.procedures, what="a procedure")

    async def scenario_3() -> bool:
        found = await pipeline.procedure(procedure["procedure_id"])
        return bool(found["scenario"] == "LUCCS_UNAVAILABLE")

    await eventually(scenario_3, what="scenario 3")
    await pipeline.observe(Component.NTP, UP)  # ADA stays down past the end: an overrun

    async def overran() -> bool:
        return bool((await pipeline.maintenance(window["maintenance_id"]))["overran"])

    await eventually(overran, timeout=30, what="the overrun")
    detail = await pipeline.procedure(procedure["procedure_id"])
    assert (detail["state"], detail["origin"], detail["scenario"]) == ("open", "detected", "ADA_B2G_UNAVAILABLE")
    assert "overran" in detail["timeline"][-1]["reason"]
    assert len(await pipeline.procedures()) == 1


async def test_a_cancelled_window_opens_nothing(pipeline: Pipeline) -> None:
    window = await pipeline.schedule("luccs", start_in_s=2, length_s=2)
    cancelled = await pipeline.client.post(f"/api/v1/maintenances/{window['maintenance_id']}/cancel",
                                           json={"reason": "postponed"}, headers=OPS)
    assert cancelled.status_code == 200, cancelled.text
    await eventually(lambda: _at_every_eo(pipeline.hooks, EventType.MAINTENANCE_CANCELLED), what="the cancellation")
    await asyncio.sleep(3)
    assert await pipeline.procedures() == []
    again = await pipeline.client.post(f"/api/v1/maintenances/{window['maintenance_id']}/cancel",
                                       json={"reason": "twice"}, headers=OPS)
    assert again.status_code == 409
    listed = (await pipeline.client.get("/api/v1/maintenances?state=cancelled")).json()["items"]
    assert [m["maintenance_id"] for m in listed] == [window["maintenance_id"]]
