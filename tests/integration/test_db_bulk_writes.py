"""The bulk writes of ``shared.db`` store what one statement per row would, on SQLite (the rows as one JSON
parameter, rows sharing their values as one statement per group; executemany for what JSON cannot carry) and
PostgreSQL (``unnest``; a large insert by ``COPY`` into a temporary table): ``update_plain`` leaves every row
as one UPDATE per given row, in order, would; ``insert_columns`` stores every value as given."""

from __future__ import annotations

import asyncio
import gc
import math
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import Boolean, Column, Float, Integer, LargeBinary, MetaData, String, Table, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession

import shared.db
from shared.db import (
    COPY_MIN_ROWS,
    GROUPED_MIN_ROWS,
    UTCDateTime,
    closed_set,
    insert_column_parts,
    insert_columns,
    update_plain,
)
from shared.events import DeliveryStatus
from tests.support import scratch_table

pytestmark = pytest.mark.integration

KEYS = ["a", "b'quote", 'c"double', "d\\slash", "é-ünï", "f,g", "[h]", "x" * 100, *(f"k{n:03d}" for n in range(40))]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def table(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Table, AsyncSession]]:
    sqlite = f"sqlite:///{tmp_path / 'update_plain.db'}"
    url = sqlite if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    table = Table(f"update_plain_{uuid.uuid4().hex[:10]}", MetaData(),
                  Column("scope", String(10), primary_key=True), Column("id", String(100), primary_key=True),
                  Column("tag", String(20)), Column("n", Integer), Column("done", Integer))
    rows = [{"scope": scope, "id": key, "tag": "new", "n": 0, "done": 0} for scope in ("one", "two") for key in KEYS]
    async with scratch_table(url, table, rows) as session:
        yield table, session


async def _state(session: AsyncSession, table: Table) -> dict[tuple[str, str], tuple[Any, ...]]:
    rows = (await session.execute(select(table.c.scope, table.c.id, table.c.tag, table.c.n, table.c.done))).all()
    return {(row.scope, row.id): (row.tag, row.n, row.done) for row in rows}


def _applied(before: dict[tuple[str, str], tuple[Any, ...]], updates: list[tuple[Any, ...]], *,
             only_new: bool) -> dict[tuple[str, str], tuple[Any, ...]]:
    """What one UPDATE per row, in order, leaves: ``(tag, n, scope, id)`` rows, ``done = 1`` set too (also_set),
    only where the tag is still ``new`` (only_where) if ``only_new``."""
    after = dict(before)
    for tag, n, scope, key in updates:
        if (scope, key) in after and (not only_new or after[(scope, key)][0] == "new"):
            after[(scope, key)] = (tag, n, 1)
    return after


@contextmanager
def _statements(session: AsyncSession) -> Iterator[list[tuple[str, bool]]]:
    """The statements the session's engine runs meanwhile, each with whether it ran as an executemany."""
    seen: list[tuple[str, bool]] = []
    engine = session.get_bind()

    def note(_conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, executemany: bool) -> None:
        seen.append((statement, executemany))

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


async def test_a_batch_sharing_values_ends_as_one_update_per_row(table: tuple[Table, AsyncSession]) -> None:
    rows, session = table
    before = await _state(session, rows)
    updates: list[tuple[Any, ...]] = [
        *(("delivered", 1, "one", key) for key in KEYS[:30]),  # one large group (the quoted keys among them)
        *(("delivered", 2, "one", key) for key in KEYS[30:33]),  # a group too small to be grouped
        *(("delivered", 1, "two", key) for key in KEYS[10:30]),  # the same values, another scope
        *((f"own-{n}", n, "two", key) for n, key in enumerate(KEYS[30:40])),  # values of their own
        ("delivered", 1, "one", "not there"),
    ]
    with _statements(session) as seen:
        await update_plain(session, rows, set_columns=("tag", "n"), keys=("scope", "id"), rows=updates,
                           also_set="done = 1")
    await session.commit()
    assert await _state(session, rows) == _applied(before, updates, only_new=False)
    if session.get_bind().dialect.name == "sqlite":
        assert [("IN (SELECT" in statement, "luccs_row" in statement, many) for statement, many in seen] == [
            (True, False, False), (True, False, False),  # ("delivered", 1) in each scope: a group each
            (False, True, False),  # the rest, as rows of one JSON parameter
        ]


