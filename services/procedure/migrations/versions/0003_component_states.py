"""component_states: each national component's state history, as spans (for the history API)

The current state of each component (table ``components``) becomes its first, open span, so a database
upgraded while running keeps its history from the last change on.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.db

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "component_states",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("component", sa.String(length=20), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("since", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("until", shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("component_states", schema=None) as batch_op:
        batch_op.create_index("ix_component_states_component_since", ["component", "since"], unique=False)
        batch_op.create_index(
            "uq_component_states_current",
            ["component"],
            unique=True,
            sqlite_where=sa.text("until IS NULL"),
            postgresql_where=sa.text("until IS NULL"),
        )
    op.execute(
        "INSERT INTO component_states (component, state, since, until) "
        "SELECT component, state, since, NULL FROM components"
    )


def downgrade() -> None:
    with op.batch_alter_table("component_states", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_component_states_current",
            sqlite_where=sa.text("until IS NULL"),
            postgresql_where=sa.text("until IS NULL"),
        )
        batch_op.drop_index("ix_component_states_component_since")
    op.drop_table("component_states")
