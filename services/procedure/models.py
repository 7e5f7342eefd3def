"""Tables of the procedure service (its own database: the system of record). Changes need a migration."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime, closed_set
from shared.events import (
    AdvisoryKind,
    Component,
    ComponentState,
    Language,
    MaintainedComponent,
    MaintenanceState,
    Origin,
    ProcedureState,
    Scenario,
    Scope,
)


class Base(DeclarativeBase):
    pass


class ObservationRow(Base):
    """The latest observation per (target, detector instance): the evidence decisions are made on."""

    __tablename__ = "observations"

    target_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    detector_instance: Mapped[str] = mapped_column(String(200), primary_key=True)
    component: Mapped[Component] = mapped_column(closed_set(Component, 20))
    eori: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[ComponentState] = mapped_column(closed_set(ComponentState, 10))
    reason: Mapped[str] = mapped_column(String(200))
    observed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    suspect: Mapped[bool] = mapped_column(Boolean, server_default=false(), default=False)
    verdict_by: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ComponentRow(Base):
    """The last decided state of each national component, and since when (for the status API)."""

    __tablename__ = "components"

    component: Mapped[Component] = mapped_column(closed_set(Component, 20), primary_key=True)
    state: Mapped[ComponentState] = mapped_column(closed_set(ComponentState, 10))
    since: Mapped[datetime] = mapped_column(UTCDateTime)


class ComponentStateRow(Base):
    """One span of a national component's state history: ``state`` from ``since`` until ``until`` (None: the
    current span). Written in the same transaction as each change of ``components``; read by the history API."""

    __tablename__ = "component_states"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    component: Mapped[Component] = mapped_column(closed_set(Component, 20))
    state: Mapped[ComponentState] = mapped_column(closed_set(ComponentState, 10))
    since: Mapped[datetime] = mapped_column(UTCDateTime)
    until: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_component_states_component_since", "component", "since"),
        # At most one current span per component, guaranteed by the database.
        Index("uq_component_states_current", "component", unique=True,
              sqlite_where=text("until IS NULL"), postgresql_where=text("until IS NULL")),
    )


class ProbeLatencyRow(Base):
    """Probe latency of a national component per 5-minute UTC slot (:mod:`services.procedure.latency`): how many
    probes were reported, their summed and their largest latency. Written with the observations."""

    __tablename__ = "probe_latency"

    component: Mapped[Component] = mapped_column(closed_set(Component, 20), primary_key=True)
    slot_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    samples: Mapped[int] = mapped_column(Integer)
    total_ms: Mapped[float] = mapped_column(Float)
    max_ms: Mapped[float] = mapped_column(Float)


_ACTIVE = "state IN ('open', 'proposed')"


class ProcedureRow(Base):
    __tablename__ = "procedures"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    scenario: Mapped[Scenario] = mapped_column(closed_set(Scenario, 40))
    scope: Mapped[Scope] = mapped_column(closed_set(Scope, 10))
    eori: Mapped[str | None] = mapped_column(String(32), index=True)
    state: Mapped[ProcedureState] = mapped_column(closed_set(ProcedureState, 10), index=True)
    origin: Mapped[Origin] = mapped_column(closed_set(Origin, 20), default=Origin.DETECTED)
    auto_close: Mapped[bool] = mapped_column(Boolean, default=True)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    maintenance_id: Mapped[str | None] = mapped_column(String(36))
    """The maintenance window that opened it (origin planned)."""

    __table_args__ = (
        # The database itself guarantees at most one active national procedure and one per EO.
        Index(
            "uq_active_national", "scope", unique=True,
            sqlite_where=text(f"scope = 'national' AND {_ACTIVE}"),
            postgresql_where=text(f"scope = 'national' AND {_ACTIVE}"),
        ),
        Index(
            "uq_active_eo", "eori", unique=True,
            sqlite_where=text(f"scope = 'eo' AND {_ACTIVE}"),
            postgresql_where=text(f"scope = 'eo' AND {_ACTIVE}"),
        ),
    )


class TimelineRow(Base):
    """One entry of a procedure's audit trail (decision, operator note, EO report), with its evidence."""

    __tablename__ = "timeline"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    procedure_id: Mapped[str] = mapped_column(ForeignKey("procedures.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(20))
    scenario: Mapped[Scenario] = mapped_column(closed_set(Scenario, 40))
    previous_scenario: Mapped[Scenario | None] = mapped_column(closed_set(Scenario, 40))
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(100), default="system")
    event_id: Mapped[str | None] = mapped_column(String(36))
    evidence: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """What the entry records in structured form (a broadcast: its author and texts), beside ``reason``."""


class AdvisoryRow(Base):
    __tablename__ = "advisories"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[AdvisoryKind] = mapped_column(closed_set(AdvisoryKind, 30), index=True)
    active: Mapped[bool] = mapped_column(Boolean, index=True)
    components: Mapped[list[str]] = mapped_column(JSON, default=list)
    reason: Mapped[str] = mapped_column(Text)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime)
    cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Structured facts of the advisory (certificate_expiring: its ``certificate``)."""


class EoRow(Base):
    """The EO registry. The webhook secret is sealed (encrypted); only a hash of the API key is kept."""

    __tablename__ = "eos"

    eori: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    language: Mapped[Language] = mapped_column(closed_set(Language, 2))
    email: Mapped[str | None] = mapped_column(String(320))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_secret_sealed: Mapped[str | None] = mapped_column(Text)
    as4_endpoint: Mapped[str | None] = mapped_column(Text)
    api_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OutboxRow(Base):
    """Events written in the same transaction as the state change, published by the outbox task afterwards."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(200))
    key: Mapped[str | None] = mapped_column(String(200))
    payload: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    epoch: Mapped[int | None] = mapped_column(BigInteger)
    """The leadership epoch in force when the row was committed (None: written before leadership existed)."""


class MaintenanceRow(Base):
    """A maintenance window: a planned unavailability of the ADA B2G, NTP or both (``luccs``)."""

    __tablename__ = "maintenances"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    component: Mapped[MaintainedComponent] = mapped_column(closed_set(MaintainedComponent, 10))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[MaintenanceState] = mapped_column(closed_set(MaintenanceState, 10), index=True)
    reason: Mapped[str] = mapped_column(Text)
    message: Mapped[dict[str, str] | None] = mapped_column(JSON)
    reminders_sent: Mapped[list[int]] = mapped_column(JSON, default=list)
    procedure_id: Mapped[str | None] = mapped_column(String(36))
    overran: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LeaseRow(Base):
    """The leadership lease (one row, ``name = 'procedure'``): who leads, under which epoch, until when.

    ``epoch`` goes up by one at every takeover and is the fencing token: a decision commits only if the
    epoch it was made under is still the row's (read with a share lock in the decision's transaction).
    ``changes`` goes up with every operator or EO command, wherever it ran: the leader then reads the
    procedures it keeps in memory again and publishes the command's events.
    """

    __tablename__ = "leader_lease"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(200))
    epoch: Mapped[int] = mapped_column(BigInteger)
    changes: Mapped[int] = mapped_column(BigInteger)
    since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
