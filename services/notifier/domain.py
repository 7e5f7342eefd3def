"""Who must be told what, on which channel, and when to try again. Pure: no I/O, the clock is passed in.

The notifier's decisions live here as functions over values: the recipients of a procedure event or an
advisory (EOs, the Servicedesk eDouane, the Bureau de recette Douanes), what the notices may advise given
which channels are down, the retry schedule, and which webhook targets may be called at all.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from urllib.parse import urlsplit

from tenacity import RetryCallState, stop_after_attempt, stop_after_delay, wait_random_exponential

from shared.events import (
    DeliveryChannel,
    EventType,
    Language,
    Origin,
    ProcedureData,
    ProcedureState,
    Scenario,
    Scope,
)

__all__ = [
    "Audience",
    "EoContact",
    "NoticeKind",
    "PlannedNotice",
    "RetryPolicy",
    "Situation",
    "StaffContact",
    "address_problem",
    "bureau_concerned",
    "idempotency_key",
    "lane_of",
    "next_attempt_at",
    "notice_kind",
    "plan_advisory_notices",
    "plan_procedure_notices",
    "reaches_eos",
    "webhook_url_problem",
]


class Audience(StrEnum):
    """Who reads a notice: an EO, or one of the two configured customs recipients."""

    EO = "eo"
    SERVICEDESK = "servicedesk"
    BUREAU = "bureau"


class NoticeKind(StrEnum):
    PROPOSED = "proposed"
    OPENED = "opened"
    UPDATED = "updated"
    CLOSED = "closed"
    ADVISORY_RAISED = "advisory_raised"
    ADVISORY_CLEARED = "advisory_cleared"


_KINDS = {
    EventType.PROCEDURE_PROPOSED: NoticeKind.PROPOSED,
    EventType.PROCEDURE_OPENED: NoticeKind.OPENED,
    EventType.PROCEDURE_UPDATED: NoticeKind.UPDATED,
    EventType.PROCEDURE_CLOSED: NoticeKind.CLOSED,
    EventType.ADVISORY_RAISED: NoticeKind.ADVISORY_RAISED,
    EventType.ADVISORY_CLEARED: NoticeKind.ADVISORY_CLEARED,
}


def notice_kind(event_type: str) -> NoticeKind:
    """The kind of notice an event type gives rise to; ValueError for events that are not notices."""
    try:
        return _KINDS[EventType(event_type)]
    except (ValueError, KeyError):
        raise ValueError(f"no notice for events of type {event_type!r}") from None


@dataclass(frozen=True)
class Situation:
    """What the notifier knows of the channels besides the procedure being announced.

    ``national_*`` describe another open national procedure (never the one being announced);
    ``ntp_advisory`` is an active NTP-only outage advisory (NTP down while the ADA B2G is fine).
    """

    national_procedure_id: str | None = None
    national_scenario: Scenario | None = None
    ntp_advisory: bool = False

    @property
    def ntp_down(self) -> bool:
        return self.ntp_advisory or self.national_scenario == Scenario.LUCCS_UNAVAILABLE


@dataclass(frozen=True)
class EoContact:
    """An EO as the notifier plans for it: how to reach it and whether its own B2G is in fallback."""

    eori: str
    language: Language
    webhook_url: str | None = None
    email: str | None = None
    own_procedure_id: str | None = None
    """An open scenario-1 procedure of this EO (its own B2G is down), if any."""


@dataclass(frozen=True)
class StaffContact:
    """A configured customs recipient (Servicedesk eDouane or Bureau de recette Douanes): e-mail only."""

    email: str
    language: Language


@dataclass(frozen=True)
class PlannedNotice:
    """One notice to one recipient on one channel, as decided before anything is sent."""

    audience: Audience
    recipient_key: str
    """The EORI for an EO, else the audience's name: one delivery per (event, recipient_key, channel)."""
    channel: DeliveryChannel
    address: str
    language: Language
    eori: str | None = None
    own_procedure_id: str | None = None


