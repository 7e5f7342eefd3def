"""Message contracts: the CloudEvents 1.0 envelope and the ``data`` of every event on the contract topics.

The schema version lives in the topic name (``<prefix>.<name>.v1``); a breaking change gets a new topic.
Consumers validate at the edge with :func:`parse_event`; a message that does not validate is a value to
dead-letter, never an exception that stops a consumer.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, field_serializer

SPECVERSION = "1.0"
EORI_PATTERN = r"^[A-Z]{2}[A-Z0-9]{1,15}$"
"""An EORI: a two-letter country code and up to 15 letters or digits (e.g. LU12345678)."""
CONTENT_TYPE = "application/json"


class Component(StrEnum):
    """A channel of LUCCS whose availability decides the scenario."""

    ADA_B2G = "ada_b2g"
    NTP = "ntp"
    EO_B2G = "eo_b2g"


class ComponentState(StrEnum):
    UP = "up"
    DOWN = "down"
    UNKNOWN = "unknown"


class Scenario(StrEnum):
    """The three official fallback scenarios (see the procedure, section 3 of the product)."""

    EO_B2G_UNAVAILABLE = "EO_B2G_UNAVAILABLE"
    ADA_B2G_UNAVAILABLE = "ADA_B2G_UNAVAILABLE"
    LUCCS_UNAVAILABLE = "LUCCS_UNAVAILABLE"


class Scope(StrEnum):
    NATIONAL = "national"
    EO = "eo"


class ProcedureState(StrEnum):
    PROPOSED = "proposed"
    OPEN = "open"
    CLOSED = "closed"


class Language(StrEnum):
    FR = "fr"
    EN = "en"
    DE = "de"


class EventType(StrEnum):
    AVAILABILITY_CHANGED = "luccs.availability.changed"
    AVAILABILITY_HEARTBEAT = "luccs.availability.heartbeat"
    PROCEDURE_PROPOSED = "luccs.procedure.proposed"
    PROCEDURE_OPENED = "luccs.procedure.opened"
    PROCEDURE_UPDATED = "luccs.procedure.updated"
    PROCEDURE_CLOSED = "luccs.procedure.closed"
    PROCEDURE_BROADCAST = "luccs.procedure.broadcast"
    MAINTENANCE_SCHEDULED = "luccs.maintenance.scheduled"
    MAINTENANCE_CHANGED = "luccs.maintenance.changed"
    MAINTENANCE_CANCELLED = "luccs.maintenance.cancelled"
    MAINTENANCE_REMINDER = "luccs.maintenance.reminder"
    EO_UPSERTED = "luccs.eo.upserted"
    ADVISORY_RAISED = "luccs.advisory.raised"
    ADVISORY_CLEARED = "luccs.advisory.cleared"
    DELIVERY_RECORDED = "luccs.delivery.recorded"
    DEADLETTER_RECORDED = "luccs.deadletter.recorded"


PROCEDURE_EVENT_TYPES = frozenset(
    {
        EventType.PROCEDURE_PROPOSED,
        EventType.PROCEDURE_OPENED,
        EventType.PROCEDURE_UPDATED,
        EventType.PROCEDURE_CLOSED,
        EventType.PROCEDURE_BROADCAST,
    }
)
"""Every event type of the procedures topic whose ``data`` is a :class:`ProcedureData`; a broadcast carries
the procedure as it stands, with the message in ``broadcast``."""


MAINTENANCE_EVENT_TYPES = frozenset(
    {
        EventType.MAINTENANCE_SCHEDULED,
        EventType.MAINTENANCE_CHANGED,
        EventType.MAINTENANCE_CANCELLED,
        EventType.MAINTENANCE_REMINDER,
    }
)
"""Announcements of maintenance windows: on the procedures topic too (key ``national``), data
:class:`MaintenanceData`."""


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class AvailabilityData(_Data):
    """One detector's view of one target: published on every state change and as a periodic heartbeat."""

    target_id: str = Field(..., min_length=1, description="Configured id of the probed target (the message key).")
    component: Component = Field(..., description="Which channel this target watches.")
    eori: str | None = Field(
        None, pattern=EORI_PATTERN, description="EORI of the EO whose AS4 endpoint this is (eo_b2g only)."
    )
    detector_instance: str = Field(..., min_length=1, description="Vantage point that made the observation.")
    state: ComponentState = Field(..., description="The target's state after this observation.")
    previous_state: ComponentState | None = Field(None, description="State before a change; null on heartbeats.")
    since: AwareDatetime = Field(..., description="When the target entered its current state.")
    observed_at: AwareDatetime = Field(..., description="When the probe that produced this view finished.")
    probe: str = Field(..., description="Probe kind: as4, http, tcp, tls or domibus.")
    ok: bool = Field(..., description="Whether the latest probe succeeded.")
    reason: str = Field(..., description="Reason code of the latest probe result, e.g. ok, refused, timeout.")
    detail: str | None = Field(None, description="Human-readable detail of the latest probe result.")
    latency_ms: float | None = Field(None, ge=0, description="Latency of the latest probe in milliseconds.")
    degraded: bool = Field(False, description="Up, but slower than the target's latency bound.")
    cert_expires_at: AwareDatetime | None = Field(
        None, description="Expiry of the TLS certificate the target presented, when known."
    )
    ebms_error: str | None = Field(
        None, description="ebMS error code of an AS4 answer that still proves the MSH alive, e.g. EBMS:0103."
    )
    as4_signing_cert_expires_at: AwareDatetime | None = Field(
        None, description="Signed AS4 pings: expiry of our own signing certificate, when known."
    )
    as4_partner_cert_expires_at: AwareDatetime | None = Field(
        None, description="Signed AS4 pings: expiry of the certificate receipts are (to be) signed with, when known."
    )
    # Suspicion: a streak of probes disagreeing with ``state`` is running but has not reached its threshold.
    # Published at once (as a heartbeat) so that the procedure service can wait for a verdict that is on its
    # way instead of deciding on half the picture. Consumers that do not know these fields ignore them.
    suspect: bool = Field(
        False, description="The latest probe disagrees with state: a change may be on its way (see verdict_by)."
    )
    streak: int = Field(
        0, ge=0, description="Consecutive probes, up to the latest, with the latest probe's outcome (ok or not)."
    )
    threshold: int | None = Field(
        None, ge=1, description="Consecutive probes of that outcome that change the state (the target's threshold)."
    )
    verdict_by: AwareDatetime | None = Field(
        None,
        description="While suspect: when the running streak reaches its threshold at the latest if every probe "
        "keeps its outcome (the remaining retries and their timeout). Null otherwise.",
    )


