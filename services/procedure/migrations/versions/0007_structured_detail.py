"""structured detail of advisories (the certificate of a certificate advisory) and timeline entries (a
broadcast's author and texts)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("advisories") as batch:
        batch.add_column(sa.Column("detail", sa.JSON(), nullable=True))
    with op.batch_alter_table("timeline") as batch:
        batch.add_column(sa.Column("detail", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("timeline") as batch:
        batch.drop_column("detail")
    with op.batch_alter_table("advisories") as batch:
        batch.drop_column("detail")
