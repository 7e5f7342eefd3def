"""Tables of the notifier: its copy of the EO registry, what it knows of open procedures and advisories,
the delivery log (planned events, rendered notices, one row per delivery, one per attempt) and who of the
EOs a procedure concerns has been reached."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, QueryableAttribute, mapped_column

from services.notifier.domain import Audience
from shared.db import UTCDateTime, closed_set
from shared.events import (
    AdvisoryKind,
    DeliveryChannel,
    DeliveryStatus,
    EventType,
    Language,
    ProcedureState,
    Scenario,
    Scope,
)


class Base(DeclarativeBase):
    pass


DUE_STATUSES = (DeliveryStatus.PENDING.value, DeliveryStatus.RETRYING.value)
"""A delivery in either status is still to be attempted."""
_DUE_SQL = f"status IN ({', '.join(repr(value) for value in DUE_STATUSES)})"
_ESCALATING_SQL = "escalate_at IS NOT NULL"
_UNREACHED_SQL = "reached_at IS NULL"


def still_due(status: ColumnElement[Any] | QueryableAttribute[Any]) -> ColumnElement[bool]:
    """``status IN ('pending', 'retrying')`` with the two values written into the SQL, not bound: the predicate
    of the delivery log's partial indexes (``ix_deliveries_due``, ``ix_deliveries_event_due``). A database uses
    a partial index only for a query whose WHERE implies the index's; SQLite proves it only from a term that is
    the index's own (a bound parameter never is), PostgreSQL not for a generic plan of a bound one."""
    return status.in_([literal_column(f"'{value}'") for value in DUE_STATUSES])


class EoRow(Base):
    """The notifier's view of the EO registry, followed from the compacted EO topic."""

    __tablename__ = "eos"

    eori: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    language: Mapped[Language] = mapped_column(closed_set(Language, 2))
    email: Mapped[str | None] = mapped_column(String(320))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # Kept in clear: the notifier signs with it. Never logged, never returned by the API.
    webhook_secret: Mapped[str | None] = mapped_column(Text)
    # SHA-256 of the EO's API key (from the registry topic): the EO may read its own deliveries.
    api_key_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class KnownProcedureRow(Base):
    """The latest state of every procedure the notifier has seen: which channels are down right now."""

    __tablename__ = "known_procedures"

    procedure_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    scope: Mapped[Scope] = mapped_column(closed_set(Scope, 10))
    eori: Mapped[str | None] = mapped_column(String(32))
    scenario: Mapped[Scenario] = mapped_column(closed_set(Scenario, 40))
    state: Mapped[ProcedureState] = mapped_column(closed_set(ProcedureState, 10), index=True)
    event_time: Mapped[datetime] = mapped_column(UTCDateTime)
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """When the procedure opened: where its time to inform starts (None: never opened, or seen before 0003)."""
    event: Mapped[str | None] = mapped_column(Text)
    """The CloudEvent (JSON) of its latest state: what an EO registered while it is open is told."""


class AdvisoryRow(Base):
    """The latest state of every advisory seen (an active ``ntp_unavailable`` one means NTP is down)."""

    __tablename__ = "advisories"

    advisory_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[AdvisoryKind] = mapped_column(closed_set(AdvisoryKind, 40))
    active: Mapped[bool] = mapped_column(Boolean)
    event_time: Mapped[datetime] = mapped_column(UTCDateTime)


class PlannedEventRow(Base):
    """An event whose fan-out is recorded: written with its deliveries, before the Kafka offset moves on."""

    __tablename__ = "planned_events"

    event_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    event_type: Mapped[EventType] = mapped_column(closed_set(EventType, 60))
    subject_id: Mapped[str] = mapped_column(String(100))
    planned_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deliveries: Mapped[int] = mapped_column(Integer)
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    digest_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    """When the Servicedesk's digest of the EOs this fan-out has not reached is due; None: none (or sent)."""


class NoticeRow(Base):
    """A rendered notice, shared by every recipient of the same event, audience, language and variant."""

    __tablename__ = "notices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(100))
    audience: Mapped[Audience] = mapped_column(closed_set(Audience, 20))
    language: Mapped[Language] = mapped_column(closed_set(Language, 2))
    variant: Mapped[str] = mapped_column(String(100), default="")
    subject: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    webhook_body: Mapped[bytes | None] = mapped_column(LargeBinary)

    __table_args__ = (UniqueConstraint("event_id", "audience", "language", "variant", name="uq_notice"),)


class DeliveryRow(Base):
    """One notice to one recipient on one channel; planned before the Kafka offset is committed."""

    __tablename__ = "deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(100))
    event_type: Mapped[EventType] = mapped_column(closed_set(EventType, 60))
    procedure_id: Mapped[str] = mapped_column(String(100))
    """The procedure announced (for an advisory notice: the advisory id)."""
    notice_id: Mapped[int] = mapped_column(ForeignKey("notices.id"))
    audience: Mapped[Audience] = mapped_column(closed_set(Audience, 20))
    recipient_key: Mapped[str] = mapped_column(String(40))
    eori: Mapped[str | None] = mapped_column(String(32), index=True)
    channel: Mapped[DeliveryChannel] = mapped_column(closed_set(DeliveryChannel, 10))
    recipient: Mapped[str] = mapped_column(Text)
    lane: Mapped[str] = mapped_column(String(300))
    idempotency_key: Mapped[str] = mapped_column(String(200))
    status: Mapped[DeliveryStatus] = mapped_column(closed_set(DeliveryStatus, 10))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_http_status: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    escalate_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """An EO webhook notice: when it also goes by e-mail unless delivered. None: not watched, delivered, done."""

    __table_args__ = (
        UniqueConstraint("event_id", "recipient_key", "channel", name="uq_delivery_per_event_recipient_channel"),
        # Partial (0006): a delivered row leaves these three, where it moved within them before.
        Index("ix_deliveries_due", "status", "next_attempt_at",
              sqlite_where=text(_DUE_SQL), postgresql_where=text(_DUE_SQL)),
        Index("ix_deliveries_event_due", "event_id", sqlite_where=text(_DUE_SQL), postgresql_where=text(_DUE_SQL)),
        Index("ix_deliveries_escalate_at", "escalate_at",
              sqlite_where=text(_ESCALATING_SQL), postgresql_where=text(_ESCALATING_SQL)),
        Index("ix_deliveries_listing", "created_at", "id"),
        Index("ix_deliveries_procedure_status", "procedure_id", "status"),  # the fan-out counts (0004)
    )


class AttemptRow(Base):
    """One try of a delivery and how it ended."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("deliveries.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[DeliveryStatus] = mapped_column(closed_set(DeliveryStatus, 10))
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float | None]


class ReachRow(Base):
    """An EO a procedure concerns: since when, and when and on which channel a notice of it first reached it."""

    __tablename__ = "procedure_reach"

    procedure_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    eori: Mapped[str] = mapped_column(String(32), primary_key=True)
    concerned_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reached_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reached_channel: Mapped[DeliveryChannel | None] = mapped_column(closed_set(DeliveryChannel, 10))
    last_channel: Mapped[DeliveryChannel | None] = mapped_column(closed_set(DeliveryChannel, 10))
    """While unreached: the channel of the latest failure (or the one being tried); None: no address."""
    last_error: Mapped[str | None] = mapped_column(Text)

    # Partial (0006): a reached EO leaves it.
    __table_args__ = (Index("ix_procedure_reach_unreached", "procedure_id",
                            sqlite_where=text(_UNREACHED_SQL), postgresql_where=text(_UNREACHED_SQL)),)