class Evidence(_Data):
    """An observation that justified a decision, kept for audit."""

    target_id: str
    component: Component
    detector_instance: str
    state: ComponentState
    observed_at: AwareDatetime
    reason: str
    suspect: bool = Field(False, description="The latest probe disagreed with state: a verdict was on its way.")


class Origin(StrEnum):
    """Who started a procedure: the detectors, the EO itself (scenario 1 self-report), an operator, or a
    maintenance window at its start."""

    DETECTED = "detected"
    EO_REPORT = "eo_report"
    OPERATOR = "operator"
    PLANNED = "planned"


class BroadcastAuthor(StrEnum):
    """Who speaks in a broadcast: the Servicedesk eDouane or the Bureau de recette Douanes."""

    SERVICEDESK = "servicedesk"
    BUREAU = "bureau"


class LocalisedText(_Data):
    """One message written in each of the three languages of the notices."""

    fr: str = Field(..., min_length=1, description="The message in French.")
    en: str = Field(..., min_length=1, description="The message in English.")
    de: str = Field(..., min_length=1, description="The message in German.")

    def in_language(self, language: Language) -> str:
        text: str = getattr(self, language.value)
        return text


class Broadcast(_Data):
    """A message of the Servicedesk or the Bureau to every EO a procedure concerns, in each EO's language."""

    broadcast_id: str = Field(..., description="Stable id of the broadcast.")
    author: BroadcastAuthor = Field(..., description="servicedesk or bureau.")
    text: LocalisedText = Field(..., description="The message, as written, in fr, en and de.")
    sent_at: AwareDatetime = Field(..., description="When the operator sent it.")


def procedure_key(scope: Scope, eori: str | None) -> str:
    """The key of a procedure event: the subject the procedure is about, ``national`` or the EO's EORI.

    One subject's successive procedures (a closed one and the next one opened) share a partition, so every
    consumer reads them in the order they were decided."""
    if scope == Scope.NATIONAL:
        return Scope.NATIONAL.value
    if not eori:
        raise ValueError("a procedure of scope eo needs its eori")
    return eori