def bureau_concerned(event_type: str, procedure: ProcedureData) -> bool:
    """The Bureau de recette Douanes co-runs the exception case: it hears of scenario 3 starting and ending."""
    kind = notice_kind(event_type)
    if not reaches_eos(kind, procedure):  # nor the Bureau: a proposal is not in force
        return False
    s3 = Scenario.LUCCS_UNAVAILABLE
    return procedure.scenario == s3 or (kind == NoticeKind.UPDATED and procedure.previous_scenario == s3)


def reaches_eos(kind: NoticeKind, procedure: ProcedureData) -> bool:
    """EOs hear of a procedure only once it is in force: never of a proposal, its changes or its withdrawal."""
    if kind == NoticeKind.PROPOSED or procedure.state == ProcedureState.PROPOSED:
        return False
    return procedure.opened_at is not None  # closed without ever opening = a withdrawn proposal


def plan_procedure_notices(
    *,
    event_type: str,
    procedure: ProcedureData,
    eos: Iterable[EoContact],
    servicedesk: StaffContact | None,
    bureau: StaffContact | None,
) -> list[PlannedNotice]:
    """Every notice a procedure event calls for, EOs sorted by EORI, then the Servicedesk, then the Bureau.

    National scenarios reach every registered EO; scenario 1 only the EO concerned. An EO is reached by
    webhook when it registered one, else by e-mail. A scenario-1 outage detected by the probes means the
    EO's own system is down, and its webhook may well be down with it: it is e-mailed as well. Proposed
    procedures, their updates and their withdrawal reach no EO (an operator has not confirmed
    them). The Servicedesk hears of every event.
    """
    kind = notice_kind(event_type)
    if kind in (NoticeKind.ADVISORY_RAISED, NoticeKind.ADVISORY_CLEARED):
        raise ValueError(f"{event_type} is not a procedure event")
    notices: list[PlannedNotice] = []
    if reaches_eos(kind, procedure):
        if procedure.scope == Scope.NATIONAL:
            concerned = sorted(eos, key=lambda eo: eo.eori)
        else:
            concerned = [eo for eo in eos if eo.eori == procedure.eori]
        also_email = procedure.scenario == Scenario.EO_B2G_UNAVAILABLE and procedure.origin == Origin.DETECTED
        for eo in concerned:
            notices.extend(_eo_notices(eo, also_email=also_email))
    if servicedesk is not None:
        notices.append(_staff_notice(Audience.SERVICEDESK, servicedesk))
    if bureau is not None and bureau_concerned(event_type, procedure):
        notices.append(_staff_notice(Audience.BUREAU, bureau))
    return notices


def plan_advisory_notices(*, servicedesk: StaffContact | None) -> list[PlannedNotice]:
    """Advisories (NTP-only outage, monitoring blind) are for the Servicedesk alone: no EO is told."""
    return [_staff_notice(Audience.SERVICEDESK, servicedesk)] if servicedesk is not None else []


def _eo_notices(eo: EoContact, *, also_email: bool) -> list[PlannedNotice]:
    channels: list[tuple[DeliveryChannel, str]] = []
    if eo.webhook_url:
        channels.append((DeliveryChannel.WEBHOOK, eo.webhook_url))
    if eo.email and (also_email or not eo.webhook_url):
        channels.append((DeliveryChannel.EMAIL, eo.email))
    return [
        PlannedNotice(
            audience=Audience.EO, recipient_key=eo.eori, channel=channel, address=address, language=eo.language,
            eori=eo.eori, own_procedure_id=eo.own_procedure_id,
        )
        for channel, address in channels
    ]


def _staff_notice(audience: Audience, contact: StaffContact) -> PlannedNotice:
    return PlannedNotice(
        audience=audience, recipient_key=audience.value, channel=DeliveryChannel.EMAIL, address=contact.email,
        language=contact.language,
    )


