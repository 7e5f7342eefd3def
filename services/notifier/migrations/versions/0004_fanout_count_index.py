"""fan-out counts from an index: deliveries by (procedure_id, status)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 18:20:00

``luccs_fanout_deliveries`` counts an active fan-out's deliveries by status at every scrape; with the index
on ``procedure_id`` alone each count read the 100,000 rows of a national fan-out from the table (60 ms on
SQLite, four times a second in the notifier bench). With ``(procedure_id, status)`` it reads the index only.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_deliveries_procedure_status", "deliveries", ["procedure_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_procedure_status", table_name="deliveries")
