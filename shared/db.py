"""Database helpers: async SQLAlchemy engines for SQLite (default) and PostgreSQL."""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import json
import logging
import operator
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from itertools import count, repeat
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, DateTime, Dialect, String, Table, any_, bindparam, event, func, select, text
from sqlalchemy import Enum as SqlEnum
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.types import TypeDecorator

from shared.text import is_unicode

log = logging.getLogger(__name__)

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}


class DatabaseUnreachable(ConnectionError):
    """A connection to the database could not be opened; the message names the database (password hidden)."""


def async_url(database_url: str) -> URL:
    """Accept plain ``sqlite:///`` and ``postgresql://`` URLs too, and pick the async driver for them."""
    url = make_url(database_url)
    if url.drivername in _ASYNC_DRIVERS:
        url = url.set(drivername=_ASYNC_DRIVERS[url.drivername])
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database {url.get_backend_name()!r}: use SQLite or PostgreSQL")
    return url


def make_engine(database_url: str) -> AsyncEngine:
    """Create an engine; a SQLite file gets its folder created and WAL journaling.

    ``hide_parameters``: a statement's error never carries its values (EO e-mails, sealed and, in the registry
    outbox, unsealed webhook secrets) into a logged traceback; PRODUCT.md: secrets are never logged."""
    url = async_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine.sync_engine, "checkin")
        def _checkpoints_again(dbapi_connection: Any, record: Any) -> None:
            if dbapi_connection is None or not record.info.pop(_CHECKPOINT_DEFERRED, False):
                return
            try:  # back to SQLite's default before the connection serves anyone else (see defer_checkpoint)
                cursor = dbapi_connection.cursor()
                cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
                cursor.close()
            except Exception as exc:  # not served again as it is: the next checkout opens a new connection
                log.warning("could not restore the WAL's automatic checkpoints on a connection: %s", exc)
                record.invalidate(exc, soft=True)

        return engine
    engine = create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, hide_parameters=True)
    where = url.render_as_string(hide_password=True)

    @event.listens_for(engine.sync_engine, "do_connect")
    def _naming_the_database(dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
        # asyncpg's error for a refused connection names the address on asyncio's loop ("Connect call failed
        # ('127.0.0.1', 5432)") but not on uvloop's ("Connection refused"), and a service that cannot start
        # must say which database it could not reach, whichever loop it runs on (shared/eventloop.py).
        try:
            return dialect.connect(*cargs, **cparams)
        except OSError as exc:
            raise DatabaseUnreachable(f"cannot connect to the database {where}: {exc}") from exc

    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


WAL_AUTOCHECKPOINT_PAGES = 1000
"""SQLite's default: a commit that leaves the write-ahead log this many pages long copies it into the database
file (a checkpoint) before it returns."""

_CHECKPOINT_DEFERRED = "luccs_checkpoint_deferred"


async def defer_checkpoint(session: AsyncSession) -> bool:
    """On SQLite, let the session's transaction commit without the checkpoint its commit would run; returns
    whether it does (False elsewhere). The caller runs :func:`checkpoint` afterwards.

    A commit that leaves the write-ahead log over ``WAL_AUTOCHECKPOINT_PAGES`` long copies the log into the
    database file before it returns: after a national fan-out's plan (100,000 deliveries) that took 1-1.6 s,
    during which the committed rows waited for the dispatcher's next poll. Only this connection's commit is
    spared: another connection's commit ending before :func:`checkpoint` starts (a writer that waited for this
    transaction) runs that copy itself, as before. The connection goes back to the pool with the default
    restored (or, should that fail, is replaced)."""
    if session.get_bind().dialect.name != "sqlite":
        return False
    connection = await session.connection()
    await connection.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
    connection.info[_CHECKPOINT_DEFERRED] = True
    return True


async def checkpoint(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Copy SQLite's write-ahead log into the database file as far as its readers allow (PASSIVE: waiting for no
    reader or writer), on a connection of its own; nothing elsewhere. A checkpoint another connection is
    running already, or a failure (logged), leaves the copy to that one or to the next commit's automatic
    checkpoint."""
    async with sessions() as session:
        if session.get_bind().dialect.name != "sqlite":
            return
        try:
            connection = await session.connection()
            busy, pages, copied = tuple((await connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")).one())
        except Exception as exc:
            log.warning("could not checkpoint the write-ahead log: %s", exc)
            return
        if busy or copied < pages:
            log.debug("checkpoint of the write-ahead log: %s of %s pages copied%s", copied, pages,
                      " (another checkpoint under way)" if busy else "")


async def ping(engine: AsyncEngine) -> None:
    """Raise if the database does not answer (used by /readyz)."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def as_utc(value: datetime | str) -> datetime:
    """A ``UTCDateTime`` column's value as the driver gives it (SQLite: naive UTC, or its text when read without
    the column type; asyncpg: an aware datetime), as the aware UTC datetime the column type makes of it."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


E = TypeVar("E", bound=StrEnum)


def closed_set(enum: type[E], length: int) -> SqlEnum:
    """A column type for a closed set of names (a :class:`~enum.StrEnum`): stored as the member's value, the
    very string of the contract, in a ``VARCHAR(length)`` (no database enum type, no CHECK constraint, so no
    migration); rows load as members, and a string that is not a member is refused before it is written."""
    return SqlEnum(
        enum, native_enum=False, create_constraint=False, validate_strings=True, length=length,
        values_callable=lambda members: [m.value for m in members],
    )


def one_of(column: Any, values: Sequence[str], dialect: Dialect) -> ColumnElement[bool]:
    """``column IN values`` for a long list of strings, passed as one parameter: ``= ANY($1)`` (an array) on
    PostgreSQL, ``IN (SELECT value FROM json_each(?))`` on SQLite.

    SQLAlchemy's ``in_`` renders a placeholder per value (and on PostgreSQL a cast each) every time the
    statement runs: a claim of 2,000 deliveries rendered 4,000 of them, about 10 us of CPU per delivery
    claimed. Both forms look each value up in the column's index as ``in_`` does."""
    if dialect.name == "postgresql":
        return cast(ColumnElement[bool], column == any_(bindparam(None, list(values), type_=ARRAY(String()))))
    if sqlite3.sqlite_version_info < (3, 38):  # json_each is built in from 3.38 (an extension before)
        return cast(ColumnElement[bool], column.in_(list(values)))
    listed = func.json_each(bindparam(None, json.dumps(list(values)), type_=String())).table_valued("value")
    return cast(ColumnElement[bool], column.in_(select(listed.c.value)))


async def insert_plain(
    session: AsyncSession, table: Table, *, columns: Sequence[str], rows: Sequence[Sequence[Any]],
    skip_conflicts_on: Sequence[str] = (),
) -> None:
    """Insert ``rows`` (tuples of ``table``'s ``columns``, in that order) straight at the driver; with
    ``skip_conflicts_on``, a row whose values there exist already is left out.

    For the statements of a fan-out (100,000 delivery rows planned, thousands of outcomes recorded per
    batch): SQLAlchemy's executemany builds and type-processes a parameter dictionary per row, which cost
    more than the database's own work. Here each column's type processing (enum names, timestamps) runs once
    per distinct value (the rows of a fan-out share a few timestamps and names), and the driver gets plain
    values, so the same values are stored as through the ORM. SQLite: the rows as one JSON parameter per
    ``JSON_CHUNK`` (:func:`_json_rows`; executemany for a chunk JSON cannot carry);
    PostgreSQL: one statement for all rows, the columns passed as arrays (``unnest``), not a round trip each;
    from ``COPY_MIN_ROWS`` rows by ``COPY`` into a temporary table and one insert from it (:func:`_copied`).
    The rows' form of :func:`insert_columns` (rows of another width than ``columns`` raise ValueError).
    """
    transposed = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
    await insert_columns(session, table, columns=dict(zip(columns, transposed, strict=True)), constants={},
                         skip_conflicts_on=skip_conflicts_on)


async def insert_columns(
    session: AsyncSession, table: Table, *, columns: Mapping[str, Sequence[Any]], constants: Mapping[str, Any],
    skip_conflicts_on: Sequence[str] = (),
) -> None:
    """As :func:`insert_plain`, the values given column by column (``columns``: name to the values of every
    row, all of one length) and ``constants`` (name to the one value every row takes).

    For a fan-out's rows, where half the columns are one value (the event, its type, the time planned):
    each constant is type-processed once and, on PostgreSQL, sent once as a parameter instead of an array
    of 100,000 copies; the callers build their lists column by column, with no row tuple per recipient."""
    lengths = {len(values) for values in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns of different lengths given for {table.name}: {sorted(lengths)}")
    if both := columns.keys() & constants.keys():
        raise ValueError(f"columns given both per row and as constants for {table.name}: {sorted(both)}")
    if not lengths or not lengths.pop():
        return
    columns, constants = _constants_apart(columns, constants)
    dialect = session.get_bind().dialect
    names = _names(table, list(columns))
    fixed = _names(table, list(constants))
    keys = _names(table, skip_conflicts_on)
    conflict = f" ON CONFLICT ({', '.join(keys)}) DO NOTHING" if keys else ""
    into = f"INSERT INTO {table.name} ({', '.join([*names, *fixed])})"
    arrays = [_processed(dialect, table, name, column) for name, column in zip(names, columns.values(), strict=True)]
    values = [_processed(dialect, table, name, [value])[0] for name, value in zip(fixed, constants.values(),
                                                                                  strict=True)]
    if dialect.name == "postgresql":
        copied = await _copied(session, table, names, arrays) if len(arrays[0]) >= COPY_MIN_ROWS else None
        first = 1 if copied else len(names) + 1
        casts = [f"${n}::{_cast_type(dialect, table, name)}" for n, name in enumerate(fixed, first)]
        selected = ", ".join([", ".join(names) if copied else "*", *casts])
        source = f"{copied} ORDER BY {_ORDINAL}" if copied else _unnest(dialect, table, names)
        sql = f"{into} SELECT {selected} FROM {source}{conflict}"  # noqa: S608
        await _run(session, sql, values if copied else [*arrays, *values])
        if copied:
            await _run(session, f"DROP TABLE {copied}", ())
    else:
        picked = ", ".join([*(f"{_ROW} ->> {n}" for n in range(len(names))), *("?" * len(fixed))])
        # WHERE true: an upsert clause after a SELECT must follow a WHERE (SQLite's grammar).
        from_json = f"{into} SELECT {picked} FROM {_JSON_ROWS} WHERE true{conflict}"  # noqa: S608
        by_row = f"{into} VALUES ({', '.join('?' * (len(names) + len(fixed)))}){conflict}"
        for start in range(0, len(arrays[0]), JSON_CHUNK):
            chunk = [column[start:start + JSON_CHUNK] for column in arrays]
            rows_json = _json_rows(chunk)
            if rows_json is not None:
                await _run(session, from_json, [*values, rows_json])
            else:  # zip stops at the columns' end: the constants repeat as often as there are rows
                await _run(session, by_row, zip(*chunk, *map(repeat, values), strict=False), many=True)


async def insert_column_parts(
    session: AsyncSession, table: Table, parts: Iterator[Mapping[str, Sequence[Any]]], *,
    constants: Mapping[str, Any], skip_conflicts_on: Sequence[str] = (),
) -> None:
    """:func:`insert_columns` for each of ``parts`` (column mappings) in turn, on the one session: each next
    part is made (``parts`` advanced) in a thread of this module's own while the database inserts the part
    before.

    For an insert whose rows take Python as long to build as the database to write (a fan-out's plan:
    100,000 deliveries): SQLite's thread (for rows it takes as one JSON parameter, not by executemany) and
    PostgreSQL's server work without the interpreter's lock, so the building of one part runs beside the
    writing of the other instead of before it. The inserts run in the caller's task, one after the other,
    as a plain await of each would: cancelling the caller cancels the statement under way, as ever.
    ``parts`` is advanced from one thread at a time, never two at once, beside the event loop's other tasks:
    it must touch nothing they touch (``session`` included). Once this has raised, the thread may still be
    building the part it had begun; it is then thrown away (its error too)."""
    loop = asyncio.get_running_loop()
    part = next(parts, None)
    while part is not None:
        building = loop.run_in_executor(_part_builder(), next, parts, None)
        try:
            await insert_columns(session, table, columns=part, constants=constants,
                                 skip_conflicts_on=skip_conflicts_on)
        except BaseException:
            building.add_done_callback(_thrown_away)
            raise
        part = await building


_builders: concurrent.futures.ThreadPoolExecutor | None = None


def _part_builder() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that build :func:`insert_column_parts`' parts: not the loop's default executor, where a
    hanging DNS lookup (``getaddrinfo`` runs there) would hold a plan's transaction open."""
    global _builders
    if _builders is None:
        _builders = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="luccs-db-parts")
    return _builders


def _thrown_away(building: asyncio.Future[Any]) -> None:
    if not building.cancelled():
        building.exception()  # retrieved: the insert's error is the one raised


COPY_MIN_ROWS = 5_000
"""From this many rows (a fan-out's plan) PostgreSQL gets them by ``COPY`` into a temporary table, then one
``INSERT ... SELECT`` (:func:`_copied`), instead of as arrays to ``unnest``."""

_copy_refused = False
"""Set once the role was refused a temporary table: the process then sends arrays without asking again."""

_ORDINAL = "luccs_n"
"""The temporary table's column of each row's place: the rows are inserted in the order given (the serial ids
of an outbox follow it), as ``unnest`` gives them."""


async def _copied(
    session: AsyncSession, table: Table, names: Sequence[str], arrays: Sequence[Sequence[Any]]
) -> str | None:
    """``names`` of ``table`` (the values column by column, as the driver takes them) copied into a temporary
    table of those columns and :data:`_ORDINAL` (dropped at commit, or by the caller once read); its name, or
    None where that cannot be: the driver is not asyncpg, no transaction is open at the driver (autocommit: the
    table would be gone at once), or the role was refused the table (no TEMPORARY on the database, no SELECT on
    ``table``: sqlstate 42501; then :func:`insert_columns` sends arrays, as for fewer rows, and so does every later
    call in this process, whatever its database).

    100,000 delivery rows of a national fan-out took PostgreSQL 5.5 s as arrays to ``unnest``; by ``COPY``
    (asyncpg's binary format) 0.4-0.6 s, then the insert with its indexes about 2.7 s (bench/README.md, "Tenth
    round"). What the copy raises is raised as SQLAlchemy's error, as the same failure of a statement would be
    (a connection lost: invalidated, an ``InterfaceError``); unlike a statement's, a value the driver cannot
    encode also ends the transaction (the copy had begun)."""
    global _copy_refused
    connection = await session.connection()
    adapter = (await connection.get_raw_connection()).dbapi_connection
    driver: Any = getattr(adapter, "driver_connection", None)
    if _copy_refused or not hasattr(driver, "copy_records_to_table") or getattr(adapter, "autocommit", True):
        return None
    name = f"luccs_copy_{table.name}"
    # Its own savepoint: a refusal (no TEMPORARY privilege) would otherwise end the caller's transaction.
    await _run(session, "SAVEPOINT luccs_copy", ())
    try:
        await _run(session, f"CREATE TEMPORARY TABLE {name} ON COMMIT DROP AS"  # noqa: S608
                            f" SELECT 0 AS {_ORDINAL}, {', '.join(names)} FROM {table.name} WITH NO DATA", ())
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != _INSUFFICIENT_PRIVILEGE:
            raise
        await _run(session, "ROLLBACK TO SAVEPOINT luccs_copy", ())
        await _run(session, "RELEASE SAVEPOINT luccs_copy", ())
        _copy_refused = True
        log.warning("a temporary table to copy rows into %s was refused (%s): large inserts go as arrays, slower; "
                    "to copy them, the role needs TEMPORARY on the database and SELECT on the table", table.name,
                    exc.orig)
        return None
    await _run(session, "RELEASE SAVEPOINT luccs_copy", ())
    try:
        await driver.copy_records_to_table(name, records=zip(count(), *arrays, strict=False),
                                           columns=[_ORDINAL, *names])
    except Exception as exc:
        raise await _as_dbapi_error(connection, adapter, exc, f"COPY {name}") from exc
    return name


async def _as_dbapi_error(connection: Any, adapter: Any, exc: Exception, statement: str) -> Exception:
    """``exc``, raised by the driver outside SQLAlchemy, as SQLAlchemy raises a statement's failure: translated by
    the dialect's adapter, the connection invalidated if it was lost."""
    translated = exc
    try:
        adapter._handle_exception(exc)  # raises the DBAPI error the dialect makes of it (or ``exc`` itself)
    except Exception as error:
        translated = error
    dialect = connection.dialect
    base = dialect.loaded_dbapi.Error
    lost = isinstance(translated, base) and dialect.is_disconnect(translated, adapter, None)
    if lost:  # as SQLAlchemy reports a statement on a closed connection: what the API answers with 503
        await connection.invalidate()
        return InterfaceError(statement, None, translated, hide_parameters=True, connection_invalidated=True)
    return DBAPIError.instance(statement, None, translated, base, hide_parameters=True, dialect=dialect)


_INSUFFICIENT_PRIVILEGE = "42501"


def _constants_apart(
    columns: Mapping[str, Sequence[Any]], constants: Mapping[str, Any]
) -> tuple[Mapping[str, Sequence[Any]], Mapping[str, Any]]:
    """``columns`` and ``constants`` with every column whose rows all hold one object moved to the
    constants: a batch of outcomes shares its time, attempt, outcome and HTTP status, and each such column is
    then one parameter instead of one JSON value (SQLite) or array element (PostgreSQL) per row. One column is
    always kept: the statements select the rows from it."""
    if len(next(iter(columns.values()))) < GROUPED_MIN_ROWS:
        return columns, constants
    # One object, not equal values: -0.0 and 0.0, Decimal("1.0") and Decimal("1.000") are equal, not one value
    # stored. The values a batch shares are one object (its time, an enum member, a small integer, None). By
    # ``is`` against the first, never by ``id``: a sequence making each item as it is read (``array.array``)
    # frees one before the next, whose id may then be the same.
    uniform = [name for name, values in columns.items() if all(map(operator.is_, values, repeat(values[0])))]
    if not uniform:
        return columns, constants
    if len(uniform) == len(columns):
        uniform.pop()
    return ({name: values for name, values in columns.items() if name not in uniform},
            {**constants, **{name: columns[name][0] for name in uniform}})


JSON_CHUNK = 10_000
"""Rows per JSON parameter: the text and SQLite's parse of it are held whole while the statement runs, so a
national fan-out's 100,000 deliveries go as ten statements in their one transaction, not one text of 25 MB
(with one text the notifier's peak RSS went from 217 to 311 MiB)."""
_ROW = "luccs_row"
_JSON_ROWS = "(SELECT value AS luccs_row FROM json_each(?))"
"""The rows of one JSON parameter (an array of arrays), each as ``luccs_row``: a name of its own, so that a
caller's SQL naming the table's columns (``id``, ``key``, ...) never means one of ``json_each``'s instead."""


def _json_rows(columns: Sequence[Sequence[Any]]) -> str | None:
    """The rows of ``columns`` as one JSON text (an array of arrays) for SQLite to read in a single statement,
    or None where that is not possible (before SQLite 3.38; a value JSON cannot carry: bytes, NaN, a NUL, a
    string that is not valid Unicode). Integers of 2**63 and more (a bound parameter refuses them) and floats
    of extreme exponents (SQLite 3.43 and later may read those one unit in the last place off) are not
    looked for: no column written this way holds them (the floats are durations in milliseconds).

    SQLite's executemany binds row after row, taking the GIL back for each: with an event loop busy beside it
    that turned into waits of up to the interpreter's switch interval per row (100,000 rows written in 1.5 s
    by themselves took over 2 minutes beside a thread that kept the GIL; a batch of 4,000 outcomes took
    0.5-0.8 s instead of 0.25 s in a national fan-out: bench/README.md, "Ninth round"). One statement reading
    JSON runs from start to end without the GIL."""
    if sqlite3.sqlite_version_info < (3, 38):  # ->> is built in from 3.38
        return None
    try:
        rows = json.dumps(list(zip(*columns, strict=True)), allow_nan=False, ensure_ascii=False,
                          separators=(",", ":"))
    except (TypeError, ValueError):
        return None
    # A string that is not valid Unicode (a lone surrogate: an SMTP reply decoded with surrogateescape) is
    # refused as a bound parameter refuses it: through JSON SQLite would store bytes no read decodes.
    return None if "\\u0000" in rows or not is_unicode(rows) else rows


async def update_plain(
    session: AsyncSession, table: Table, *, set_columns: Sequence[str], keys: Sequence[str],
    rows: Sequence[Sequence[Any]], also_set: str = "", only_where: str = "",
) -> None:
    """For each of ``rows`` (tuples: the ``set_columns`` values, then the ``keys`` values), set those columns of
    the row of ``table`` with those keys; ``also_set`` (``"col = NULL"``) and ``only_where`` (a condition on
    the table's own columns) are the callers' constant SQL. As :func:`insert_plain`: plain values at the
    driver; SQLite one statement per group of rows setting the same values and one ``UPDATE ... FROM`` the
    other rows as JSON (:func:`_json_rows`), PostgreSQL one ``UPDATE ... FROM unnest(...)``."""
    if not rows:
        return
    dialect = session.get_bind().dialect
    names = _names(table, [*set_columns, *keys])
    sets, matches = names[:len(set_columns)], names[len(set_columns):]
    extra_set = f", {also_set}" if also_set else ""
    condition = f" AND {only_where}" if only_where else ""
    if dialect.name == "postgresql":
        # The array columns are named c0, c1, ...: no clash with the table's own names in ``only_where``.
        assignments = ", ".join(f"{c} = v.c{n}" for n, c in enumerate(sets))
        aliases = ", ".join(f"c{n}" for n in range(len(names)))
        where = " AND ".join(f"{table.name}.{c} = v.c{n}" for n, c in enumerate(matches, len(sets)))
        sql = (f"UPDATE {table.name} SET {assignments}{extra_set}"  # noqa: S608
               f" FROM {_unnest(dialect, table, names)} AS v({aliases}) WHERE {where}{condition}")
        await _run(session, sql, _plain_columns(dialect, table, names, rows))
    else:
        assignments = ", ".join(f"{c} = ?" for c in sets)
        plain = _plain_rows(dialect, table, names, rows)
        if len(plain) >= GROUPED_MIN_ROWS and sqlite3.sqlite_version_info >= (3, 38):
            # Rows that set the same values (a batch of outcomes: thousands delivered at one time, on attempt 1,
            # answered 200) as one statement per group, the group's last key values as one JSON array: a C loop
            # in SQLite instead of a bound row each. An executemany takes the GIL back between rows, and with a
            # busy event loop beside it 4,000 rows took up to four times as long (bench/README.md, "Ninth
            # round"). The rest, rows whose values are their own, go as one JSON parameter below.
            # Every key in the row value: with ``a = ? AND b IN (...)`` and no statistics SQLite may walk another
            # index on ``a`` (the procedure's unreached EOs: all of them, for each batch) instead of the key's.
            placeholders = "?, " * (len(matches) - 1)
            where = f"({', '.join(matches)}) IN (SELECT {placeholders}value FROM json_each(?))"  # noqa: S608
            grouped, plain = _grouped(plain, sets=len(sets))
            for shared_values, last_values in grouped:
                await _run(session, f"UPDATE {table.name} SET {assignments}{extra_set}"  # noqa: S608
                                    f" WHERE {where}{condition}", [*shared_values, json.dumps(last_values)])
        if not plain:
            return
        by_row = f"UPDATE {table.name} SET {assignments}{extra_set} WHERE "  # noqa: S608
        by_row += " AND ".join(f"{c} = ?" for c in matches) + condition
        if not _keys_distinct(plain, len(sets)):  # a key given twice: one UPDATE per row, in order (see _grouped)
            await _run(session, by_row, plain, many=True)
            return
        from_json = ", ".join(f"{c} = {_ROW} ->> {n}" for n, c in enumerate(sets))
        where = " AND ".join(f"{table.name}.{c} = {_ROW} ->> {n}" for n, c in enumerate(matches, len(sets)))
        by_json = f"UPDATE {table.name} SET {from_json}{extra_set} FROM {_JSON_ROWS} WHERE {where}{condition}"  # noqa: S608
        for start in range(0, len(plain), JSON_CHUNK):  # the keys are distinct: chunks in any order
            chunk = plain[start:start + JSON_CHUNK]
            rows_json = _json_rows(list(zip(*chunk, strict=True)))
            if rows_json is not None:
                await _run(session, by_json, [rows_json])
            else:
                await _run(session, by_row, chunk, many=True)


GROUPED_MIN_ROWS = 8
"""A group of fewer rows than this sharing their values (and every batch smaller than this) goes with the
rows of their own values."""


_Groups = list[tuple[tuple[Any, ...], list[Any]]]


def _grouped(rows: Sequence[tuple[Any, ...]], *, sets: int) -> tuple[_Groups, list[Any]]:
    """``rows`` (the ``sets`` values set, then the keys) split into groups sharing every value but the last
    key's, each with its rows' last key values, and the rows left over (groups under ``GROUPED_MIN_ROWS``).
    Everything is left over if a key repeats (two updates of one row: their order must hold, and a statement
    per group would not keep it) or a last key value is not a plain JSON one (:func:`_json_key`)."""
    columns = list(zip(*rows, strict=True))
    if not _keys_distinct(rows, sets, columns):
        return [], list(rows)
    if not _json_keys(columns[-1]):
        return [], list(rows)
    groups: dict[tuple[Any, ...], tuple[tuple[Any, ...], list[Any]]] = {}
    if all(_one_type(column) for column in columns[:-1]):
        # Each column of one type (or None): equal values are equal SQL values, the rows' own tuples group them.
        for row in rows:
            shared = row[:-1]
            found = groups.get(shared)
            if found is None:
                groups[shared] = (shared, [row[-1]])
            else:
                found[1].append(row[-1])
    else:
        for row in rows:
            # Grouped by type and value: 1, 1.0 and True are equal in Python, not as SQL values.
            shared = row[:-1]
            groups.setdefault(tuple((type(value), value) for value in shared), (shared, []))[1].append(row[-1])
    grouped = [(shared, last) for shared, last in groups.values() if len(last) >= GROUPED_MIN_ROWS]
    left = [(*shared, value) for shared, last in groups.values() if len(last) < GROUPED_MIN_ROWS for value in last]
    return grouped, left


def _one_type(values: Sequence[Any]) -> bool:
    """Whether ``values`` are all of one type, None apart: then two that Python holds equal are one value to
    group by (1 and True, 1 and 1.0 never meet; -0.0 and 0.0 would, as they did before this check: SQLite, the
    one dialect grouping them, stores them alike in a column of REAL, NUMERIC or INTEGER affinity)."""
    return len(set(map(type, values)) - {type(None)}) <= 1


def _keys_distinct(
    rows: Sequence[tuple[Any, ...]], sets: int, columns: Sequence[Sequence[Any]] | None = None
) -> bool:
    """Whether no two of ``rows`` (the ``sets`` values set, then the keys) name one row (:func:`_key_text`);
    ``columns``: the rows already transposed, if the caller has them."""
    key_columns = list(columns if columns is not None else zip(*rows, strict=True))[sets:]
    if all(set(map(type, column)) in ({str}, {int}) for column in key_columns):
        # Strings alone or integers alone in each key column: equal in Python as in SQLite.
        keys = key_columns[0] if len(key_columns) == 1 else list(zip(*key_columns, strict=True))
        return len(set(keys)) == len(rows)
    return len({tuple(_key_text(value) for value in row[sets:]) for row in rows}) == len(rows)


def _key_text(value: Any) -> str:
    """A key as SQLite may compare it: True, 1 and 1.0 are one key in an integer column, 1 and "1" in a text one
    (taking more keys for one only sends the rows one by one, in order)."""
    if type(value) is bool or (type(value) is float and value.is_integer()):
        return str(int(value))
    return str(value)


def _json_keys(values: Sequence[Any]) -> bool:
    """Whether every one of ``values`` goes through JSON unchanged (:func:`_json_key`), strings checked as one."""
    types = set(map(type, values))
    if types == {str}:
        joined = "".join(values)  # a lone surrogate stays one when joined: one check for all
        return "\0" not in joined and is_unicode(joined)
    return all(_json_key(value) for value in values)


def _json_key(value: Any) -> bool:
    """Whether ``value`` goes through JSON to SQLite unchanged: a 64-bit integer, or a valid Unicode string
    without NUL (SQLite's JSON functions end a string at an escaped NUL)."""
    if type(value) is int:
        return -(2**63) <= value < 2**63
    return type(value) is str and "\0" not in value and is_unicode(value)


def _names(table: Table, columns: Sequence[str]) -> list[str]:
    return [table.c[name].name for name in columns]  # only the table's own names go into the text


def _unnest(dialect: Dialect, table: Table, names: Sequence[str]) -> str:
    casts = [f"${n}::{_cast_type(dialect, table, name)}[]" for n, name in enumerate(names, start=1)]
    return f"unnest({', '.join(casts)})"


def _cast_type(dialect: Dialect, table: Table, name: str) -> str:
    """The SQL type a bulk parameter is cast to: the column's, but a string without its length. An explicit
    cast to ``VARCHAR(n)`` cuts a longer value silently; cast to ``VARCHAR``, the value too long for its column
    fails the insert as any other statement's would."""
    column_type = table.c[name].type
    if isinstance(column_type, String) and column_type.length is not None:
        unbounded = copy.copy(column_type)
        unbounded.length = None
        return unbounded.compile(dialect=dialect)
    return column_type.compile(dialect=dialect)


def _plain_columns(
    dialect: Dialect, table: Table, names: Sequence[str], rows: Sequence[Sequence[Any]]
) -> list[Sequence[Any]]:
    """The values of ``rows`` column by column, each column through its type's bind processing once per
    distinct value (the rows of a fan-out share a few timestamps and names). Column by column: a column
    without processing is copied as it is (a C loop), not passed value by value through a Python call."""
    columns = [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in names]
    return [_processed(dialect, table, name, column) for name, column in zip(names, columns, strict=True)]


def _processed(dialect: Dialect, table: Table, name: str, column: Sequence[Any]) -> Sequence[Any]:
    """``column`` as the driver takes it: through the column type's bind processing once per distinct value,
    or as it is when the type has none."""
    processor = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
    if processor is None:
        return column
    seen = {value: None if value is None else processor(value) for value in set(column)}
    return [seen[value] for value in column]


def _plain_rows(dialect: Dialect, table: Table, names: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[Any]:
    return list(zip(*_plain_columns(dialect, table, names, rows), strict=True))


async def _run(session: AsyncSession, sql: str, parameters: Any, *, many: bool = False) -> None:
    connection = await session.connection()
    await connection.exec_driver_sql(sql, list(parameters) if many else tuple(parameters))


async def upsert(
    session: AsyncSession, table: Table, rows: Sequence[Mapping[str, Any]], *, key: Sequence[str],
    update: bool = True, merge: Callable[[Any], Mapping[str, Any]] | None = None,
) -> None:
    """Insert ``rows`` or, where ``key`` already exists, update them (``update=False``: leave those alone),
    in one statement (SQLite and PostgreSQL). The one insert-or-update of every service.

    ``merge``: how an existing row is updated, given the proposed row (``excluded``): column name to SQL
    expression (default: every other column takes the proposed value)."""
    if not rows:
        return
    insert = sqlite_insert if session.get_bind().dialect.name == "sqlite" else postgresql_insert
    statement = insert(table)
    if merge is not None:
        resolved = statement.on_conflict_do_update(index_elements=list(key), set_=dict(merge(statement.excluded)))
    elif update:
        updates = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in key}
        resolved = statement.on_conflict_do_update(index_elements=list(key), set_=updates)
    else:
        resolved = statement.on_conflict_do_nothing(index_elements=list(key))
    # One statement, many parameter sets: compiled once and cached, whatever the number of rows.
    await session.execute(resolved, list(rows))
