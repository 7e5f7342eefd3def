"""Tables of the detector: what it keeps of each target across restarts. Changes need a migration.

Every name starts with ``detector_`` (and the migration history is ``alembic_version_detector``), so the
detector may share a PostgreSQL database with the other services.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, Integer, String, Text, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime


class Base(DeclarativeBase):
    pass


class TargetStateRow(Base):
    """One target as one detector instance last saw it: its decided state, the counters that decide the next
    change, the last probe result, and the change its consumers have not been told yet.

    Written behind (in batches, about every second; at once on a state change), read at start. A row whose
    ``unpublished_from`` is set stands for the change from that state to ``state`` at ``since``. An
    ``unconfirmed`` row's state was resumed from a save too old to be current and fresh probes have not
    confirmed it yet: it is not published, and its unpublished change (if any) is held until they do (a
    target stays unconfirmed until a transition or a confirmation, so nothing else of it is ever pending).
    Free-form values (ids, reasons) are ``Text``: a long one must never make a whole batch fail. Rows of
    other instances not saved for ``detector.state_retention_days`` are deleted (see ``TargetStore.sweep``).

    Unlike the other services' tables, the closed-set columns (``component``, ``probe``, ``state``,
    ``unpublished_from``) are plain strings, not ``shared.db.closed_set``: rows outlive the version that wrote
    them (a rolling upgrade or a downgrade shares the table), and an enum column would fail the whole load on
    one name this version does not know. ``TargetStore.load`` checks each row instead and starts only that
    target afresh.
    """

    __tablename__ = "detector_target_states"

    instance_id: Mapped[str] = mapped_column(Text, primary_key=True)
    target_id: Mapped[str] = mapped_column(Text, primary_key=True)
    component: Mapped[str] = mapped_column(String(20))
    probe: Mapped[str] = mapped_column(String(10))
    url: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(10))
    since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    degraded: Mapped[bool] = mapped_column(Boolean)
    consecutive_failures: Mapped[int] = mapped_column(Integer)
    consecutive_successes: Mapped[int] = mapped_column(Integer)
    consecutive_slow: Mapped[int] = mapped_column(Integer)
    consecutive_fast: Mapped[int] = mapped_column(Integer)
    last_ok: Mapped[bool] = mapped_column(Boolean)
    last_reason: Mapped[str] = mapped_column(Text)
    last_detail: Mapped[str | None] = mapped_column(Text)
    last_latency_ms: Mapped[float | None] = mapped_column(Float)
    last_checked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_cert_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_ebms_error: Mapped[str | None] = mapped_column(Text)
    cert_warning_days: Mapped[int | None] = mapped_column(Integer)
    unpublished_from: Mapped[str | None] = mapped_column(String(10))
    unpublished_superseded: Mapped[int] = mapped_column(Integer)
    unconfirmed: Mapped[bool] = mapped_column(Boolean, server_default=false())  # revision 0002
    saved_at: Mapped[datetime] = mapped_column(UTCDateTime)
