"""Who must be told what, on which channel, and when to try again. Pure: no I/O, the clock is passed in.

The notifier's decisions live here as functions over values: the recipients of a procedure event or an
advisory (EOs, the Servicedesk eDouane, the Bureau de recette Douanes), the retry schedule (a
:class:`shared.retry.RetryPolicy`), which webhook targets may be called at all, and how every EO is reached
in the end (what an EO notice says, and that it never advises a channel that is down, is decided in
:mod:`services.notifier.advice`):

- a webhook notice not delivered ``escalate_after_s`` after it was planned also goes by e-mail, once;
  when a newer notice of the same subject (``national``, or the EO's EORI) was planned for the EO
  meanwhile, that newer one (the current situation) goes instead, and nothing when it was delivered;
- ``escalate_after_s`` after the escalation, the Servicedesk gets one digest per fan-out listing the EOs
  it has still not reached (told neither this notice nor a later one of the same subject);
- time to inform: from a procedure's opening until 50 %, 99 % and 100 % of its concerned EOs were reached.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple
from urllib.parse import urlsplit

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
from shared.retry import Backoff, RetryPolicy

__all__ = [
    "NO_ADDRESS",
    "Audience",
    "EoContact",
    "EoNotice",
    "NoticeKind",
    "PlannedNotice",
    "Situation",
    "StaffContact",
    "TimeToReach",
    "UnreachedEo",
    "address_problem",
    "bureau_concerned",
    "concerned_eos",
    "delivery_retry_policy",
    "escalation_target",
    "escalation_times",
    "fanout_unreached",
    "idempotency_key",
    "lane_of",
    "next_attempt_at",
    "notice_kind",
    "plan_advisory_notices",
    "plan_procedure_notices",
    "reaches_eos",
    "time_to_reach",
    "url_origin",
    "watched_for_escalation",
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


class EoContact(NamedTuple):
    """An EO as the notifier plans for it: how to reach it and whether its own B2G is in fallback.

    Immutable values, as named tuples rather than frozen dataclasses: a national fan-out builds 100,000 of
    these and of :class:`PlannedNotice`, and a frozen dataclass sets each field through ``object.__setattr__``.
    """

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


class PlannedNotice(NamedTuple):
    """One notice to one recipient on one channel, as decided before anything is sent (a named tuple: see
    :class:`EoContact`)."""

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
    also_email = procedure.scenario == Scenario.EO_B2G_UNAVAILABLE and procedure.origin == Origin.DETECTED
    for eo in concerned_eos(event_type=event_type, procedure=procedure, eos=eos):
        notices.extend(_eo_notices(eo, also_email=also_email))
    if servicedesk is not None:
        notices.append(_staff_notice(Audience.SERVICEDESK, servicedesk))
    if bureau is not None and bureau_concerned(event_type, procedure):
        notices.append(_staff_notice(Audience.BUREAU, bureau))
    return notices


def concerned_eos(*, event_type: str, procedure: ProcedureData, eos: Iterable[EoContact]) -> list[EoContact]:
    """The EOs a procedure event concerns, by EORI: every registered EO for a national procedure, the EO
    itself for scenario 1; none while the procedure is not in force (see :func:`reaches_eos`)."""
    if not reaches_eos(notice_kind(event_type), procedure):
        return []
    if procedure.scope == Scope.NATIONAL:
        return sorted(eos, key=lambda eo: eo.eori)
    return [eo for eo in eos if eo.eori == procedure.eori]


def plan_advisory_notices(*, servicedesk: StaffContact | None) -> list[PlannedNotice]:
    """Advisories (NTP-only outage, monitoring blind) are for the Servicedesk alone: no EO is told."""
    return [_staff_notice(Audience.SERVICEDESK, servicedesk)] if servicedesk is not None else []


def _eo_notices(eo: EoContact, *, also_email: bool) -> list[PlannedNotice]:
    # Positional and without an intermediate list of channels: one call per EO of a national fan-out.
    eori, webhook_url, email = eo.eori, eo.webhook_url, eo.email
    if webhook_url:
        by_webhook = PlannedNotice(Audience.EO, eori, DeliveryChannel.WEBHOOK, webhook_url, eo.language, eori,
                                   eo.own_procedure_id)
        if email and also_email:
            return [by_webhook, PlannedNotice(Audience.EO, eori, DeliveryChannel.EMAIL, email, eo.language, eori,
                                              eo.own_procedure_id)]
        return [by_webhook]
    if email:
        return [PlannedNotice(Audience.EO, eori, DeliveryChannel.EMAIL, email, eo.language, eori, eo.own_procedure_id)]
    return []


def _staff_notice(audience: Audience, contact: StaffContact) -> PlannedNotice:
    return PlannedNotice(
        audience=audience, recipient_key=audience.value, channel=DeliveryChannel.EMAIL, address=contact.email,
        language=contact.language,
    )


def idempotency_key(event_id: str, recipient_key: str, channel: DeliveryChannel) -> str:
    """Stable per (event, recipient, channel): every attempt, and a re-send after a crash, carries the same key."""
    return f"{event_id}:{recipient_key}:{channel.value}"


def url_origin(url: str) -> str | None:
    """``scheme://authority`` of ``url``, cut where ``urllib.parse.urlsplit`` ends the authority (the first
    ``/``, ``?`` or ``#`` after ``//``); None if it has no ``://``. What :func:`lane_of` and the URL rules
    (:func:`webhook_url_problem`) read of a URL: both are worked out once per origin, not per EO's URL."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return None
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark, 0, end)
        if found >= 0:
            end = found
    return url[:len(scheme) + 3 + end]


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


