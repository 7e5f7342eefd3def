"""Reaching every EO, against real loopback webhook receivers, a real SMTP server and real SQLite and
PostgreSQL databases: escalation by e-mail, the Servicedesk's digest of the unreached, the reach endpoint
and gauge, EOs registered late and webhook URLs fixed while a delivery retries.

Where a test must know that something happened *before* a due time (an EO delivered before its escalation,
an escalation before the digest), it moves the notifier's clock on instead of waiting: nothing depends on
how fast a loaded machine runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.notifier.api import router
from services.notifier.app import NotifierParts
from services.notifier.domain import idempotency_key
from services.notifier.models import DeliveryRow, PlannedEventRow
from services.notifier.reach import DIGEST_KEY
from shared.events import DeliveryChannel, EventType, Language, Scenario
from shared.signing import IDEMPOTENCY_HEADER
from tests.integration import test_notifier_email as email_tests
from tests.integration.test_notifier_delivery import (
    RECORD,
    TOP_OF_THE_WINDOW,
    deliveries,
    notifier_database,
    notifier_settings,
    procedure_event,
    register,
    running_notifier,
)
from tests.support import WebhookReceiver, eventually

pytestmark = pytest.mark.integration

mailbox = email_tests.mailbox
Mailbox = email_tests.Mailbox
SERVICEDESK = "servicedesk@douanes.lu"
FOREVER = [500] * 100_000


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with notifier_database(request, tmp_path) as url:
        yield url


class Clock:
    """The notifier's clock: real time, plus however far a test has moved it on."""

    def __init__(self) -> None:
        self.ahead = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead

    def move_on(self, seconds: float) -> None:
        self.ahead += timedelta(seconds=seconds)


def _settings(kafka: str, prefix: str, database_url: str, smtp_port: int, **extra: Any) -> Any:
    return notifier_settings(
        kafka, prefix, database_url, smtp=email_tests._smtp(smtp_port), servicedesk_email=SERVICEDESK,
        servicedesk_language=Language.EN, max_attempts=100_000, **extra,
    )


async def _rows(parts: NotifierParts, eori: str, channel: str) -> list[DeliveryRow]:
    return [r for r in await deliveries(parts) if r.eori == eori and r.channel == channel]


async def _api(parts: NotifierParts, path: str) -> httpx.Response:
    app = FastAPI()
    app.state.sessions = parts.sessions
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notifier") as client:
        return await client.get(path)


def _gauge(parts: NotifierParts) -> dict[str, float]:
    return {
        sample.labels["procedure_id"]: sample.value
        for metric in parts.metrics.unreached_eos.collect() for sample in metric.samples
    }


async def test_a_failing_webhook_is_escalated_by_email_after_escalate_after_s_and_still_retried(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, mailbox: tuple[email_tests.Mailbox, int]
) -> None:
    box, port = mailbox
    broken = WebhookReceiver(statuses=list(FOREVER)).start()
    settings = _settings(kafka_bootstrap, topic_prefix, database_url, port, escalate_after_s=1)
    try:
        async with running_notifier(settings, publish=False) as parts:
            await register(parts, "LU0001", broken.url(), Language.FR, email="ops@eo.lu")
            event = procedure_event()
            await parts.planner.on_procedure(event, RECORD)
            await eventually(lambda: box.to("ops@eo.lu"), what="the e-mail after escalate_after_s")
            tries = len(broken.received)
            await eventually(lambda: len(broken.received) >= tries + 2, what="the webhook retried after the e-mail")
            (webhook,) = await _rows(parts, "LU0001", "webhook")
            (email,) = await _rows(parts, "LU0001", "email")
            reach = (await _api(parts, f"/api/v1/procedures/{event.data.procedure_id}/reach")).json()
    finally:
        broken.stop()
    (message,) = box.to("ops@eo.lu")
    assert message["X-Luccs-Idempotency-Key"] == idempotency_key(event.id, "LU0001", DeliveryChannel.EMAIL)
    assert message["Message-ID"] == f"<{event.id}.LU0001.email@luccs-fallback>"
    assert message["Subject"].startswith("Procédure de secours LUCCS ouverte")
    assert {w.headers[IDEMPOTENCY_HEADER] for w in broken.received} == {
        idempotency_key(event.id, "LU0001", DeliveryChannel.WEBHOOK)
    }
    assert (webhook.status, webhook.escalate_at) == ("retrying", None)
    assert email.status == "delivered"
    assert (email.created_at - webhook.created_at).total_seconds() >= 1
    assert (reach["concerned"], reach["reached"], reach["unreached"]) == (1, 1, [])
    assert reach["reached_all_s"] is not None
    # One EO: the first reached is the last reached, by e-mail after the escalation.
    assert reach["first_reached_s"] == reach["reached_all_s"]


