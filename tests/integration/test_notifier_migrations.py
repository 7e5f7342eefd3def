"""The notifier's Alembic migrations on real SQLite files and a real PostgreSQL server: they build exactly the
models, run twice without harm, adopt a database made by the earlier create_all code, refuse one of another
schema, share one PostgreSQL database with the procedure service's, and `luccs-fallback migrate` runs both.

Every PostgreSQL test gets a database of its own (and drops it), so it neither sees nor disturbs others.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from prometheus_client import CollectorRegistry
from sqlalchemy import (
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from services.detector import migrate as detector_migrate
from services.detector.models import Base as DetectorBase
from services.notifier.app import build_notifier
from services.notifier.migrate import FIRST_REVISION, VERSION_TABLE, alembic_config, upgrade
from services.notifier.models import Base, DeliveryRow, EoRow, ReachRow
from services.notifier.reach import procedure_reach
from services.procedure import migrate as procedure_migrate
from services.procedure.models import Base as ProcedureBase
from shared.config import ConfigError
from shared.db import UTCDateTime, make_engine, session_factory
from shared.migrations import run_locked
from tests.integration.test_notifier_delivery import RECORD, notifier_settings, procedure_event, register
from tests.support import pg_admin, pg_database

pytestmark = pytest.mark.integration

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
PROCEDURE_HEAD = ScriptDirectory.from_config(procedure_migrate.alembic_config()).get_current_head()
DETECTOR_HEAD = ScriptDirectory.from_config(detector_migrate.alembic_config()).get_current_head()
NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
NewDatabase = Callable[[], Awaitable[str]]


# --- harness ------------------------------------------------------------------------------------------------




@pytest.fixture
async def new_pg_database(postgres_url: str) -> AsyncIterator[NewDatabase]:
    """Makes empty PostgreSQL databases, dropped after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def make() -> str:
            return await stack.enter_async_context(pg_database(postgres_url, "luccs_migration"))

        yield make


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """An empty notifier database."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'notifier.db'}"
        else:
            server = request.getfixturevalue("postgres_url")
            url = await stack.enter_async_context(pg_database(server, "luccs_migration"))
        engine = make_engine(url)
        yield engine
        await engine.dispose()


def _differences(
    connection: Connection, metadata: MetaData = Base.metadata, version_table: str = VERSION_TABLE,
    only_these_tables: bool = False,
) -> list[object]:
    """Alembic's autogenerate comparison of the database with ``metadata`` (empty: the same schema).

    ``only_these_tables`` leaves out other tables that are visible, as another schema's on the search_path.
    """
    opts: dict[str, Any] = {"compare_type": True, "version_table": version_table}
    if only_these_tables:
        opts["include_name"] = lambda name, type_, _parents: type_ != "table" or name in metadata.tables
    return list(compare_metadata(MigrationContext.configure(connection, opts=opts), metadata))


async def _schema_differences(engine: AsyncEngine, *, only_these_tables: bool = False) -> list[object]:
    async with engine.connect() as connection:
        return await connection.run_sync(_differences, Base.metadata, VERSION_TABLE, only_these_tables)


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return await connection.run_sync(lambda c: set(inspect(c).get_table_names()))


async def _versions(engine: AsyncEngine, table: str = VERSION_TABLE) -> list[str]:
    async with engine.connect() as connection:
        return list((await connection.execute(text(f"SELECT version_num FROM {table}"))).scalars())


async def _count_eos(engine: AsyncEngine) -> int:
    async with session_factory(engine)() as session:
        return int(await session.scalar(select(func.count()).select_from(EoRow)) or 0)


async def _add_eo(engine: AsyncEngine, eori: str) -> None:
    # Only the columns every revision has: the same row goes into a database of any revision.
    eos = _before_migrations().tables["eos"]
    async with engine.begin() as connection:
        await connection.execute(eos.insert().values(eori=eori, name="EO", language="fr", updated_at=NOW))


def _before_migrations() -> MetaData:
    """The tables a notifier made with create_all before it had migrations: those of the first revision."""
    script = ScriptDirectory.from_config(alembic_config()).get_revision(FIRST_REVISION)
    assert script is not None
    metadata = script.module.schema()
    assert isinstance(metadata, MetaData)
    return metadata


def _earlier_development_schema() -> MetaData:
    """The notifier's tables before lanes and leases (commit e60d430), which no migration starts from."""
    metadata = MetaData()
    Table(
        "eos", metadata,
        Column("eori", String(32), primary_key=True), Column("name", String(300), nullable=False),
        Column("language", String(2), nullable=False), Column("email", String(320)), Column("webhook_url", Text),
        Column("webhook_secret", Text), Column("updated_at", UTCDateTime(), nullable=False),
    )
    Table(
        "deliveries", metadata,
        Column("id", String(36), primary_key=True), Column("event_id", String(100), nullable=False),
        Column("event_type", String(60), nullable=False), Column("procedure_id", String(100), nullable=False),
        Column("eori", String(32)), Column("channel", String(10), nullable=False),
        Column("recipient", Text, nullable=False), Column("body", LargeBinary, nullable=False),
        Column("status", String(10), nullable=False), Column("attempts", Integer, nullable=False),
        Column("next_attempt_at", UTCDateTime()), Column("last_error", Text), Column("last_http_status", Integer),
        Column("created_at", UTCDateTime(), nullable=False), Column("delivered_at", UTCDateTime()),
        UniqueConstraint("event_id", "eori", "channel", name="uq_delivery_per_event_recipient_channel"),
        Index("ix_deliveries_due", "status", "next_attempt_at"),
    )
    Table(
        "delivery_attempts", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("delivery_id", String(36), ForeignKey("deliveries.id"), nullable=False),
        Column("attempt", Integer, nullable=False), Column("at", UTCDateTime(), nullable=False),
        Column("outcome", String(10), nullable=False), Column("http_status", Integer), Column("error", Text),
        Column("duration_ms", Float),
    )
    return metadata