def delivery_retry_policy(*, max_attempts: int, max_age_s: float, base_s: float, max_delay_s: float) -> RetryPolicy:
    """The schedule of a notice's retries: exponential backoff with full jitter (the pause is drawn from
    [0, min(max_delay, base * 2**(attempt-1))], which spreads a herd of failed deliveries), up to
    ``max_attempts`` tries or ``max_age_s`` after planning."""
    return RetryPolicy(Backoff(first_s=base_s, max_s=max_delay_s, jitter=True), max_attempts=max_attempts,
                       max_elapsed_s=max_age_s)


def next_attempt_at(
    *, policy: RetryPolicy, attempt: int, planned_at: datetime, now: datetime, rng: random.Random | None = None
) -> datetime | None:
    """When to try again after failed attempt number ``attempt`` (1-based); None: give up (dead-letter).

    Returned as a time, never beyond the policy's age limit, so the caller stores it and a restart keeps it.
    """
    delay = policy.next_delay_s(attempt=attempt, elapsed_s=max(0.0, (now - planned_at).total_seconds()), rng=rng)
    if delay is None:
        return None
    retry_at = now + timedelta(seconds=delay)
    if policy.max_elapsed_s is None:
        return retry_at
    return min(retry_at, planned_at + timedelta(seconds=policy.max_elapsed_s))


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


# --- reaching every EO ----------------------------------------------------------------------------------

NO_ADDRESS = "no webhook or e-mail registered"
"""The last error of a concerned EO the notifier has no way to reach."""


def escalation_times(*, planned_at: datetime, escalate_after_s: float) -> tuple[datetime, datetime]:
    """When a webhook notice planned at ``planned_at`` that is still undelivered also goes by e-mail, and when
    the Servicedesk hears which EOs of its fan-out are still unreached (``escalate_after_s`` after that)."""
    after = timedelta(seconds=escalate_after_s)
    return planned_at + after, planned_at + 2 * after


def watched_for_escalation(planned: Iterable[PlannedNotice]) -> set[str]:
    """The EORIs whose webhook notice of this plan is watched for escalation: every EO reached by webhook
    that the same plan does not e-mail already (a detected scenario 1 goes both ways at once)."""
    by_webhook = {n.eori for n in planned if n.audience == Audience.EO and n.channel == DeliveryChannel.WEBHOOK}
    emailed = {n.eori for n in planned if n.audience == Audience.EO and n.channel == DeliveryChannel.EMAIL}
    return {eori for eori in by_webhook - emailed if eori}