async def test_only_the_unreached_are_escalated_and_the_digest_lists_exactly_them(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, mailbox: tuple[email_tests.Mailbox, int]
) -> None:
    box, port = mailbox
    box.refuse.add("gone@eo.lu")
    broken = WebhookReceiver(statuses=list(FOREVER)).start()
    healthy = WebhookReceiver().start()
    clock = Clock()
    settings = _settings(kafka_bootstrap, topic_prefix, database_url, port, escalate_after_s=30)
    try:
        async with running_notifier(settings, publish=False, clock=clock) as parts:
            await register(parts, "LU0001", broken.url("/1"))  # no e-mail: cannot be escalated
            await register(parts, "LU0002", broken.url("/2"), email="two@eo.lu")  # escalated, reached by e-mail
            await register(parts, "LU0003", healthy.url("/3"), email="three@eo.lu")  # reached by webhook
            await register(parts, "LU0004", None)  # no address at all
            await register(parts, "LU0005", None, email="gone@eo.lu")  # its e-mail is refused
            event = procedure_event()
            procedure_id = event.data.procedure_id
            await parts.planner.on_procedure(event, RECORD)

            async def first_outcomes() -> bool:
                rows = {(r.recipient_key, r.channel): r for r in await deliveries(parts)}
                webhook, email = DeliveryChannel.WEBHOOK, DeliveryChannel.EMAIL
                return (rows[("LU0003", webhook)].status == "delivered" and rows[("LU0005", email)].status == "dead"
                        and rows[("LU0001", webhook)].attempts >= 1 and rows[("LU0002", webhook)].attempts >= 1)

            await eventually(first_outcomes, what="the first outcomes")
            before = (await _api(parts, f"/api/v1/procedures/{procedure_id}/reach")).json()
            await eventually(lambda: _gauge(parts).get(procedure_id) == 4, what="the gauge of unreached EOs")

            clock.move_on(30)  # escalate_after_s later
            await eventually(lambda: box.to("two@eo.lu"), what="LU0002's e-mail")
            await eventually(lambda: _rows(parts, "LU0002", "email"), what="LU0002's e-mail recorded")

            async def escalated() -> bool:
                (row,) = await _rows(parts, "LU0002", "email")
                return row.status == "delivered"

            await eventually(escalated, what="LU0002's e-mail delivered")
            clock.move_on(30)  # escalate_after_s after the escalation
            await eventually(lambda: [m for m in box.to(SERVICEDESK) if "not reached" in m["Subject"]],
                             what="the Servicedesk's digest")

            async def digest_recorded() -> list[DeliveryRow]:
                rows = await deliveries(parts)
                return rows if any(r.recipient_key == DIGEST_KEY and r.status == "delivered" for r in rows) else []

            rows = await eventually(digest_recorded, what="the digest recorded")
            async with parts.sessions() as session:
                fanout = await session.get(PlannedEventRow, event.id)
            after = (await _api(parts, f"/api/v1/procedures/{procedure_id}/reach")).json()
            await eventually(lambda: _gauge(parts).get(procedure_id) == 3, what="the gauge after the escalation")

            closed = procedure_event(EventType.PROCEDURE_CLOSED, procedure_id=procedure_id)
            await parts.planner.on_procedure(closed, RECORD)
            await eventually(lambda: procedure_id not in _gauge(parts), what="the series gone with the procedure")
    finally:
        broken.stop()
        healthy.stop()
    emails = sorted((r.recipient_key, r.status) for r in rows if r.channel == "email")
    assert emails == [
        ("LU0002", "delivered"), ("LU0005", "dead"), ("servicedesk", "delivered"), (DIGEST_KEY, "delivered"),
    ], "only LU0002 was escalated (LU0001 has no e-mail, LU0003 was reached), and one digest"
    assert box.to("three@eo.lu") == []
    assert fanout is not None and fanout.digest_at is None
    (digest,) = [m for m in box.to(SERVICEDESK) if "not reached" in m["Subject"]]
    assert digest["Subject"] == f"[LUCCS fallback] 3 EOs not reached: opening of [{procedure_id}]"
    listed = [line for line in digest.get_content().splitlines() if line.startswith("- ")]
    assert listed == [
        "- LU0001: HTTP 500 (webhook)",
        "- LU0004: no webhook or e-mail registered",
        "- LU0005: recipient refused: 550 5.1.1 no such mailbox (email)",
    ]
    assert "of the 5 EOs it concerns" in digest.get_content()
    assert (before["concerned"], before["reached"]) == (5, 1)
    assert [eo["eori"] for eo in before["unreached"]] == ["LU0001", "LU0002", "LU0004", "LU0005"]
    assert before["reached_50_s"] is None and before["reached_all_s"] is None
    assert before["first_reached_s"] is not None, "one of the 5 reached: the first notice is known"
    assert (after["concerned"], after["reached"]) == (5, 2)
    assert after["unreached"] == [
        {"eori": "LU0001", "channel": "webhook", "last_error": "HTTP 500"},
        {"eori": "LU0004", "channel": None, "last_error": "no webhook or e-mail registered"},
        {"eori": "LU0005", "channel": "email", "last_error": "recipient refused: 550 5.1.1 no such mailbox"},
    ]
    assert after["reached_50_s"] is None, "2 of 5 reached: not half"