async def test_only_where_holds_for_grouped_rows(table: tuple[Table, AsyncSession]) -> None:
    rows, session = table
    await update_plain(session, rows, set_columns=("tag", "n"), keys=("scope", "id"),
                       rows=[("seen", 5, "one", key) for key in KEYS[:5]])
    before = await _state(session, rows)
    updates = [("reached", 9, "one", key) for key in KEYS[:GROUPED_MIN_ROWS * 2]]
    await update_plain(session, rows, set_columns=("tag", "n"), keys=("scope", "id"), rows=updates,
                       also_set="done = 1", only_where="tag = 'new'")
    await session.commit()
    after = await _state(session, rows)
    assert after == _applied(before, updates, only_new=True)
    assert after[("one", KEYS[0])] == ("seen", 5, 0)  # left as it was: not 'new' any more


async def test_a_key_given_twice_keeps_the_order_of_the_rows(table: tuple[Table, AsyncSession]) -> None:
    rows, session = table
    before = await _state(session, rows)
    # A row of values of its own first, then a group with the same key: run group first, the row after, the
    # earlier row would win.
    updates: list[tuple[Any, ...]] = [("early", 7, "one", KEYS[0])]
    updates += [("late", 1, "one", key) for key in KEYS[:GROUPED_MIN_ROWS * 2]]
    await update_plain(session, rows, set_columns=("tag", "n"), keys=("scope", "id"), rows=updates,
                       also_set="done = 1")
    await session.commit()
    after = await _state(session, rows)
    assert after == _applied(before, updates, only_new=False)
    assert after[("one", KEYS[0])] == ("late", 1, 1)


async def test_values_with_their_own_values_and_a_column_named_id_in_only_where(
    table: tuple[Table, AsyncSession], monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows, session = table
    monkeypatch.setattr(shared.db, "JSON_CHUNK", 3)  # the rows of their own values in several statements
    before = await _state(session, rows)
    updates = [(f"own-{n}", n, "one", key) for n, key in enumerate(KEYS[:20])]
    with _statements(session) as seen:
        await update_plain(session, rows, set_columns=("tag", "n"), keys=("scope", "id"), rows=updates,
                           also_set="done = 1", only_where=f"id <> '{KEYS[3]}'")  # the table's id, not json_each's
    await session.commit()
    expected = _applied(before, [row for row in updates if row[3] != KEYS[3]], only_new=False)
    assert await _state(session, rows) == expected
    if session.get_bind().dialect.name == "sqlite":  # 20 rows of their own values, 3 a statement
        assert sum(1 for statement, _ in seen if "luccs_row" in statement) == 7


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def wide(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Table, AsyncSession]]:
    sqlite = f"sqlite:///{tmp_path / 'insert_columns.db'}"
    url = sqlite if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    table = Table(f"insert_columns_{uuid.uuid4().hex[:10]}", MetaData(),
                  Column("id", String(100), primary_key=True), Column("n", Integer), Column("x", Float),
                  Column("flag", Boolean), Column("at", UTCDateTime), Column("status", closed_set(DeliveryStatus, 10)),
                  Column("blob", LargeBinary), Column("kind", String(10)))
    async with scratch_table(url, table) as session:
        yield table, session