@dataclass(frozen=True)
class EoNotice:
    """One EO's notice of one procedure event, all its channels together, as escalation and reach see it."""

    event_id: str
    planned_at: datetime
    delivered: bool
    """Delivered on at least one channel."""
    emailed: bool
    """An e-mail of it is planned already (sent or not)."""
    last_channel: DeliveryChannel | None = None
    """The channel of ``last_error``; without an error, the channel it is being tried on."""
    last_error: str | None = None
    """The latest failure of its undelivered channels, if any."""


def escalation_target(chain: Sequence[EoNotice], *, has_email: bool) -> str | None:
    """Which notice to e-mail to an EO whose webhook notice (``chain[0]``) is overdue; None: nothing.

    ``chain`` is the EO's notices of one subject (``national``, or its own EORI: one EO's scenario-1
    procedures) from the overdue one on, in the order planned. The last one is the current situation: a
    newer event of the same procedure or a later procedure of the subject supersedes the overdue notice,
    which is then not e-mailed alone; the current one goes instead. Nothing goes when the current notice
    was delivered (on any channel), is e-mailed already (once), or the EO has no e-mail address.
    """
    if not chain or not has_email:
        return None
    current = chain[-1]
    if current.delivered or current.emailed:
        return None
    return current.event_id


@dataclass(frozen=True)
class UnreachedEo:
    """A concerned EO not reached, with the channel and error of its latest failed try (None: none yet)."""

    eori: str
    channel: DeliveryChannel | None
    last_error: str | None


def fanout_unreached(chains: Mapping[str, Sequence[EoNotice]]) -> list[UnreachedEo]:
    """The EOs of a fan-out still unreached, by EORI: told neither its notice nor a later one of the subject.

    ``chains`` maps each EORI of the fan-out to its notices of the subject from the fan-out's one on (as
    for :func:`escalation_target`). An EO reached with a newer notice knows the current situation: it is
    not listed (that newer notice's own fan-out lists it if it was not reached).
    """
    unreached = []
    for eori in sorted(chains):
        chain = chains[eori]
        if any(notice.delivered for notice in chain):
            continue
        failed = [notice for notice in chain if notice.last_error is not None]
        latest = failed[-1] if failed else chain[-1] if chain else None
        unreached.append(UnreachedEo(
            eori=eori, channel=latest.last_channel if latest else None, last_error=latest.last_error if latest else None
        ))
    return unreached


REACH_SHARES = (50, 99, 100)
"""The shares (in %) of concerned EOs whose time to inform is reported."""


@dataclass(frozen=True)
class TimeToReach:
    """Seconds from a procedure's opening until 50 %, 99 % and all of its concerned EOs were reached."""

    reached_50_s: float | None
    reached_99_s: float | None
    reached_all_s: float | None
    first_reached_s: float | None = None
    """Seconds from the opening until the first concerned EO was reached (the time to first notice)."""


def time_to_reach(*, opened_at: datetime | None, reached_at: Sequence[datetime | None]) -> TimeToReach:
    """Time to inform: ``reached_at`` holds, per concerned EO, when it was first reached (None: not yet).

    The time for a share is the reach time of the ``ceil(share * concerned)``-th EO reached, counted from the
    opening (never negative: the clocks of two services may differ a little). None while fewer EOs were
    reached, when no EO is concerned, and for a procedure never opened. An EO registered late is concerned
    from then on: until it is reached, 100 % is not.
    """
    concerned = len(reached_at)
    times = sorted(moment for moment in reached_at if moment is not None)

    def share(percent: int) -> float | None:
        needed = -(-concerned * percent // 100)  # ceil, in integers
        if opened_at is None or concerned == 0 or len(times) < needed:
            return None
        return max(0.0, (times[needed - 1] - opened_at).total_seconds())

    half, most, every = (share(percent) for percent in REACH_SHARES)
    first = max(0.0, (times[0] - opened_at).total_seconds()) if opened_at is not None and times else None
    return TimeToReach(reached_50_s=half, reached_99_s=most, reached_all_s=every, first_reached_s=first)