def idempotency_key(event_id: str, recipient_key: str, channel: DeliveryChannel) -> str:
    """Stable per (event, recipient, channel): every attempt, and a re-send after a crash, carries the same key."""
    return f"{event_id}:{recipient_key}:{channel.value}"


def lane_of(channel: DeliveryChannel, address: str) -> str:
    """The queue a delivery waits in: one per webhook host (``host:port``), one for the SMTP server.

    Deliveries of one lane share its concurrency limit, so a slow host holds its own lane and no other.
    """
    if channel == DeliveryChannel.EMAIL:
        return "smtp"
    parts = urlsplit(address)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    return f"{(parts.hostname or '').lower()}:{port}"


# --- retries --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, up to ``max_attempts`` tries or ``max_age_s`` after planning."""

    max_attempts: int
    max_age_s: float
    base_s: float
    max_delay_s: float


def next_attempt_at(*, policy: RetryPolicy, attempt: int, planned_at: datetime, now: datetime) -> datetime | None:
    """When to try again after failed attempt number ``attempt`` (1-based); None: give up (dead-letter).

    The schedule comes from tenacity's strategies (``wait_random_exponential``: the delay is drawn from
    [0, min(max_delay, base * 2**(attempt-1))], which spreads a herd of failed deliveries; the stop
    conditions: attempts or age). It is returned as a time, so the caller stores it and a restart keeps it.
    """
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    state.start_time = 0.0
    state.outcome_timestamp = max(0.0, (now - planned_at).total_seconds())
    stop = stop_after_attempt(policy.max_attempts) | stop_after_delay(policy.max_age_s)
    if stop(state):
        return None
    delay = wait_random_exponential(multiplier=policy.base_s, max=policy.max_delay_s)(state)
    retry_at = now + timedelta(seconds=delay)
    deadline = planned_at + timedelta(seconds=policy.max_age_s)
    return min(retry_at, deadline)


# --- webhook targets ------------------------------------------------------------------------------------

_LOCAL_NAMES = ("localhost", "localhost.localdomain")


def webhook_url_problem(url: str, *, allow_insecure: bool, allow_private: bool) -> str | None:
    """Why a webhook URL must not be called (None if it may): https only and no private targets, by default.

    This judges the URL as written (scheme, localhost names, address literals in any notation the system
    resolver accepts, such as ``127.1`` or ``2130706433``). Host names are judged again, on the addresses
    they resolve to, right before connecting (:func:`address_problem`).
    """
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        _ = parts.port
    except ValueError:
        return f"not a valid http(s) URL: {url!r}"
    if parts.scheme not in ("https", "http") or not hostname:
        return f"not an http(s) URL: {url!r}"
    if parts.scheme == "http" and not allow_insecure:
        return "webhook URL must use https (notifier.allow_insecure_webhooks is off)"
    if allow_private:
        return None
    host = hostname.rstrip(".").lower()
    if host in _LOCAL_NAMES or host.endswith(".localhost"):
        return f"webhook host {hostname} is loopback (notifier.allow_private_webhooks is off)"
    literal = _address_literal(host)
    if literal is not None:
        return address_problem(literal, allow_private=False, host=hostname)
    return None


def address_problem(
    address: str | ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool, host: str | None = None
) -> str | None:
    """Why a webhook must not connect to this IP address (None if it may): loopback, private, link-local,
    multicast, reserved and other non-global addresses are refused unless private webhooks are allowed."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if allow_private or (ip.is_global and not ip.is_multicast):
        return None
    named = f"webhook host {host} resolves to {ip}" if host and host.strip("[]") != str(ip) else f"webhook host {ip}"
    return f"{named}, a loopback/private/non-global address (notifier.allow_private_webhooks is off)"


def _address_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:  # inet_aton accepts the shorthand forms getaddrinfo would connect to: 127.1, 0x7f000001, 2130706433
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None