@pytest.mark.parametrize("copy_min_rows", [COPY_MIN_ROWS, 1], ids=["arrays", "copied"])
async def test_insert_columns_stores_every_value_as_given(
    wide: tuple[Table, AsyncSession], monkeypatch: pytest.MonkeyPatch, copy_min_rows: int,
) -> None:
    """Also on PostgreSQL by COPY into a temporary table (``copied``: two inserts into one table in one
    transaction, so the first one's temporary table must be gone for the second)."""
    rows, session = wide
    monkeypatch.setattr(shared.db, "JSON_CHUNK", 3)  # several chunks, one of them with bytes (not JSON)
    monkeypatch.setattr(shared.db, "COPY_MIN_ROWS", copy_min_rows)
    at = datetime(2026, 12, 2, 8, 30, 15, 123456, tzinfo=UTC)
    ids = [key for key in KEYS[:8]]
    columns: dict[str, list[Any]] = {
        "id": ids,
        "n": [0, -1, 2**31 - 1, 7, None, 42, 3, 9],
        "x": [1.5, 1e-7, -2.0e300, 0.1, None, 3.0, 2.5, 0.0],
        "flag": [True, False, None, True, False, True, False, True],
        "at": [at, at + timedelta(microseconds=1), None, at, at, at, at, at],
        "status": [DeliveryStatus.DELIVERED, DeliveryStatus.PENDING, None, DeliveryStatus.DEAD,
                   DeliveryStatus.RETRYING, DeliveryStatus.DELIVERED, DeliveryStatus.PENDING, DeliveryStatus.DEAD],
        "blob": [None, None, None, b"\x00\xffbytes", None, None, None, None],  # the second chunk: executemany
    }
    with _statements(session) as seen:
        await insert_columns(session, rows, columns=columns, constants={"kind": "same"}, skip_conflicts_on=("id",))
        # Inserted again with other values: every row exists already and is left as it is.
        await insert_columns(session, rows, columns={"id": ids[:4], "n": [100] * 4}, constants={"kind": "other"},
                             skip_conflicts_on=("id",))
    await session.commit()
    stored = {row.id: row for row in (await session.execute(select(rows))).all()}
    assert set(stored) == set(ids)
    for n, key in enumerate(ids):
        row = stored[key]
        assert (row.n, row.x, row.flag, row.at, row.status, row.blob, row.kind) == (
            columns["n"][n], columns["x"][n], columns["flag"][n], columns["at"][n], columns["status"][n],
            columns["blob"][n], "same",
        ), key
    if session.get_bind().dialect.name == "sqlite":
        # Chunks of 3: the second of the first insert (the bytes) by executemany, every other one as JSON.
        assert [many for statement, many in seen] == [False, True, False, False, False]
    elif copy_min_rows == 1:
        assert sum(1 for statement, _ in seen if statement.startswith("CREATE TEMPORARY TABLE")) == 2
        assert not any("unnest" in statement for statement, _ in seen)


