"""E-mail delivery against a real SMTP server (aiosmtpd on loopback): plain, STARTTLS with login, implicit
TLS; the Servicedesk and the Bureau; scenario 1 detected (webhook and e-mail); refused recipients."""

from __future__ import annotations

import email
import email.policy
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr

from services.notifier.domain import idempotency_key
from shared.config import SmtpSettings
from shared.events import AdvisoryData, AdvisoryKind, CloudEvent, DeliveryChannel, EventType, Language, Origin, Scenario
from tests.integration.test_notifier_delivery import (
    RECORD,
    deliveries,
    notifier_database,
    notifier_settings,
    procedure_event,
    register,
    running_notifier,
    settled,
)
from tests.support import WebhookReceiver, eventually, free_port

pytestmark = pytest.mark.integration


@dataclass
class Mailbox:
    """What the SMTP server accepted; recipients in ``refuse`` get a permanent 550."""

    refuse: set[str] = field(default_factory=set)
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with notifier_database(request, tmp_path) as url:
        yield url


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield box, controller.port
    controller.stop()


def _smtp(port: int, **extra: Any) -> SmtpSettings:
    return SmtpSettings(host="127.0.0.1", port=port, from_address="luccs-fallback@douanes.lu", **extra)


async def test_national_procedure_emails_eos_servicedesk_and_bureau(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, mailbox: tuple[Mailbox, int]
) -> None:
    box, port = mailbox
    settings = notifier_settings(
        kafka_bootstrap, topic_prefix, database_url, smtp=_smtp(port), servicedesk_email="servicedesk@douanes.lu",
        bureau_email="bureau@douanes.lu", servicedesk_language=Language.EN,
    )
    async with running_notifier(settings, publish=False) as parts:
        await register(parts, "LU0001", None, Language.FR, email="one@eo.lu")
        await register(parts, "LU0002", None, Language.DE, email="two@eo.lu")
        event = procedure_event(scenario=Scenario.LUCCS_UNAVAILABLE)
        await parts.planner.on_procedure(event, RECORD)
        await parts.planner.on_procedure(event, RECORD)  # redelivered: nothing more
        await eventually(lambda: settled(parts), what="four e-mails")
        rows = await deliveries(parts)
    assert sorted((r.recipient_key, r.channel, r.status) for r in rows) == [
        ("LU0001", "email", "delivered"), ("LU0002", "email", "delivered"),
        ("bureau", "email", "delivered"), ("servicedesk", "email", "delivered"),
    ]
    assert len(box.messages) == 4
    (french,) = box.to("one@eo.lu")
    (german,) = box.to("two@eo.lu")
    (servicedesk,) = box.to("servicedesk@douanes.lu")
    (bureau,) = box.to("bureau@douanes.lu")
    assert french["Subject"].startswith("Procédure de secours LUCCS ouverte")
    assert "Contactez le Bureau de recette Douanes (bureau@douanes.lu)" in french.get_content()
    assert "National Trader Portal (NTP), qui reste ouvert" not in french.get_content()
    assert german["Content-Language"] == "de" and "Ausweichverfahren" in german["Subject"]
    assert servicedesk["Subject"].startswith("[LUCCS fallback] Opened")
    assert "All registered EOs (2)" in servicedesk.get_content()
    assert "[Secours LUCCS]" in bureau["Subject"]
    assert french["From"] == "luccs-fallback@douanes.lu"
    assert french["X-Luccs-Idempotency-Key"] == idempotency_key(event.id, "LU0001", DeliveryChannel.EMAIL)
    assert french["Message-ID"] == f"<{event.id}.LU0001.email@luccs-fallback>"


async def test_scenario_1_detected_reaches_the_eo_by_webhook_and_email(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, mailbox: tuple[Mailbox, int]
) -> None:
    box, port = mailbox
    receiver = WebhookReceiver().start()
    settings = notifier_settings(kafka_bootstrap, topic_prefix, database_url, smtp=_smtp(port),
                                 servicedesk_email="servicedesk@douanes.lu")
    try:
        async with running_notifier(settings, publish=False) as parts:
            await register(parts, "LU0001", receiver.url(), Language.EN, email="ops@eo.lu")
            await register(parts, "LU0002", receiver.url("/other"), Language.EN, email="other@eo.lu")
            detected = procedure_event(scenario=Scenario.EO_B2G_UNAVAILABLE, eori="LU0001")
            await parts.planner.on_procedure(detected, RECORD)
            reported = procedure_event(scenario=Scenario.EO_B2G_UNAVAILABLE, eori="LU0002", origin=Origin.EO_REPORT)
            await parts.planner.on_procedure(reported, RECORD)
            await eventually(lambda: settled(parts), what="the scenario-1 notices")
            rows = await deliveries(parts)
    finally:
        receiver.stop()
    assert sorted((r.recipient_key, r.channel) for r in rows) == [
        ("LU0001", "email"), ("LU0001", "webhook"), ("LU0002", "webhook"), ("servicedesk", "email"),
        ("servicedesk", "email"),
    ]
    assert {r.status for r in rows} == {"delivered"}
    assert len(box.to("ops@eo.lu")) == 1 and box.to("other@eo.lu") == []
    assert "e-mail address as well as to your webhook" in box.to("ops@eo.lu")[0].get_content()
    assert sorted(w.path for w in receiver.received) == ["/hook", "/other"]
    subjects = sorted(m["Subject"] for m in box.to("servicedesk@douanes.lu"))
    assert all("LU000" in s for s in subjects)