async def test_a_superseded_notice_is_escalated_as_the_current_situation(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, mailbox: tuple[email_tests.Mailbox, int]
) -> None:
    box, port = mailbox
    broken = WebhookReceiver(statuses=list(FOREVER)).start()
    clock = Clock()
    settings = _settings(kafka_bootstrap, topic_prefix, database_url, port, escalate_after_s=30)
    try:
        async with running_notifier(settings, publish=False, clock=clock) as parts:
            await register(parts, "LU0001", broken.url(), email="ops@eo.lu")
            opened = procedure_event()
            await parts.planner.on_procedure(opened, RECORD)
            clock.move_on(10)
            changed = procedure_event(EventType.PROCEDURE_UPDATED, Scenario.LUCCS_UNAVAILABLE,
                                      procedure_id=opened.data.procedure_id, previous=Scenario.ADA_B2G_UNAVAILABLE)
            await parts.planner.on_procedure(changed, RECORD)
            clock.move_on(20)  # the opening's notice is overdue, the change's not yet: the change goes
            await eventually(lambda: box.to("ops@eo.lu"), what="the e-mail of the current situation")
            clock.move_on(10)  # the change's own escalation: e-mailed already, nothing more

            async def escalations_done() -> bool:
                return all(r.escalate_at is None for r in await deliveries(parts))

            await eventually(escalations_done, what="both escalations done")
            emails = await _rows(parts, "LU0001", "email")
    finally:
        broken.stop()
    (message,) = box.to("ops@eo.lu")
    assert message["X-Luccs-Idempotency-Key"] == idempotency_key(changed.id, "LU0001", DeliveryChannel.EMAIL)
    assert message["X-Luccs-Event-Type"] == "luccs.procedure.updated"
    assert [r.event_id for r in emails] == [changed.id]