class ProcedureData(_Data):
    """A fallback procedure as announced on the procedures topic."""

    procedure_id: str = Field(..., description="Stable id of the procedure.")
    scenario: Scenario = Field(..., description="Scenario in force after this event.")
    previous_scenario: Scenario | None = Field(None, description="Scenario before an update; null otherwise.")
    scope: Scope = Field(..., description="national (all EOs) or eo (one EO).")
    eori: str | None = Field(None, description="The EO concerned when scope is eo.")
    state: ProcedureState = Field(..., description="State of the procedure after this event.")
    reason: str = Field(..., description="Why this event happened, in words an operator understands.")
    opened_at: AwareDatetime | None = Field(None, description="When the procedure was opened.")
    closed_at: AwareDatetime | None = Field(None, description="When the procedure was closed.")
    origin: Origin = Field(Origin.DETECTED, description="Who started the procedure.")
    components: dict[Component, ComponentState] = Field(
        default_factory=dict,
        description="National component states at the time: a notice must never advise a channel that is down.",
    )
    evidence: list[Evidence] = Field(default_factory=list, description="Observations behind the decision.")
    broadcast: Broadcast | None = Field(
        None, description="The Servicedesk's or the Bureau's message (luccs.procedure.broadcast only; null otherwise)."
    )
    maintenance_id: str | None = Field(
        None, description="The maintenance window that opened this procedure (origin planned), if any."
    )
    maintenance_ends_at: AwareDatetime | None = Field(
        None, description="The announced end of that maintenance window, as it stands (null without a window)."
    )


class MaintainedComponent(StrEnum):
    """What a maintenance window takes down: the ADA's B2G, NTP, or the whole of LUCCS (both)."""

    ADA_B2G = "ada_b2g"
    NTP = "ntp"
    LUCCS = "luccs"


class MaintenanceState(StrEnum):
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    DONE = "done"
    CANCELLED = "cancelled"


class MaintenanceData(_Data):
    """A maintenance window as announced on the procedures topic (key ``national``)."""

    maintenance_id: str = Field(..., description="Stable id of the window.")
    component: MaintainedComponent = Field(..., description="ada_b2g, ntp or luccs (both).")
    starts_at: AwareDatetime = Field(..., description="Announced start.")
    ends_at: AwareDatetime = Field(..., description="Announced end.")
    state: MaintenanceState = Field(..., description="State of the window after this event.")
    reason: str = Field(..., description="Why, as the operator wrote it.")
    message: LocalisedText | None = Field(None, description="The operator's own words to EOs, in fr, en and de.")
    lead_s: int | None = Field(None, description="On reminders: how long before the start this reminder is due.")
    previous_starts_at: AwareDatetime | None = Field(None, description="On changes: the start announced before.")
    previous_ends_at: AwareDatetime | None = Field(None, description="On changes: the end announced before.")


class DetectedReason(StrEnum):
    """The reasons the scenario engine records for the decisions it makes from the probes (the ``reason`` of
    a procedure event). Notices to EOs word them in the EO's language; any other reason (written by an
    operator or an EO) is shown as written, quoted."""

    ADA_B2G_DOWN = "ADA B2G (AS4) is unavailable while NTP is available"
    LUCCS_DOWN = "ADA B2G (AS4) and NTP are both unavailable"
    EO_B2G_DOWN = "the EO's own B2G (AS4) endpoint is unavailable"
    ADA_B2G_BACK = "ADA B2G (AS4) is available again"
    ADA_B2G_BACK_NTP_DOWN = (
        "ADA B2G (AS4) is available again; NTP is still unavailable"
        " (advisory to the Servicedesk, not a fallback scenario)"
    )
    EO_B2G_BACK = "the EO's own B2G (AS4) endpoint answers again"


class AdvisoryKind(StrEnum):
    NTP_UNAVAILABLE = "ntp_unavailable"
    MONITORING_BLIND = "monitoring_blind"
    CERTIFICATE_EXPIRING = "certificate_expiring"


class CertificateRole(StrEnum):
    """Which certificate of a national target a certificate advisory is about."""

    TLS = "tls"
    """The certificate the target presented in the TLS handshake."""
    AS4_SIGNING = "as4_signing"
    """Our own AS4 signing certificate (signed pings): the MSH refuses our pings once it has expired."""
    AS4_PARTNER = "as4_partner"
    """The certificate the partner's MSH signs its AS4 receipts with."""


