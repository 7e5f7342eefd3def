"""reach: escalation of undelivered webhook notices, the Servicedesk's digest, who of the EOs was reached

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 09:00:00

Adds ``deliveries.escalate_at`` (when an undelivered EO webhook notice also goes by e-mail),
``planned_events.digest_at`` (when the Servicedesk's digest of a fan-out's unreached EOs is due),
``known_procedures.opened_at`` and ``.event`` (time to inform; the notice of EOs registered late) and the
``procedure_reach`` table, filled from the deliveries already made: an EO with a delivered notice of a
procedure is reached (when its first one was; on which channel is not known for those).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("escalate_at", UTCDateTime(), nullable=True))
        batch.create_index("ix_deliveries_escalate_at", ["escalate_at"])
    with op.batch_alter_table("planned_events") as batch:
        batch.add_column(sa.Column("digest_at", UTCDateTime(), nullable=True))
        batch.create_index("ix_planned_events_digest_at", ["digest_at"])
    with op.batch_alter_table("known_procedures") as batch:
        batch.add_column(sa.Column("opened_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("event", sa.Text(), nullable=True))
    op.create_table(
        "procedure_reach",
        sa.Column("procedure_id", sa.String(100), primary_key=True),
        sa.Column("eori", sa.String(32), primary_key=True),
        sa.Column("concerned_at", UTCDateTime(), nullable=False),
        sa.Column("reached_at", UTCDateTime(), nullable=True),
        sa.Column("reached_channel", sa.String(10), nullable=True),
        sa.Column("last_channel", sa.String(10), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_index("ix_procedure_reach_unreached", "procedure_reach", ["procedure_id", "reached_at"])
    op.execute(
        "INSERT INTO procedure_reach (procedure_id, eori, concerned_at, reached_at)"
        " SELECT procedure_id, eori, MIN(created_at), MIN(delivered_at) FROM deliveries"
        " WHERE audience = 'eo' AND eori IS NOT NULL GROUP BY procedure_id, eori"
    )


def downgrade() -> None:
    op.drop_index("ix_procedure_reach_unreached", table_name="procedure_reach")
    op.drop_table("procedure_reach")
    with op.batch_alter_table("known_procedures") as batch:
        batch.drop_column("event")
        batch.drop_column("opened_at")
    with op.batch_alter_table("planned_events") as batch:
        batch.drop_index("ix_planned_events_digest_at")
        batch.drop_column("digest_at")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_index("ix_deliveries_escalate_at")
        batch.drop_column("escalate_at")
