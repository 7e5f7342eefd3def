"""Database migrations of the notifier (Alembic), run at start or by `luccs-fallback migrate`.

The notifier's history is kept in a version table of its own (``alembic_version_notifier``): where the
procedure service's ``alembic_version`` is visible too (one PostgreSQL database, a schema each), neither
takes the other's revision for its own.

Before it had migrations the notifier made its tables with ``create_all``, with the schema of revision
0001. Such a database (notifier tables, no version table) is compared with that revision and, when it
matches, stamped at it and upgraded; when it does not (an earlier development schema, or another
service's tables of the same names), it is refused with the differences named.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Float, MetaData, inspect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import TypeEngine

from shared import migrations
from shared.config import ConfigError

__all__ = ["FIRST_REVISION", "VERSION_TABLE", "UpgradeResult", "alembic_config", "current_revision", "upgrade"]

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version_notifier"
FIRST_REVISION = "0001"
# Serialises concurrent upgrades of one PostgreSQL database (the migrate job and a notifier starting).
_LOCK_KEY = int.from_bytes(b"luccsNTF", "big")
_MAX_LISTED = 25
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpgradeResult:
    """What an upgrade found and left: revisions before and after, and whether it adopted an older database."""

    before: str | None
    """The revision found; None for an empty database or one made before migrations."""
    after: str | None
    adopted: bool
    """The database was made before migrations: checked against the first revision and stamped at it."""


def alembic_config(connection: Connection | None = None) -> Config:
    return migrations.alembic_config(MIGRATIONS, connection)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> UpgradeResult:
    """Bring the schema to ``revision`` (the latest by default); a no-op when it is already there.

    A database made before migrations is stamped at the first revision first, if its tables are exactly
    that revision's; otherwise :class:`ConfigError` names the differences and nothing is changed.
    """

    def run(connection: Connection) -> UpgradeResult:
        config = alembic_config(connection)
        before = _revision(connection)
        first = _first_revision_schema(config)
        adopted = before is None and bool(_tables_of_current_schema(connection) & set(first.tables))
        if adopted:
            differences = schema_differences(connection, first)
            if differences:
                raise ConfigError(_refusal(differences))
            command.stamp(config, FIRST_REVISION)
            log.info("notifier database made before migrations: its tables match, stamped at %s", FIRST_REVISION)
        command.upgrade(config, revision)
        return UpgradeResult(before=before, after=_revision(connection), adopted=adopted)

    return await migrations.run_locked(engine, _LOCK_KEY, run)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The notifier schema's revision in this database (None: no notifier migration has run)."""
    return await migrations.current_revision(engine, VERSION_TABLE)


def schema_differences(connection: Connection, metadata: MetaData) -> list[str]:
    """How the database's tables named in ``metadata`` differ from it, one readable line each."""

    def ours(name: str | None, type_: str, _parents: Any) -> bool:
        return type_ != "table" or name in metadata.tables

    def type_differs(
        _context: Any, _found: Any, _wanted: Any, found: TypeEngine[Any], wanted: TypeEngine[Any]
    ) -> bool | None:
        # SQLAlchemy 2.0 made a ``float`` column FLOAT, 2.1 makes it DOUBLE: the same numbers on both backends.
        if isinstance(found, Float) and isinstance(wanted, Float):
            return False
        return None  # Alembic's own comparison

    context = MigrationContext.configure(
        connection, opts={"compare_type": type_differs, "include_name": ours, "version_table": VERSION_TABLE}
    )
    changes = [c for diff in compare_metadata(context, metadata) for c in (diff if isinstance(diff, list) else [diff])]
    missing = sorted(change[1].name for change in changes if change[0] == "add_table")
    # Of a missing table, the table is named; its indexes and constraints would only repeat it.
    lines = [
        _describe(change) for change in changes
        if change[0] != "add_table" and _table_of(change) not in missing
    ]
    if len(missing) == 1:
        lines.append(f"table {missing[0]} is missing")
    elif missing:
        lines.append(f"tables {', '.join(missing[:-1])} and {missing[-1]} are missing")
    return lines


def _revision(connection: Connection) -> str | None:
    return migrations.revision_of(connection, VERSION_TABLE)


def _tables_of_current_schema(connection: Connection) -> set[str]:
    # Only the schema tables are created in: on PostgreSQL, the tables of other schemas on the search_path
    # (the procedure service's in public, say) are visible too, and are not the notifier's.
    inspector = inspect(connection)
    return set(inspector.get_table_names(schema=inspector.default_schema_name))


def _first_revision_schema(config: Config) -> MetaData:
    script = ScriptDirectory.from_config(config).get_revision(FIRST_REVISION)
    assert script is not None, f"revision {FIRST_REVISION} is missing from {MIGRATIONS}"
    metadata = script.module.schema()
    assert isinstance(metadata, MetaData)
    return metadata


def _refusal(differences: Sequence[str]) -> str:
    listed = "; ".join(differences[:_MAX_LISTED])
    if len(differences) > _MAX_LISTED:
        listed += f"; and {len(differences) - _MAX_LISTED} more"
    return (
        f"the notifier database has notifier tables but no migration history ({VERSION_TABLE}), and they are "
        f"not the schema of its first migration ({FIRST_REVISION}): {listed}. It was made by an earlier "
        "development version (which has no migration), or the tables are another service's (the procedure "
        "service also has 'eos' and 'advisories'): remove them, or point notifier.database_url at a new "
        "database (on PostgreSQL, a schema of the notifier's own will do)"
    )


def _table_of(change: tuple[Any, ...]) -> str | None:
    if change[0] in ("add_index", "add_constraint", "add_fk"):
        return str(change[1].table.name)
    return None


def _describe(change: tuple[Any, ...]) -> str:
    kind = change[0]
    if kind in ("add_table", "remove_table"):
        return f"table {change[1].name} " + ("is missing" if kind == "add_table" else "is unexpected")
    if kind in ("add_column", "remove_column"):
        return f"column {change[2]}.{change[3].name} " + ("is missing" if kind == "add_column" else "is unexpected")
    if kind in ("modify_type", "modify_nullable", "modify_default"):
        _, _, table, column, _existing, found, wanted = change
        if kind == "modify_nullable":
            found, wanted = ("NULL" if v else "NOT NULL" for v in (found, wanted))
        return f"column {table}.{column} is {found}, expected {wanted}"
    if kind in ("add_index", "remove_index"):
        index = change[1]
        columns = ", ".join(str(getattr(c, "name", c)) for c in index.expressions)
        what = f"index {index.name} on {index.table.name} ({columns})"
        return what + (" is missing" if kind == "add_index" else " is unexpected")
    if kind in ("add_constraint", "remove_constraint", "add_fk", "remove_fk"):
        constraint = change[1]
        columns = ", ".join(c.name for c in constraint.columns)
        label = "foreign key" if kind.endswith("_fk") else "constraint"
        what = f"{label} {constraint.name or ''} on {constraint.table.name} ({columns})".replace("  ", " ")
        return what + (" is missing" if kind.startswith("add_") else " is unexpected")
    return repr(change)