class CertificateExpiry(_Data):
    """A certificate of a national target nearing (or past) its expiry, as a certificate advisory names it."""

    target_id: str = Field(..., description="The target whose probe saw the certificate.")
    component: Component = Field(..., description="ada_b2g or ntp: the channel the target watches.")
    role: CertificateRole = Field(..., description="tls, as4_signing (ours) or as4_partner.")
    expires_at: AwareDatetime = Field(..., description="The certificate's expiry (notAfter).")
    warning_days: int = Field(
        ..., ge=0, description="The warning level reached: 30, 14 or 7 days before expiry, 0 once expired."
    )


class AdvisoryData(_Data):
    """A notice for the Servicedesk and ops that is not a fallback scenario (no EO is told).

    ``ntp_unavailable``: NTP is down while ADA B2G is fine. ``monitoring_blind``: no fresh observation of a
    component (a dead detector is not a dead LUCCS, but someone must look). ``certificate_expiring``: a
    certificate of a national target has reached a warning level (``certificate``); raised again, same
    ``advisory_id``, at each closer level, cleared once the target presents another certificate.
    """

    advisory_id: str = Field(..., description="Stable id from raise to clear (the message key).")
    kind: AdvisoryKind
    active: bool = Field(..., description="True when raised, False when cleared.")
    components: list[Component] = Field(default_factory=list, description="Components concerned.")
    reason: str
    raised_at: AwareDatetime
    cleared_at: AwareDatetime | None = None
    certificate: CertificateExpiry | None = Field(
        None, description="certificate_expiring only: the certificate and the warning level reached."
    )


class EoData(_Data):
    """An EO registry entry, as published on the compacted EO topic (key = EORI; deletion = tombstone)."""

    eori: str = Field(..., pattern=EORI_PATTERN, description="EORI number of the economic operator.")
    name: str = Field(..., description="Legal name of the EO.")
    language: Language = Field(Language.FR, description="Language of the notices sent to this EO.")
    email: str | None = Field(None, description="Address for e-mail notices.")
    webhook_url: str | None = Field(None, description="Where procedure notices are POSTed.")
    webhook_secret: SecretStr | None = Field(None, description="HMAC key for X-Luccs-Signature.")
    as4_endpoint: str | None = Field(None, description="The EO's own AS4 endpoint, probed by the detector.")
    api_key_hash: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 (hex) of the EO's current API key, so every service recognises the EO's own requests; "
                    "never the key itself.",
    )

    @field_serializer("webhook_secret", when_used="json")
    def _reveal_secret(self, secret: SecretStr | None) -> str | None:
        # The notifier needs the key itself to sign; the value never reaches logs or API responses.
        return secret.get_secret_value() if secret is not None else None


class DeliveryChannel(StrEnum):
    WEBHOOK = "webhook"
    EMAIL = "email"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    RETRYING = "retrying"
    DEAD = "dead"


class DeliveryData(_Data):
    """The outcome of one delivery attempt of a procedure notice to one recipient."""

    delivery_id: str
    event_id: str = Field(..., description="Id of the procedure CloudEvent being delivered.")
    procedure_id: str
    eori: str | None
    channel: DeliveryChannel
    recipient: str = Field(..., description="Webhook URL or e-mail address.")
    attempt: int = Field(..., ge=1)
    status: DeliveryStatus
    http_status: int | None = None
    error: str | None = None
    at: AwareDatetime


class DeadLetterData(_Data):
    """A message a consumer could not process, with why, and its original bytes (base64)."""

    source_topic: str
    partition: int
    offset: int
    consumer_group: str
    key: str | None = Field(None, description="Original key, base64.")
    value: str | None = Field(None, description="Original value, base64.")
    reason: str


DataT = TypeVar("DataT", bound=BaseModel)