async def test_columns_of_one_value_are_stored_as_given(wide: tuple[Table, AsyncSession]) -> None:
    """A column whose rows all hold one object goes as one parameter: stored as if given row by row, one
    column of each row kept when every column is uniform, and values Python holds equal but the database stores
    apart (0.0 and -0.0, kept apart by PostgreSQL) not taken for one."""
    rows, session = wide
    at = datetime(2026, 12, 2, 8, 30, tzinfo=UTC)
    ids = [f"u{n:02d}" for n in range(GROUPED_MIN_ROWS + 2)]
    count = len(ids)
    zeros = [0.0, -0.0] * (count // 2)
    with _statements(session) as seen:
        await insert_columns(session, rows, columns={
            "id": ids, "n": [7] * count, "x": zeros, "flag": [True] * count, "at": [at] * count,
            "status": [DeliveryStatus.DELIVERED] * count, "blob": [None] * count,
        }, constants={"kind": "same"})
        # Every column one value: the same row given count times, stored once.
        await insert_columns(session, rows, columns={"id": ["dup"] * count, "n": [3] * count}, constants={},
                             skip_conflicts_on=("id",))
    await session.commit()
    stored = {row.id: tuple(row)[1:] for row in (await session.execute(select(rows))).all()}
    assert stored == {
        **{key: (7, 0.0, True, at, DeliveryStatus.DELIVERED, None, "same") for key in ids},
        "dup": (3, None, None, None, None, None, None),
    }
    if session.get_bind().dialect.name == "postgresql":  # SQLite's REAL stores -0.0 as 0.0
        assert [math.copysign(1, stored[key][1]) for key in ids] == [math.copysign(1, zero) for zero in zeros]
    else:
        first = next(statement for statement, _ in seen if "luccs_row" in statement)
        assert "luccs_row ->> 1" in first and "luccs_row ->> 2" not in first  # id and x per row, the rest once


@pytest.mark.postgres
async def test_a_role_without_temporary_tables_still_inserts_by_arrays(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Where the role may not create temporary tables, a large insert goes as arrays, in the same transaction
    (the refusal does not end it), with one warning naming the privilege."""
    monkeypatch.setattr(shared.db, "COPY_MIN_ROWS", 1)
    monkeypatch.setattr(shared.db, "_copy_refused", False)
    name = f"luccs_no_temp_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(make_url(postgres_url).set(drivername="postgresql").render_as_string(False))
    try:
        await admin.execute(f"CREATE ROLE {name} LOGIN")
        await admin.execute(f"CREATE DATABASE {name} OWNER {name}")
        await admin.execute(f"REVOKE TEMPORARY ON DATABASE {name} FROM PUBLIC, {name}")
        url = make_url(postgres_url).set(username=name, password=None, database=name).render_as_string(False)
        table = Table("no_temp", MetaData(), Column("id", String(10), primary_key=True), Column("n", Integer))
        async with scratch_table(url, table) as session:
            with _statements(session) as seen:
                await insert_columns(session, table, columns={"id": ["a", "b"], "n": [1, 2]}, constants={})
                await insert_columns(session, table, columns={"id": ["c"], "n": [3]}, constants={})
            await session.commit()
            assert sorted(tuple(row) for row in (await session.execute(select(table))).all()) == [
                ("a", 1), ("b", 2), ("c", 3)]
        # Asked once (refused), not again: the second insert went as arrays straight away.
        assert [statement.split(" AS ")[0] for statement, _ in seen if "TEMPORARY" in statement] == [
            "CREATE TEMPORARY TABLE luccs_copy_no_temp ON COMMIT DROP"]
        assert sum(1 for statement, _ in seen if "unnest" in statement) == 2
        warnings = [record.getMessage() for record in caplog.records if record.name == "shared.db"]
        assert len(warnings) == 1 and "a temporary table to copy rows into no_temp was refused" in warnings[0]
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {name}")
        await admin.close()


async def test_a_string_that_is_not_valid_unicode_is_refused_not_stored(
    wide: tuple[Table, AsyncSession],
) -> None:
    """A lone surrogate (an SMTP reply decoded with surrogateescape) fails the write as a bound parameter does:
    through JSON SQLite stored bytes that no read could decode afterwards."""
    rows, session = wide
    await insert_columns(session, rows, columns={"id": ["ok"]}, constants={"kind": "k"})
    await session.commit()
    with pytest.raises((UnicodeEncodeError, StatementError, DBAPIError)):
        await insert_columns(session, rows, columns={"id": ["bad", "refus\udce9e"]}, constants={"kind": "k"})
    await session.rollback()
    with pytest.raises((UnicodeEncodeError, StatementError, DBAPIError)):
        await update_plain(session, rows, set_columns=("kind",), keys=("id",),
                           rows=[("refus\udce9e", "ok")] + [(f"k{n}", f"none-{n}") for n in range(20)])
    await session.rollback()
    assert [tuple(row) for row in (await session.execute(select(rows.c.id, rows.c.kind))).all()] == [("ok", "k")]


@pytest.mark.postgres
async def test_a_copy_failing_is_raised_as_a_statement_failing(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the COPY raises comes as SQLAlchemy's error: a value too long for its column as a DBAPIError, the
    connection lost mid-copy as an invalidated connection's (what the API answers with 503)."""
    monkeypatch.setattr(shared.db, "COPY_MIN_ROWS", 1)
    table = Table(f"copy_fails_{uuid.uuid4().hex[:8]}", MetaData(), Column("id", String(5), primary_key=True))
    async with scratch_table(postgres_url, table) as session:
        with pytest.raises(DBAPIError, match="too long") as raised:
            await insert_columns(session, table, columns={"id": ["fine", "far too long"]}, constants={})
        assert not raised.value.connection_invalidated
        await session.rollback()

        original = asyncpg.Connection.copy_records_to_table
        admin = await asyncpg.connect(make_url(postgres_url).set(drivername="postgresql").render_as_string(False))

        async def lost_first(self: Any, *args: Any, **kwargs: Any) -> Any:
            # Waits (up to 10 s) until the backend is gone: the copy then meets a closed connection.
            await admin.execute("SELECT pg_terminate_backend($1, 10000)", self.get_server_pid())
            return await original(self, *args, **kwargs)

        monkeypatch.setattr(asyncpg.Connection, "copy_records_to_table", lost_first)
        try:
            with pytest.raises(DBAPIError) as raised:
                await insert_columns(session, table, columns={"id": ["a", "b"]}, constants={})
        finally:
            await admin.close()
        assert raised.value.connection_invalidated and isinstance(raised.value, (InterfaceError, OperationalError))
        await session.rollback()  # the session lets go of the lost connection and takes a new one
        monkeypatch.setattr(asyncpg.Connection, "copy_records_to_table", original)
        await insert_columns(session, table, columns={"id": ["c", "d"]}, constants={})
        await session.commit()
        assert sorted((await session.execute(select(table.c.id))).scalars()) == ["c", "d"]


@pytest.mark.postgres
async def test_copied_rows_keep_their_order_and_their_values(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows copied go in the order given (a serial id follows it: this guards the ordinal's pairing with the rows;
    PostgreSQL reads a fresh temporary table in the order written, so the ``ORDER BY`` alone it cannot catch),
    values Python holds equal but PostgreSQL keeps apart (0.0 and -0.0) copied as given, not taken for one
    constant; on an autocommit connection (no transaction to hold a temporary table) the rows go as arrays."""
    monkeypatch.setattr(shared.db, "COPY_MIN_ROWS", 1)
    table = Table(f"copy_order_{uuid.uuid4().hex[:8]}", MetaData(),
                  Column("serial", Integer, primary_key=True, autoincrement=True), Column("key", String(20)),
                  Column("x", Float))
    keys = [f"k{n:05d}" for n in range(3000)]
    shuffled = sorted(keys, key=lambda key: hash((key, "shuffle")))
    zeros = [-0.0, 0.0] * (len(keys) // 2)
    async with scratch_table(postgres_url, table) as session:
        with _statements(session) as seen:
            await insert_columns(session, table, columns={"key": shuffled, "x": zeros}, constants={})
        await session.commit()
        assert any(statement.startswith("CREATE TEMPORARY TABLE") for statement, _ in seen)
        stored = (await session.execute(select(table.c.key, table.c.x).order_by(table.c.serial))).all()
        assert [row.key for row in stored] == shuffled
        assert [math.copysign(1, row.x) for row in stored] == [math.copysign(1, zero) for zero in zeros]
    async with scratch_table(postgres_url, table) as session:
        connection = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        with _statements(session) as seen:
            await insert_columns(session, table, columns={"key": keys[:10], "x": [1.5] * 10}, constants={})
        assert not any("TEMPORARY" in statement for statement, _ in seen)
        assert (await connection.execute(select(func.count()).select_from(table))).scalar() == 10


# --- insert_column_parts: each next part built while the one before is written ------------------------------


def _part(ids: list[str], n: int) -> dict[str, list[Any]]:
    return {"id": ids, "n": [n] * len(ids)}


async def test_parts_are_inserted_in_order_each_built_while_the_one_before_is_written(
    wide: tuple[Table, AsyncSession], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The insert of part 1 (and of part 2) goes ahead only once part 2 (part 3) has begun to be built, in
    another thread than the loop's, and waits for it without holding the loop: built after that insert, or on
    the loop, the wait times out (10 s). Every part stored with the constants, in one transaction."""
    rows, session = wide
    real_insert = shared.db.insert_columns
    begun = [threading.Event() for _ in range(3)]
    loop_thread = threading.get_ident()
    builders: list[int] = []
    overlapped: list[bool] = []

    async def insert_once_the_next_is_begun(session: AsyncSession, table: Table, **kwargs: Any) -> None:
        n = kwargs["columns"]["n"][0]
        if n < 2:
            overlapped.append(await asyncio.to_thread(begun[n + 1].wait, 10))
        await real_insert(session, table, **kwargs)

    def parts() -> Iterator[dict[str, list[Any]]]:
        for n, ids in enumerate((["a", "b"], ["c"], ["d", "e", "f"])):
            begun[n].set()
            builders.append(threading.get_ident())
            yield _part(ids, n)

    monkeypatch.setattr(shared.db, "insert_columns", insert_once_the_next_is_begun)
    await insert_column_parts(session, rows, parts(), constants={"kind": "parted"}, skip_conflicts_on=("id",))
    assert overlapped == [True, True]
    assert builders[0] == loop_thread and loop_thread not in builders[1:]
    await session.commit()
    stored = (await session.execute(select(rows.c.id, rows.c.n, rows.c.kind).order_by(rows.c.id))).all()
    assert [tuple(row) for row in stored] == [
        ("a", 0, "parted"), ("b", 0, "parted"), ("c", 1, "parted"), ("d", 2, "parted"), ("e", 2, "parted"),
        ("f", 2, "parted"),
    ]


async def test_a_part_failing_to_build_ends_the_insert_once_the_part_before_is_written(
    wide: tuple[Table, AsyncSession], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The build error comes only after the insert under way has ended (held here until the build has failed:
    raised at once, the session would still be running that insert); the transaction then rolls back whole."""
    rows, session = wide
    real_insert = shared.db.insert_columns
    failed = threading.Event()
    ended: list[list[str]] = []

    async def slow_insert(session: AsyncSession, table: Table, **kwargs: Any) -> None:
        assert await asyncio.to_thread(failed.wait, 10)
        await asyncio.sleep(0.2)
        await real_insert(session, table, **kwargs)
        ended.append(list(kwargs["columns"]["id"]))

    def parts() -> Iterator[dict[str, list[Any]]]:
        yield _part(["a", "b"], 0)
        failed.set()
        raise ValueError("a part that cannot be built")

    monkeypatch.setattr(shared.db, "insert_columns", slow_insert)
    with pytest.raises(ValueError, match="cannot be built"):
        await insert_column_parts(session, rows, parts(), constants={})
    assert ended == [["a", "b"]]
    await session.rollback()
    assert (await session.execute(select(func.count()).select_from(rows))).scalar() == 0


async def test_a_part_failing_to_insert_stops_the_parts(
    wide: tuple[Table, AsyncSession], caplog: pytest.LogCaptureFixture,
) -> None:
    """A key given twice in part 2 (no conflicts skipped): the insert's error comes out, the part after it is the
    last one begun (and its failing build, thrown away, is not reported as an error never retrieved)."""
    rows, session = wide
    built: list[int] = []

    def parts() -> Iterator[dict[str, list[Any]]]:
        for n, ids in enumerate((["a"], ["b", "b"], ["c"], ["d"])):
            built.append(n)
            if n == 2:
                raise ValueError("the part after the failing one fails too")
            yield _part(ids, n)

    with pytest.raises(IntegrityError):
        await insert_column_parts(session, rows, parts(), constants={})
    await session.rollback()
    assert (await session.execute(select(func.count()).select_from(rows))).scalar() == 0
    await asyncio.sleep(0.1)
    gc.collect()
    assert 3 not in built
    assert "never retrieved" not in caplog.text


async def test_cancelled_while_a_part_is_built_the_session_is_free(wide: tuple[Table, AsyncSession]) -> None:
    """Cancelled while part 2 is being built (part 1 inserted): the cancellation comes out at once, the session
    rolls the transaction back whole; the build goes on in its thread, thrown away."""
    rows, session = wide
    release, inserted = threading.Event(), threading.Event()

    def done(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith(f"INSERT INTO {rows.name}"):
            inserted.set()

    def parts() -> Iterator[dict[str, list[Any]]]:
        yield _part(["a"], 0)
        release.wait(10)
        yield _part(["b"], 1)

    engine = session.get_bind()
    event.listen(engine, "after_cursor_execute", done)
    task = asyncio.create_task(insert_column_parts(session, rows, parts(), constants={}))
    try:
        assert await asyncio.to_thread(inserted.wait, 10)
        await asyncio.sleep(0.1)  # the insert's last steps: the task then waits for part 2
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        release.set()
        event.remove(engine, "after_cursor_execute", done)
    await session.rollback()
    assert (await session.execute(select(func.count()).select_from(rows))).scalar() == 0
