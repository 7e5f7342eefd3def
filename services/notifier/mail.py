"""E-mail delivery over SMTP (aiosmtplib): plain text in the recipient's language, STARTTLS or implicit TLS
and login by configuration, a few connections kept open and reused."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

import aiosmtplib

from services.notifier.jobs import Job, Outcome
from shared.config import SmtpSettings

__all__ = ["SmtpSender", "build_message"]


def build_message(job: Job, *, from_address: str, now: datetime) -> EmailMessage:
    """The e-mail of a notice. Its Message-ID derives from the Idempotency-Key, so a re-sent copy (after a
    crash) carries the same id and mail clients can fold duplicates."""
    message = EmailMessage()
    message["From"] = from_address
    message["To"] = job.address
    message["Subject"] = job.subject
    message["Date"] = format_datetime(now.astimezone(UTC))
    message["Message-ID"] = f"<{job.idempotency_key.replace(':', '.')}@luccs-fallback>"
    message["Auto-Submitted"] = "auto-generated"
    message["X-Luccs-Idempotency-Key"] = job.idempotency_key
    message["X-Luccs-Procedure-Id"] = job.procedure_id
    message["X-Luccs-Event-Type"] = job.event_type
    message.set_content(job.message)
    message["Content-Language"] = job.language.value  # after set_content, which replaces Content-* headers
    return message


class SmtpSender:
    """Sends notices through the configured SMTP server over up to ``smtp.connections`` open connections."""

    def __init__(self, *, settings: SmtpSettings, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._settings = settings
        self._clock = clock
        self._idle: list[aiosmtplib.SMTP] = []
        self._tls: ssl.SSLContext | None = None
        if settings.starttls or settings.use_tls:
            self._tls = ssl.create_default_context()
            if settings.ca_file:
                self._tls.load_verify_locations(cafile=settings.ca_file)

    async def send(self, job: Job) -> Outcome:
        try:
            message = build_message(job, from_address=self._settings.from_address, now=self._clock())
        except (ValueError, TypeError) as exc:
            return Outcome.failed(f"cannot build an e-mail to {job.address!r}: {exc}", permanent=True)
        reused = bool(self._idle)
        client = self._idle.pop() if reused else None
        try:
            if client is None:
                client = await self._connect()
            try:
                await client.send_message(message)
            except aiosmtplib.SMTPServerDisconnected:
                if not reused:
                    raise
                client = await self._connect()  # the server dropped the idle connection: once more, fresh
                await client.send_message(message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            self._give_back(client)
            codes = [refusal.code for refusal in exc.recipients]
            detail = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
            return Outcome.failed(f"recipient refused: {detail}", permanent=all(code >= 500 for code in codes))
        except aiosmtplib.SMTPResponseException as exc:
            await _quit(client)
            return Outcome.failed(f"SMTP {exc.code}: {exc.message}", permanent=exc.code >= 500)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await _quit(client)
            server = f"{self._settings.host}:{self._settings.port}"
            return Outcome.failed(f"SMTP server {server}: {type(exc).__name__}: {exc}")
        self._give_back(client)
        return Outcome.delivered()

    async def aclose(self) -> None:
        while self._idle:
            await _quit(self._idle.pop())

    async def _connect(self) -> aiosmtplib.SMTP:
        cfg = self._settings
        client = aiosmtplib.SMTP(
            hostname=cfg.host, port=cfg.port, timeout=cfg.timeout_s, use_tls=cfg.use_tls,
            start_tls=cfg.starttls if not cfg.use_tls else False, tls_context=self._tls,
            username=cfg.username, password=cfg.password.get_secret_value() if cfg.password else None,
        )
        await client.connect()
        return client

    def _give_back(self, client: aiosmtplib.SMTP | None) -> None:
        if client is not None and client.is_connected and len(self._idle) < self._settings.connections:
            self._idle.append(client)


async def _quit(client: aiosmtplib.SMTP | None) -> None:
    if client is None:
        return
    try:
        await client.quit()
    except Exception:  # a broken connection is dropped either way
        client.close()
