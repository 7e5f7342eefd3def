"""An SMTP server's reply that is not UTF-8 (a Latin-1 "refusée") becomes an error text every database stores:
aiosmtplib decodes replies with ``surrogateescape``, and a lone surrogate is refused by both drivers (the batch
of outcomes holding it failed again and again) or, through a JSON parameter, stored as bytes no read decodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from services.notifier.domain import Audience
from services.notifier.jobs import Job, Outcome
from services.notifier.mail import SmtpSender
from shared.config import SmtpSettings
from shared.events import DeliveryChannel, EventType, Language

pytestmark = pytest.mark.integration


async def _latin1_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Just enough SMTP to refuse every recipient in Latin-1."""
    writer.write(b"220 mail.example.lu ESMTP\r\n")
    while line := await reader.readline():
        verb = line[:4].upper()
        if verb == b"EHLO":
            writer.write(b"250-mail.example.lu\r\n250 8BITMIME\r\n")
        elif verb == b"RCPT":
            writer.write(b"550 5.1.1 Adresse refus\xe9e\r\n")
        elif verb == b"QUIT":
            writer.write(b"221 bye\r\n")
            await writer.drain()
            break
        else:
            writer.write(b"250 ok\r\n")
        await writer.drain()
    writer.close()


@pytest.fixture
async def smtp_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_latin1_server, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_a_latin1_refusal_is_kept_as_valid_unicode(smtp_port: int) -> None:
    sender = SmtpSender(settings=SmtpSettings(host="127.0.0.1", port=smtp_port, from_address="luccs@douanes.lu"))
    job = Job(
        delivery_id="d", event_id="e", event_type=EventType.PROCEDURE_OPENED, procedure_id="P", eori="LU1",
        audience=Audience.EO, channel=DeliveryChannel.EMAIL, address="one@eo.lu", lane="smtp", idempotency_key="k",
        attempt=1, created_at=datetime.now(UTC), language=Language.FR, subject="s", message="m", webhook_body=None,
        webhook_secret=None,
    )
    try:
        outcome = await sender.send(job)
    finally:
        await sender.aclose()
    assert not outcome.ok and outcome.permanent
    assert outcome.error == "recipient refused: 550 5.1.1 Adresse refus\\xe9e"
    assert outcome.error is not None
    outcome.error.encode("utf-8")  # valid Unicode: any driver takes it


@pytest.mark.parametrize(("error", "stored"), [
    ("550 refus\udce9e", "550 refus\\xe9e"),  # surrogateescape's byte, escaped
    ("lone \ud800 surrogate", "lone \\ud800 surrogate"),  # a surrogate that stands for no byte
    ("nul\x00byte", "nul\\x00byte"),  # PostgreSQL's text holds no NUL
    ("plain é", "plain é"),
])
def test_a_failures_error_is_text_every_database_stores(error: str, stored: str) -> None:
    assert Outcome.failed(error).error == stored
