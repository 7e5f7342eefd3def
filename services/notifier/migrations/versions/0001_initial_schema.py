"""initial schema: the tables the notifier created with create_all before it had migrations

Revision ID: 0001
Revises:
Create Date: 2026-11-27 09:00:00

The schema is defined here as a frozen MetaData, not by the models, because it is also what a database
made before migrations is checked against (services.notifier.migrate) before it is stamped at this
revision: never edit it; change tables in a later revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def schema() -> sa.MetaData:
    """The notifier's tables as this revision creates them."""
    metadata = sa.MetaData()
    sa.Table(
        "eos", metadata,
        sa.Column("eori", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("language", sa.String(2), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("webhook_secret", sa.Text(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    sa.Table(
        "known_procedures", metadata,
        sa.Column("procedure_id", sa.String(100), primary_key=True),
        sa.Column("scope", sa.String(10), nullable=False),
        sa.Column("eori", sa.String(32), nullable=True),
        sa.Column("scenario", sa.String(40), nullable=False),
        sa.Column("state", sa.String(10), nullable=False, index=True),
        sa.Column("event_time", UTCDateTime(), nullable=False),
    )
    sa.Table(
        "advisories", metadata,
        sa.Column("advisory_id", sa.String(100), primary_key=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("event_time", UTCDateTime(), nullable=False),
    )
    sa.Table(
        "planned_events", metadata,
        sa.Column("event_id", sa.String(100), primary_key=True),
        sa.Column("event_type", sa.String(60), nullable=False),
        sa.Column("subject_id", sa.String(100), nullable=False),
        sa.Column("planned_at", UTCDateTime(), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("settled_at", UTCDateTime(), nullable=True),
    )
    sa.Table(
        "notices", metadata,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(100), nullable=False),
        sa.Column("audience", sa.String(20), nullable=False),
        sa.Column("language", sa.String(2), nullable=False),
        sa.Column("variant", sa.String(100), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("webhook_body", sa.LargeBinary(), nullable=True),
        sa.UniqueConstraint("event_id", "audience", "language", "variant", name="uq_notice"),
    )
    sa.Table(
        "deliveries", metadata,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("event_id", sa.String(100), nullable=False),
        sa.Column("event_type", sa.String(60), nullable=False),
        sa.Column("procedure_id", sa.String(100), nullable=False, index=True),
        sa.Column("notice_id", sa.Integer(), sa.ForeignKey("notices.id"), nullable=False),
        sa.Column("audience", sa.String(20), nullable=False),
        sa.Column("recipient_key", sa.String(40), nullable=False),
        sa.Column("eori", sa.String(32), nullable=True, index=True),
        sa.Column("channel", sa.String(10), nullable=False),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("lane", sa.String(300), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("claimed_by", sa.String(200), nullable=True),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_http_status", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("event_id", "recipient_key", "channel", name="uq_delivery_per_event_recipient_channel"),
        sa.Index("ix_deliveries_due", "status", "next_attempt_at"),
        sa.Index("ix_deliveries_listing", "created_at", "id"),
        sa.Index("ix_deliveries_event", "event_id", "status"),
    )
    sa.Table(
        "delivery_attempts", metadata,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("delivery_id", sa.String(36), sa.ForeignKey("deliveries.id"), nullable=False, index=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("outcome", sa.String(10), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Double(), nullable=True),
    )
    return metadata


def upgrade() -> None:
    # checkfirst=False: a table of the same name already there (another service's, in a shared schema)
    # must fail the migration, not be taken for the notifier's.
    schema().create_all(op.get_bind(), checkfirst=False)


def downgrade() -> None:
    schema().drop_all(op.get_bind(), checkfirst=False)
