"""What the dispatcher hands a channel sender, and what the sender answers."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import NamedTuple, Protocol

from services.notifier.domain import Audience
from shared.events import DeliveryChannel, EventType, Language
from shared.text import is_unicode

__all__ = ["Job", "Outcome", "Sender"]


class Job(NamedTuple):
    """One attempt to deliver one notice to one recipient.

    Immutable as a frozen dataclass would be, but a named tuple: a national fan-out makes 100,000 of them on
    the event loop that sends, and a frozen dataclass sets each of its 17 fields through
    ``object.__setattr__`` (four times the cost).
    """

    delivery_id: str
    event_id: str
    event_type: EventType
    procedure_id: str
    eori: str | None
    audience: Audience
    channel: DeliveryChannel
    address: str
    lane: str
    idempotency_key: str
    attempt: int
    created_at: datetime
    language: Language
    subject: str
    message: str
    webhook_body: bytes | None
    webhook_secret: str | None


class Outcome(NamedTuple):
    """How an attempt ended. ``permanent`` failures are not retried (e.g. a webhook URL that is refused).

    A named tuple for the reason :class:`Job` is one: one per attempt, on the sending loop."""

    ok: bool
    error: str | None = None
    http_status: int | None = None
    permanent: bool = False

    @classmethod
    def delivered(cls, http_status: int | None = None) -> Outcome:
        return cls(ok=True, http_status=http_status)

    @classmethod
    def failed(cls, error: str, *, http_status: int | None = None, permanent: bool = False) -> Outcome:
        return cls(ok=False, error=storable(error), http_status=http_status, permanent=permanent)


def storable(error: str) -> str:
    """``error`` as text every database stores: a lone surrogate (aiosmtplib decodes a server's reply with
    ``surrogateescape``: a Latin-1 ``550 Adresse refus\\xe9e``; an exception's text) becomes the escaped byte it
    stands for, a NUL (which PostgreSQL's text refuses) ``\\x00``. Recorded as it was, such an error failed the
    whole batch of outcomes holding it, retried for ever."""
    if not is_unicode(error):
        try:
            error = error.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that stands for no byte
            error = error.encode("utf-8", "backslashreplace").decode("utf-8")
    return error.replace("\0", "\\x00") if "\0" in error else error


class Sender(Protocol):
    """Delivers jobs of one channel; never raises for a delivery problem, it answers an :class:`Outcome`.

    ``send`` returns an awaitable: a coroutine (``async def``), or a future that a webhook worker's answer
    resolves (:mod:`services.notifier.webhook_workers`).

    A sender may have an ``ahead`` attribute (an int; none: 0): how many attempts of one lane beyond its limit
    it takes at once while the dispatcher's global slots are free, keeping to the lane's limit of attempts in
    flight itself (the webhook workers queue them and start each the moment one ends)."""

    def send(self, job: Job) -> Awaitable[Outcome]: ...

    async def aclose(self) -> None: ...
