"""probe latency of the national components per 5-minute slot

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.db

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "probe_latency",
        sa.Column("component", sa.String(length=20), nullable=False),
        sa.Column("slot_start", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("total_ms", sa.Float(), nullable=False),
        sa.Column("max_ms", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("component", "slot_start"),
    )


def downgrade() -> None:
    op.drop_table("probe_latency")
