"""unconfirmed: a state resumed from a save too old to be current stays unconfirmed across later restarts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 09:40:00.000000

Rows saved at 0001 become confirmed (false): 0001 did not record it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("detector_target_states") as batch:
        batch.add_column(sa.Column("unconfirmed", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("detector_target_states") as batch:
        batch.drop_column("unconfirmed")