# --- the migrations themselves ------------------------------------------------------------------------------


async def test_migrations_build_exactly_the_models(engine: AsyncEngine) -> None:
    result = await upgrade(engine)
    assert (result.before, result.after, result.adopted) == (None, HEAD, False)
    assert await _schema_differences(engine) == []
    assert await _tables(engine) == {*Base.metadata.tables, VERSION_TABLE}  # not the procedure's alembic_version
    assert await _versions(engine) == [HEAD]


async def test_a_second_upgrade_changes_nothing(engine: AsyncEngine) -> None:
    await upgrade(engine)
    await _add_eo(engine, "LU0001")
    result = await upgrade(engine)
    assert (result.before, result.after, result.adopted) == (HEAD, HEAD, False)
    assert await _count_eos(engine) == 1
    assert await _schema_differences(engine) == []
    assert await _versions(engine) == [HEAD]


async def test_upgrade_from_0001_keeps_the_rows_and_fills_the_reach_at_0003(engine: AsyncEngine) -> None:
    # A database at 0001 with a procedure being delivered: one EO reached, one not, the Servicedesk told.
    await upgrade(engine, FIRST_REVISION)
    at_0001 = _before_migrations().tables
    delivery = {"event_id": "e-1", "event_type": "luccs.procedure.opened", "procedure_id": "p-1", "notice_id": 1,
                "channel": "webhook", "lane": "eo.example:443", "attempts": 1, "created_at": NOW, "updated_at": NOW,
                "delivered_at": None, "last_error": None, "next_attempt_at": None}
    async with engine.begin() as connection:
        await connection.execute(at_0001["known_procedures"].insert(), [
            {"procedure_id": "p-1", "scope": "national", "eori": None, "scenario": "ADA_B2G_UNAVAILABLE",
             "state": "open", "event_time": NOW},
        ])
        await connection.execute(at_0001["notices"].insert(), [
            {"id": 1, "event_id": "e-1", "audience": "eo", "language": "fr", "variant": "", "subject": "s",
             "message": "m", "webhook_body": b"{}"},
        ])
        await connection.execute(at_0001["deliveries"].insert(), [
            {**delivery, "id": "d-1", "audience": "eo", "recipient_key": "LU0001", "eori": "LU0001",
             "recipient": "https://eo.example/1", "idempotency_key": "e-1:LU0001:webhook", "status": "delivered",
             "delivered_at": NOW + timedelta(seconds=5)},
            {**delivery, "id": "d-2", "audience": "eo", "recipient_key": "LU0002", "eori": "LU0002",
             "recipient": "https://eo.example/2", "idempotency_key": "e-1:LU0002:webhook", "status": "retrying",
             "last_error": "HTTP 500", "next_attempt_at": NOW},
            {**delivery, "id": "d-3", "audience": "servicedesk", "recipient_key": "servicedesk", "eori": None,
             "channel": "email", "lane": "smtp", "recipient": "sd@douanes.lu",
             "idempotency_key": "e-1:servicedesk:email", "status": "delivered", "delivered_at": NOW},
        ])

    result = await upgrade(engine)
    assert (result.before, result.after, result.adopted) == (FIRST_REVISION, HEAD, False)
    assert await _schema_differences(engine) == []
    async with session_factory(engine)() as session:
        reach = (await session.execute(
            select(ReachRow.eori, ReachRow.concerned_at, ReachRow.reached_at).order_by(ReachRow.eori)
        )).all()
        escalating = (await session.scalars(select(DeliveryRow.escalate_at))).all()
        report = await procedure_reach(session, procedure_id="p-1")
    assert [tuple(row) for row in reach] == [
        ("LU0001", NOW, NOW + timedelta(seconds=5)), ("LU0002", NOW, None)
    ], "an EO is reached where a delivery of the procedure was"
    assert escalating == [None, None, None], "deliveries planned before 0003 are not escalated"
    assert report is not None
    assert (report.concerned, report.reached, [eo.eori for eo in report.unreached]) == (2, 1, ["LU0002"])
    assert report.times.reached_50_s is None, "the opening time is not known of procedures seen before 0003"

    def downgrade(connection: Connection) -> None:
        command.downgrade(alembic_config(connection), FIRST_REVISION)

    await run_locked(engine, 1, downgrade)
    async with engine.connect() as connection:
        assert await connection.run_sync(_differences, _before_migrations()) == []
    assert await _versions(engine) == [FIRST_REVISION]


