"""target states: what the detector keeps of each target across restarts

Revision ID: 0001
Revises:
Create Date: 2026-11-27 10:02:18.662908
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.db

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "detector_target_states",
        sa.Column("instance_id", sa.Text(), nullable=False),
        sa.Column("target_id", sa.Text(), nullable=False),
        sa.Column("component", sa.String(length=20), nullable=False),
        sa.Column("probe", sa.String(length=10), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("since", shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("degraded", sa.Boolean(), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("consecutive_successes", sa.Integer(), nullable=False),
        sa.Column("consecutive_slow", sa.Integer(), nullable=False),
        sa.Column("consecutive_fast", sa.Integer(), nullable=False),
        sa.Column("last_ok", sa.Boolean(), nullable=False),
        sa.Column("last_reason", sa.Text(), nullable=False),
        sa.Column("last_detail", sa.Text(), nullable=True),
        sa.Column("last_latency_ms", sa.Float(), nullable=True),
        sa.Column("last_checked_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_cert_expires_at", shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_ebms_error", sa.Text(), nullable=True),
        sa.Column("cert_warning_days", sa.Integer(), nullable=True),
        sa.Column("unpublished_from", sa.String(length=10), nullable=True),
        sa.Column("unpublished_superseded", sa.Integer(), nullable=False),
        sa.Column("saved_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("instance_id", "target_id"),
    )


def downgrade() -> None:
    op.drop_table("detector_target_states")