async def test_an_eo_registered_while_a_procedure_is_open_gets_its_notice_once(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, mailbox: tuple[email_tests.Mailbox, int]
) -> None:
    _, port = mailbox
    receiver = WebhookReceiver().start()
    settings = _settings(kafka_bootstrap, topic_prefix, database_url, port)
    try:
        async with running_notifier(settings, publish=False) as parts:
            await register(parts, "LU0001", receiver.url("/early"))
            event = procedure_event()
            await parts.planner.on_procedure(event, RECORD)
            await eventually(lambda: len(receiver.received) == 1, what="the fan-out")
            await register(parts, "LU0002", receiver.url("/late"), Language.DE)
            await eventually(lambda: [w for w in receiver.received if w.path == "/late"], what="the late notice")
            await register(parts, "LU0002", receiver.url("/late"), Language.DE)  # the record read again
        async with running_notifier(settings, publish=False) as parts:  # and after a restart
            await register(parts, "LU0002", receiver.url("/late"), Language.DE)
            await parts.planner.on_procedure(event, RECORD)
            assert await parts.reach.plan_late_joiners() == 0
            reach = (await _api(parts, f"/api/v1/procedures/{event.data.procedure_id}/reach")).json()
            rows = await deliveries(parts)
    finally:
        receiver.stop()
    late = [w for w in receiver.received if w.path == "/late"]
    assert len(late) == 1
    assert late[0].event["id"] == event.id and late[0].event["data"]["language"] == "de"
    assert late[0].headers[IDEMPOTENCY_HEADER] == idempotency_key(event.id, "LU0002", DeliveryChannel.WEBHOOK)
    assert sorted((r.recipient_key, r.channel) for r in rows if r.audience == "eo") == [
        ("LU0001", "webhook"), ("LU0002", "webhook")
    ]
    assert (reach["concerned"], reach["reached"], reach["unreached"]) == (2, 2, [])


async def test_a_fixed_webhook_url_gets_the_retrying_notice_at_once(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, mailbox: tuple[email_tests.Mailbox, int],
) -> None:
    _, port = mailbox
    # The next retry is an hour away (jitter pinned to the top of the window): only the fix delivers it.
    wrong = WebhookReceiver(statuses=list(FOREVER)).start()
    fixed = WebhookReceiver().start()
    settings = _settings(kafka_bootstrap, topic_prefix, database_url, port, backoff_base_s=3600, backoff_max_s=3600)
    try:
        async with running_notifier(settings, publish=False, rng=TOP_OF_THE_WINDOW) as parts:
            await register(parts, "LU0001", wrong.url())
            event = procedure_event()
            await parts.planner.on_procedure(event, RECORD)

            async def retrying() -> bool:
                rows = await _rows(parts, "LU0001", "webhook")
                return [r.status for r in rows] == ["retrying"]

            await eventually(retrying, what="the first attempt to fail")
            await register(parts, "LU0001", fixed.url("/fixed"))
            await eventually(lambda: fixed.received, what="the notice at the fixed URL")

            async def delivered() -> list[DeliveryRow]:
                rows = await _rows(parts, "LU0001", "webhook")
                return rows if rows[0].status == "delivered" else []

            (row,) = await eventually(delivered, what="the delivery recorded")
    finally:
        wrong.stop()
        fixed.stop()
    assert len(wrong.received) == 1 and len(fixed.received) == 1
    assert fixed.received[0].headers[IDEMPOTENCY_HEADER] == wrong.received[0].headers[IDEMPOTENCY_HEADER]
    assert (row.recipient, row.attempts) == (fixed.url("/fixed"), 2)
