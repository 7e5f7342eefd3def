"""Webhook delivery: the contract's signed POST of the CloudEvent to an EO's endpoint."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

from services.notifier.domain import url_origin, webhook_url_problem
from services.notifier.jobs import Job, Outcome
from services.notifier.webhook_http import TargetRefused, TransportError, WebhookHttpClient
from shared.config import NotifierSettings
from shared.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, sign

__all__ = ["WEBHOOK_CONTENT_TYPE", "WebhookSender", "webhook_ssl_context"]

WEBHOOK_CONTENT_TYPE = "application/cloudevents+json"
_UNCHECKED = "<unchecked>"


def webhook_ssl_context(settings: NotifierSettings) -> ssl.SSLContext:
    """The system's trusted CAs, plus ``notifier.webhook_ca_file`` when set (a private PKI, or tests)."""
    context = ssl.create_default_context()
    if settings.webhook_ca_file:
        context.load_verify_locations(cafile=settings.webhook_ca_file)
    return context


class WebhookSender:
    """Sends one webhook attempt: URL rules, signature, Idempotency-Key, 2xx within the timeout = delivered."""

    def __init__(
        self, *, settings: NotifierSettings, client: WebhookHttpClient, clock: Callable[[], float] = time.time
    ) -> None:
        self._settings = settings
        self._client = client
        self._clock = clock
        # The URL rules' verdicts (the settings are fixed): the origins accepted, the other addresses' verdicts.
        self._accepted: set[str] = set()
        self._problems: dict[str, str | None] = {}

    def send(self, job: Job) -> Coroutine[Any, Any, Outcome]:
        # Not awaited here: one coroutine per attempt, not two.
        return self.post(address=job.address, body=job.webhook_body, secret=job.webhook_secret,
                         idempotency_key=job.idempotency_key, timeout_s=self._settings.webhook_timeout_s)

    async def post(
        self, *, address: str, body: bytes | None, secret: str | None, idempotency_key: str, timeout_s: float
    ) -> Outcome:
        """One attempt from plain values: what :meth:`send` does with a job, and a webhook worker with a job's
        fields as the notifier process sent them (``webhook_workers.py``)."""
        cfg = self._settings
        # The URL rules judge the scheme and the authority only (``webhook_url_problem``), so an origin found
        # acceptable is so for every path under it: one verdict per host, not one per EO (each EO has a URL of
        # its own: 100,000 parses per national fan-out, a twentieth of the sending loop). A refusal quotes the
        # URL itself, so refusals are kept per URL.
        origin = url_origin(address)
        problem = None if origin in self._accepted else self._problems.get(address, _UNCHECKED)
        if problem is _UNCHECKED:
            if len(self._problems) > 10_000:
                self._problems.clear()
            problem = webhook_url_problem(
                address, allow_insecure=cfg.allow_insecure_webhooks, allow_private=cfg.allow_private_webhooks
            )
            if problem is None and origin is not None:
                if len(self._accepted) > 10_000:
                    self._accepted.clear()
                self._accepted.add(origin)
            else:
                self._problems[address] = problem
        if problem is not None:
            return Outcome.failed(problem, permanent=True)
        if not secret:
            return Outcome.failed("the EO has no webhook secret (or left the registry): notices cannot be signed",
                                  permanent=True)
        if body is None:
            return Outcome.failed("no webhook body was planned for this notice", permanent=True)
        headers = [
            ("Content-Type", WEBHOOK_CONTENT_TYPE),
            (IDEMPOTENCY_HEADER, idempotency_key),
            (SIGNATURE_HEADER, sign(secret, body, int(self._clock()))),
        ]
        try:
            answer = await self._client.post(address, body=body, headers=headers, timeout_s=timeout_s)
        except TargetRefused as exc:
            return Outcome.failed(str(exc), permanent=True)
        except TransportError as exc:
            return Outcome.failed(str(exc))
        except TimeoutError:
            return Outcome.failed(f"no answer within {timeout_s:g}s")
        if 200 <= answer.status < 300:
            return Outcome.delivered(answer.status)
        if 300 <= answer.status < 400:
            where = f" to {answer.location}" if answer.location else ""
            return Outcome.failed(
                f"HTTP {answer.status}: redirect{where} not followed; "
                "the webhook must answer 2xx at its registered URL",
                http_status=answer.status,
            )
        return Outcome.failed(f"HTTP {answer.status}", http_status=answer.status)

    async def aclose(self) -> None:
        await self._client.aclose()
