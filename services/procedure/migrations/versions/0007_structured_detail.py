"""structured detail of advisories (the certificate of a certificate advisory) and timeline entries (a
broadcast's author and texts)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 17:30:00
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# How broadcasts were written in the timeline's text before: read once here, so that the broadcasts of the
# last weeks stay on the public page. (A text that held one of the separators was cut there; it stays so.)
_RECORDED = re.compile(r"^\[(servicedesk|bureau)\] fr: (.*?)\nen: (.*?)\nde: (.*)\Z", re.S)


def upgrade() -> None:
    with op.batch_alter_table("advisories") as batch:
        batch.add_column(sa.Column("detail", sa.JSON(), nullable=True))
    with op.batch_alter_table("timeline") as batch:
        batch.add_column(sa.Column("detail", sa.JSON(), nullable=True))
    timeline = sa.table("timeline", sa.column("id", sa.Integer()), sa.column("kind", sa.String()),
                        sa.column("reason", sa.Text()), sa.column("detail", sa.JSON()))
    bind = op.get_bind()
    rows = bind.execute(sa.select(timeline.c.id, timeline.c.reason).where(timeline.c.kind == "broadcast")).all()
    for entry_id, reason in rows:
        found = _RECORDED.match(reason or "")
        if found is None or not all(found.group(i) for i in (2, 3, 4)):
            continue
        author, fr, en, de = found.groups()
        bind.execute(timeline.update().where(timeline.c.id == entry_id).values(
            detail={"broadcast": {"author": author, "text": {"fr": fr, "en": en, "de": de}}}))


def downgrade() -> None:
    with op.batch_alter_table("timeline") as batch:
        batch.drop_column("detail")
    with op.batch_alter_table("advisories") as batch:
        batch.drop_column("detail")
