"""maintenance windows, and the window a planned procedure came from

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maintenances",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("component", sa.String(length=10), nullable=False),
        sa.Column("starts_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ends_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("message", sa.JSON(), nullable=True),
        sa.Column("reminders_sent", sa.JSON(), nullable=False),
        sa.Column("procedure_id", sa.String(length=36), nullable=True),
        sa.Column("overran", sa.Boolean(), nullable=False),
        sa.Column("created_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("maintenances", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_maintenances_starts_at"), ["starts_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_maintenances_state"), ["state"], unique=False)
    with op.batch_alter_table("procedures", schema=None) as batch_op:
        batch_op.add_column(sa.Column("maintenance_id", sa.String(length=36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("procedures", schema=None) as batch_op:
        batch_op.drop_column("maintenance_id")
    with op.batch_alter_table("maintenances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_maintenances_state"))
        batch_op.drop_index(batch_op.f("ix_maintenances_starts_at"))
    op.drop_table("maintenances")
