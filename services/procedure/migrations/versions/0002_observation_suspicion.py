"""observations keep their suspicion (suspect, verdict_by)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 14:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.db

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("observations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("suspect", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("verdict_by", shared.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("observations", schema=None) as batch_op:
        batch_op.drop_column("verdict_by")
        batch_op.drop_column("suspect")