async def test_advisories_reach_the_servicedesk_only(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, mailbox: tuple[Mailbox, int]
) -> None:
    from datetime import UTC, datetime

    box, port = mailbox
    receiver = WebhookReceiver().start()
    settings = notifier_settings(kafka_bootstrap, topic_prefix, database_url, smtp=_smtp(port),
                                 servicedesk_email="servicedesk@douanes.lu")
    try:
        async with running_notifier(settings, publish=False) as parts:
            await register(parts, "LU0001", receiver.url(), Language.EN, email="ops@eo.lu")
            advisory = CloudEvent[AdvisoryData](
                source="/tests", type=EventType.ADVISORY_RAISED, subject="adv-1",
                data=AdvisoryData(advisory_id="adv-1", kind=AdvisoryKind.NTP_UNAVAILABLE, active=True,
                                  components=["ntp"], reason="NTP refuses connections", raised_at=datetime.now(UTC)),
            )
            await parts.planner.on_advisory(advisory, RECORD)
            # NTP is down now: a scenario-1 notice must not send the EO to NTP.
            await parts.planner.on_procedure(
                procedure_event(scenario=Scenario.EO_B2G_UNAVAILABLE, eori="LU0001", origin=Origin.EO_REPORT), RECORD
            )
            await eventually(lambda: settled(parts), what="the advisory and the scenario-1 notices")
    finally:
        receiver.stop()
    (advisory_mail,) = [m for m in box.to("servicedesk@douanes.lu") if "adv-1" in m["Subject"]]
    assert advisory_mail["Subject"].startswith("[Avis LUCCS]")
    assert box.to("ops@eo.lu") == []
    (hook,) = receiver.received
    message = hook.event["data"]["message"]
    assert "in the National Trader Portal (NTP)" not in message
    assert "unavailable at the moment too" in message


async def test_starttls_with_login(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_tls)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    logins: list[tuple[bytes, bytes]] = []

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.login == b"notifier" and data.password == b"s3cret")

    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port(), tls_context=server_tls,
                            require_starttls=True, authenticator=authenticate, auth_require_tls=True)
    controller.start()
    try:
        settings = notifier_settings(
            kafka_bootstrap, topic_prefix, database_url, servicedesk_email="servicedesk@douanes.lu",
            smtp=_smtp(controller.port, starttls=True, username="notifier", password=SecretStr("s3cret"),
                       ca_file=str(ca_file)),
        )
        async with running_notifier(settings, publish=False) as parts:
            await parts.planner.on_procedure(procedure_event(), RECORD)
            await eventually(lambda: settled(parts), what="the Servicedesk e-mail over STARTTLS")
            (row,) = await deliveries(parts)
    finally:
        controller.stop()
    assert row.status == "delivered", row.last_error
    assert logins == [(b"notifier", b"s3cret")]
    assert len(box.messages) == 1


async def test_refused_recipient_is_dead_at_once_and_others_still_delivered(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, mailbox: tuple[Mailbox, int]
) -> None:
    box, port = mailbox
    box.refuse.add("gone@eo.lu")
    settings = notifier_settings(kafka_bootstrap, topic_prefix, database_url, smtp=_smtp(port))
    async with running_notifier(settings, publish=False) as parts:
        await register(parts, "LU0001", None, email="gone@eo.lu")
        await register(parts, "LU0002", None, email="here@eo.lu")
        await parts.planner.on_procedure(procedure_event(), RECORD)
        await eventually(lambda: settled(parts), what="both e-mails settled")
        gone, here = await deliveries(parts)
    assert (gone.status, gone.attempts) == ("dead", 1)
    assert "550" in (gone.last_error or "")
    assert here.status == "delivered"
    assert [m["To"] for m in box.messages] == ["here@eo.lu"]


async def test_smtp_server_down_is_retried(database_url: str, kafka_bootstrap: str, topic_prefix: str) -> None:
    settings = notifier_settings(kafka_bootstrap, topic_prefix, database_url, smtp=_smtp(free_port()),
                                 max_attempts=2, servicedesk_email="servicedesk@douanes.lu")
    async with running_notifier(settings, publish=False) as parts:
        await parts.planner.on_procedure(procedure_event(), RECORD)
        await eventually(lambda: settled(parts), what="the e-mail to be given up")
        (row,) = await deliveries(parts)
    assert (row.status, row.attempts) == ("dead", 2)
    assert "SMTP server 127.0.0.1" in (row.last_error or "")
