"""EO API key hashes: an EO may read its own deliveries with its API key

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 09:00:00

The hash arrives with the EO's next registry record (creation, change or key rotation); until then the
EO's key is not recognised by the notifier (operators and the bureau read its deliveries).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("eos", sa.Column("api_key_hash", sa.String(64), nullable=True))
    op.create_index("ix_eos_api_key_hash", "eos", ["api_key_hash"])


def downgrade() -> None:
    op.drop_index("ix_eos_api_key_hash", table_name="eos")
    op.drop_column("eos", "api_key_hash")