# --- databases made before migrations ------------------------------------------------------------------------


async def test_a_database_made_by_create_all_is_stamped_and_works(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:  # what the notifier did at start before it had migrations
        await connection.run_sync(_before_migrations().create_all)
    await _add_eo(engine, "LU0001")

    result = await upgrade(engine)
    assert (result.before, result.after, result.adopted) == (None, HEAD, True)
    assert await _versions(engine) == [HEAD]
    assert await _count_eos(engine) == 1, "adopting the database keeps its rows"
    assert await _schema_differences(engine) == []
    again = await upgrade(engine)
    assert (again.before, again.adopted) == (HEAD, False)

    # The notifier's own code works on it: a registered EO is planned a delivery for an opened procedure.
    settings = notifier_settings("127.0.0.1:1", "test", engine.url.render_as_string(hide_password=False))
    parts = build_notifier(settings, registry=CollectorRegistry())
    try:
        await register(parts, "LU0002", "http://127.0.0.1:9/hook")
        await parts.planner.on_procedure(procedure_event(), RECORD)
        async with parts.sessions() as session:
            planned = (await session.scalars(select(DeliveryRow.eori).where(DeliveryRow.channel == "webhook"))).all()
    finally:
        await parts.aclose()
    assert sorted(e for e in planned if e) == ["LU0002"]


async def test_float_columns_made_by_sqlalchemy_2_0_are_adopted(engine: AsyncEngine) -> None:
    # SQLAlchemy 2.0 maps a ``float`` attribute to FLOAT, 2.1 to DOUBLE: both are the same schema.
    metadata = _before_migrations()
    metadata.tables["delivery_attempts"].c.duration_ms.type = Float()
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    result = await upgrade(engine)
    assert (result.after, result.adopted) == (HEAD, True)


async def test_the_earlier_development_schema_is_refused(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(_earlier_development_schema().create_all)
    before = await _tables(engine)

    with pytest.raises(ConfigError) as refused:
        await upgrade(engine)
    message = str(refused.value)
    assert "earlier development version" in message
    assert "column deliveries.lane is missing" in message
    assert "column deliveries.body is unexpected" in message
    assert "tables advisories, known_procedures, notices and planned_events are missing" in message
    assert await _tables(engine) == before, "a refused database is left as it was"


async def test_drifted_tables_are_refused_with_the_difference_named(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(_before_migrations().create_all)
        await connection.execute(text("DROP INDEX ix_deliveries_due"))
        await connection.execute(text("ALTER TABLE deliveries DROP COLUMN claimed_until"))

    with pytest.raises(ConfigError) as refused:
        await upgrade(engine)
    message = str(refused.value)
    assert "column deliveries.claimed_until is missing" in message
    assert "index ix_deliveries_due on deliveries (status, next_attempt_at) is missing" in message
    assert VERSION_TABLE not in await _tables(engine)


# --- PostgreSQL: concurrent upgrades, one database shared with the procedure service ---------------------------


@pytest.mark.postgres
async def test_concurrent_upgrades_of_one_postgresql_database(new_pg_database: NewDatabase) -> None:
    # The migrate job and a starting notifier may upgrade the same database at once.
    url = await new_pg_database()
    engines = [make_engine(url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(upgrade(e) for e in engines))
        assert sorted(str(r.before) for r in results) == sorted(["None", str(HEAD), str(HEAD)])
        assert {r.after for r in results} == {HEAD}
        assert await _schema_differences(engines[0]) == []
    finally:
        for engine in engines:
            await engine.dispose()


async def test_both_services_upgrade_at_once_in_one_process(tmp_path: Path) -> None:
    # `luccs-fallback all` starts every service at once in one event loop: their Alembic runs must not mix
    # (Alembic keeps the running migration in module globals).
    procedure_engine = make_engine(f"sqlite:///{tmp_path / 'procedure.db'}")
    notifier_engine = make_engine(f"sqlite:///{tmp_path / 'notifier.db'}")
    try:
        _, notifier = await asyncio.gather(procedure_migrate.upgrade(procedure_engine), upgrade(notifier_engine))
        assert notifier.after == HEAD
        assert await _tables(procedure_engine) == {*ProcedureBase.metadata.tables, "alembic_version"}
        assert await _tables(notifier_engine) == {*Base.metadata.tables, VERSION_TABLE}
    finally:
        await procedure_engine.dispose()
        await notifier_engine.dispose()


async def _procedure_differences(engine: AsyncEngine) -> list[object]:
    async with engine.connect() as connection:
        return await connection.run_sync(
            _differences, ProcedureBase.metadata, "alembic_version", True
        )


async def _tables_by_schema(engine: AsyncEngine, schemas: tuple[str, ...]) -> dict[str, set[str]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema = ANY(:schemas)"),
            {"schemas": list(schemas)},
        )
        found: dict[str, set[str]] = {schema: set() for schema in schemas}
        for schema, table in rows:
            found[schema].add(table)
        return found


@pytest.mark.postgres
@pytest.mark.parametrize("first", ["procedure", "notifier"])
async def test_both_services_migrate_one_postgresql_database(
    first: str, new_pg_database: NewDatabase, postgres_url: str
) -> None:
    # Both services have tables named "eos" and "advisories": in one database, the notifier's live in a
    # schema of its own, the one named after its role (PostgreSQL's default search_path is "$user", public).
    # The procedure's alembic_version in public stays visible to the notifier: only a version table of its
    # own keeps the notifier from taking the procedure's revision 0001 for its own and creating nothing.
    url = await new_pg_database()
    role = f"luccs_notifier_{uuid.uuid4().hex[:8]}"
    database = make_url(url).database
    await pg_admin(postgres_url, f'CREATE ROLE "{role}" LOGIN')
    procedure_engine = make_engine(url)
    notifier_engine = make_engine(make_url(url).set(username=role, password=None).render_as_string(False))
    try:
        async with procedure_engine.begin() as connection:
            await connection.execute(text(f'CREATE SCHEMA "{role}" AUTHORIZATION "{role}"'))

        async def procedure() -> None:
            await procedure_migrate.upgrade(procedure_engine)

        async def notifier() -> None:
            result = await upgrade(notifier_engine)
            assert (result.before, result.after, result.adopted) == (None, HEAD, False)

        steps = [procedure, notifier] if first == "procedure" else [notifier, procedure]
        for step in steps:
            await step()

        tables = await _tables_by_schema(procedure_engine, ("public", role))
        assert tables["public"] == {*ProcedureBase.metadata.tables, "alembic_version"}
        assert tables[role] == {*Base.metadata.tables, VERSION_TABLE}
        assert await _versions(procedure_engine, "public.alembic_version") == [PROCEDURE_HEAD]
        assert await _versions(notifier_engine) == [HEAD]
        assert await _procedure_differences(procedure_engine) == []
        assert await _schema_differences(notifier_engine, only_these_tables=True) == []

        again = await upgrade(notifier_engine)
        assert (again.before, again.after, again.adopted) == (HEAD, HEAD, False)
        await procedure_migrate.upgrade(procedure_engine)
        assert await _tables_by_schema(procedure_engine, ("public", role)) == tables
    finally:
        await procedure_engine.dispose()
        await notifier_engine.dispose()
        await pg_admin(postgres_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', f'DROP ROLE "{role}"')


@pytest.mark.postgres
async def test_the_notifier_refuses_the_procedure_services_schema(new_pg_database: NewDatabase) -> None:
    # Without a schema of its own the notifier would meet the procedure's "eos" and "advisories": refused,
    # with the differences named, and the procedure's tables left alone.
    url = await new_pg_database()
    engine = make_engine(url)
    try:
        await procedure_migrate.upgrade(engine)
        with pytest.raises(ConfigError) as refused:
            await upgrade(engine)
        message = str(refused.value)
        assert "column eos.webhook_secret is missing" in message
        assert "column advisories.advisory_id is missing" in message
        missing = "tables deliveries, delivery_attempts, known_procedures, notices and planned_events are missing"
        assert missing in message
        assert await _procedure_differences(engine) == []
        assert VERSION_TABLE not in await _tables(engine)
    finally:
        await engine.dispose()


# --- luccs-fallback migrate ----------------------------------------------------------------------------------


def _migrate_command(*arguments: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("luccs-fallback")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LUCCS_")}
    return subprocess.run(
        [*command, "migrate", *arguments], cwd=cwd, env={**clean, **env}, capture_output=True, text=True,
        timeout=120, check=False,
    )


async def test_cli_migrate_upgrades_every_sqlite_database(tmp_path: Path) -> None:
    config = tmp_path / "luccs.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[detector]\n'
        f'database_url = "sqlite:///{tmp_path / "data" / "detector.db"}"\n',
        encoding="utf-8",
    )

    first = await asyncio.to_thread(_migrate_command, "--config", str(config), cwd=tmp_path, env={})
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        f"procedure database: created at {PROCEDURE_HEAD} (sqlite+aiosqlite:///{tmp_path / 'data' / 'procedure.db'})",
        f"notifier database: created at {HEAD} (sqlite+aiosqlite:///{tmp_path / 'data' / 'notifier.db'})",
        f"detector database: created at {DETECTOR_HEAD} (sqlite+aiosqlite:///{tmp_path / 'data' / 'detector.db'})",
    ]
    for name, metadata, version_table, head in (
        ("procedure", ProcedureBase.metadata, "alembic_version", PROCEDURE_HEAD),
        ("notifier", Base.metadata, VERSION_TABLE, HEAD),
        ("detector", DetectorBase.metadata, detector_migrate.VERSION_TABLE, DETECTOR_HEAD),
    ):
        engine = make_engine(f"sqlite:///{tmp_path / 'data' / f'{name}.db'}")
        try:
            assert await _versions(engine, version_table) == [head]
            async with engine.connect() as connection:
                assert await connection.run_sync(_differences, metadata, version_table) == [], name
        finally:
            await engine.dispose()

    second = await asyncio.to_thread(_migrate_command, "--config", str(config), cwd=tmp_path, env={})
    assert second.returncode == 0, second.stderr
    assert [line.split(" (")[0] for line in second.stdout.splitlines()] == [
        f"procedure database: already at {PROCEDURE_HEAD}", f"notifier database: already at {HEAD}",
        f"detector database: already at {DETECTOR_HEAD}",
    ]


@pytest.mark.postgres
async def test_cli_migrate_upgrades_both_postgresql_databases_and_adopts_the_notifiers(
    tmp_path: Path, new_pg_database: NewDatabase
) -> None:
    procedure_url, notifier_url, detector_url = [await new_pg_database() for _ in range(3)]
    notifier = make_engine(notifier_url)
    try:
        async with notifier.begin() as connection:  # left by a notifier from before migrations
            await connection.run_sync(_before_migrations().create_all)
        await _add_eo(notifier, "LU0001")
        env = {"LUCCS_PROCEDURE__DATABASE_URL": procedure_url, "LUCCS_NOTIFIER__DATABASE_URL": notifier_url,
               "LUCCS_DETECTOR__DATABASE_URL": detector_url}

        done = await asyncio.to_thread(_migrate_command, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        assert [line.split(" (")[0] for line in done.stdout.splitlines()] == [
            f"procedure database: created at {PROCEDURE_HEAD}",
            f"notifier database: made before migrations, its tables match: stamped at {FIRST_REVISION}"
            + ("" if HEAD == FIRST_REVISION else f", upgraded to {HEAD}"),
            f"detector database: created at {DETECTOR_HEAD}",
        ]
        assert await _versions(notifier) == [HEAD]
        assert await _count_eos(notifier) == 1
        procedure = make_engine(procedure_url)
        try:
            assert await _versions(procedure, "alembic_version") == [PROCEDURE_HEAD]
        finally:
            await procedure.dispose()
        assert not (tmp_path / "var").exists(), "no SQLite file made beside the configured databases"
    finally:
        await notifier.dispose()


async def test_cli_migrate_stops_at_a_refused_notifier_database(tmp_path: Path) -> None:
    notifier_file = tmp_path / "data" / "notifier.db"
    notifier_file.parent.mkdir()
    engine = make_engine(f"sqlite:///{notifier_file}")
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_earlier_development_schema().create_all)
    finally:
        await engine.dispose()
    env = {"LUCCS_DATA_DIR": str(tmp_path / "data")}

    refused = await asyncio.to_thread(_migrate_command, cwd=tmp_path, env=env)
    assert refused.returncode == 2
    assert refused.stdout.startswith(f"procedure database: created at {PROCEDURE_HEAD}")
    assert "notifier database" not in refused.stdout
    assert "luccs-fallback: notifier database: " in refused.stderr
    assert "column deliveries.lane is missing" in refused.stderr


async def test_cli_migrate_leaves_a_detector_database_it_is_not_given(tmp_path: Path) -> None:
    # A detector's default SQLite file is on the detector's machine: migrate touches it only when told where.
    env = {"LUCCS_DATA_DIR": str(tmp_path / "data")}
    done = await asyncio.to_thread(_migrate_command, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == ["procedure database", "notifier database"]
    assert sorted(p.name for p in (tmp_path / "data").glob("*.db")) == ["notifier.db", "procedure.db"]


async def test_cli_migrate_one_database_only(tmp_path: Path) -> None:
    env = {"LUCCS_DATA_DIR": str(tmp_path / "data")}
    done = await asyncio.to_thread(_migrate_command, "--database", "notifier", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert [line.split(" (")[0] for line in done.stdout.splitlines()] == [f"notifier database: created at {HEAD}"]
    assert sorted(p.name for p in (tmp_path / "data").glob("*.db")) == ["notifier.db"]