class CloudEvent(BaseModel, Generic[DataT]):
    """A CloudEvents 1.0 structured-mode JSON envelope."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1)
    source: str = Field(..., min_length=1, description="URI-reference of the producing service instance.")
    type: EventType = Field(..., description="What happened: one of the contract's event types.")
    time: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    subject: str | None = None
    datacontenttype: Literal["application/json"] = "application/json"
    data: DataT

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


AvailabilityEvent = CloudEvent[AvailabilityData]
ProcedureEvent = CloudEvent[ProcedureData]
AdvisoryEvent = CloudEvent[AdvisoryData]
EoEvent = CloudEvent[EoData]
DeliveryEvent = CloudEvent[DeliveryData]
DeadLetterEvent = CloudEvent[DeadLetterData]

_ALLOWED_TYPES: dict[type[BaseModel], frozenset[str]] = {
    AvailabilityData: frozenset({EventType.AVAILABILITY_CHANGED, EventType.AVAILABILITY_HEARTBEAT}),
    ProcedureData: PROCEDURE_EVENT_TYPES,
    MaintenanceData: MAINTENANCE_EVENT_TYPES,
    AdvisoryData: frozenset({EventType.ADVISORY_RAISED, EventType.ADVISORY_CLEARED}),
    EoData: frozenset({EventType.EO_UPSERTED}),
    DeliveryData: frozenset({EventType.DELIVERY_RECORDED}),
    DeadLetterData: frozenset({EventType.DEADLETTER_RECORDED}),
}
_adapters: dict[type[BaseModel], TypeAdapter[Any]] = {}


class InvalidEvent(ValueError):
    """A message that is not a valid contract event; its text is the dead-letter reason."""


class ForeignEvent(InvalidEvent):
    """A valid message of another kind sharing the topic (a maintenance announcement on the procedures topic,
    read by a procedure consumer): not for this consumer, skipped rather than dead-lettered."""


# Data models sharing one topic: each one's consumers skip the others' event types.
_SHARED_TOPIC: dict[type[BaseModel], frozenset[str]] = {
    ProcedureData: MAINTENANCE_EVENT_TYPES,  # the guests' types (see _GUESTS for the other direction)
}


_GUESTS: dict[type[BaseModel], frozenset[str]] = {MaintenanceData: MAINTENANCE_EVENT_TYPES}
"""Data models read from a topic that belongs to another one (maintenance announcements travel on the
procedures topic): their consumers claim only messages of their own types and leave everything else, poison
included, to the topic's own consumers, so a bad message is dead-lettered once per reading service."""


def claims(data_model: type[BaseModel], raw: bytes | None) -> bool:
    """Whether a consumer of ``data_model`` is answerable for ``raw`` (a tombstone is None): always, unless it
    is a guest on the topic and the message does not say it is one of the guest's types."""
    guest_types = _GUESTS.get(data_model)
    return guest_types is None or (raw is not None and _event_type(raw) in guest_types)


def parse_event(raw: bytes, data_model: type[DataT]) -> CloudEvent[DataT]:
    """Parse and validate one message; raise :class:`InvalidEvent` with a readable reason if it is not valid."""
    if not claims(data_model, raw):
        raise ForeignEvent(f"a {_event_type(raw)!r} message is left to the topic's own consumers")
    adapter = _adapters.get(data_model)
    if adapter is None:
        adapter = _adapters[data_model] = TypeAdapter(CloudEvent[data_model])  # type: ignore[valid-type]
    try:
        event: CloudEvent[DataT] = adapter.validate_json(raw)
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        found = _event_type(raw)
        if found in _SHARED_TOPIC.get(data_model, frozenset()):
            raise ForeignEvent(f"a {found} event is not for a {data_model.__name__} consumer") from exc
        if found is not None and _only_the_type_is_wrong(exc):
            raise InvalidEvent(f"unexpected event type {found!r} for {data_model.__name__}") from exc
        raise InvalidEvent(_summarise(exc)) from exc
    if event.type in _SHARED_TOPIC.get(data_model, frozenset()):
        raise ForeignEvent(f"a {event.type} event is not for a {data_model.__name__} consumer")
    if event.type not in _ALLOWED_TYPES[data_model]:
        raise InvalidEvent(f"unexpected event type {event.type!r} for {data_model.__name__}")
    return event


def _event_type(raw: bytes) -> str | None:
    try:
        found = json.loads(raw).get("type")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def _only_the_type_is_wrong(exc: ValueError) -> bool:
    errors = getattr(exc, "errors", None)
    return callable(errors) and all(tuple(e["loc"]) == ("type",) for e in errors())


def _summarise(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in errors()[:5]]
        return "schema validation failed: " + "; ".join(parts)
    return f"unparseable message: {exc}"
