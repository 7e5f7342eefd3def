"""Tables of the procedure service (its own database: the system of record)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, LargeBinary, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime


class Base(DeclarativeBase):
    pass


class ObservationRow(Base):
    """The latest observation per (target, detector instance): the evidence decisions are made on."""

    __tablename__ = "observations"

    target_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    detector_instance: Mapped[str] = mapped_column(String(200), primary_key=True)
    component: Mapped[str] = mapped_column(String(20))
    eori: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str] = mapped_column(String(200))
    observed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


_ACTIVE = "state IN ('open', 'proposed')"


class ProcedureRow(Base):
    __tablename__ = "procedures"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    scenario: Mapped[str] = mapped_column(String(40))
    scope: Mapped[str] = mapped_column(String(10))
    eori: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(10), index=True)
    reason: Mapped[str] = mapped_column(Text)
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

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
    """One entry of a procedure's audit trail, with the evidence behind it."""

    __tablename__ = "timeline"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    procedure_id: Mapped[str] = mapped_column(ForeignKey("procedures.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(20))
    scenario: Mapped[str] = mapped_column(String(40))
    previous_scenario: Mapped[str | None] = mapped_column(String(40))
    reason: Mapped[str] = mapped_column(Text)
    event_id: Mapped[str | None] = mapped_column(String(36))
    evidence: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class OutboxRow(Base):
    """Events written in the same transaction as the state change, published by the relay afterwards."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(200))
    key: Mapped[str | None] = mapped_column(String(200))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
