"""Leadership of the procedure service: any number of instances on one PostgreSQL database, one leads.

The leader is whoever holds the lease row (:class:`~services.procedure.models.LeaseRow`). Only the leader
consumes observations, decides and publishes; standbys answer reads and run operator and EO commands
through the database. The row's ``epoch`` goes up at every takeover and is the fencing token:

- every decision's transaction starts by reading the row with a share lock (:meth:`Leadership.fence`) and
  goes on only if it still names this instance under the epoch it was elected with; a takeover (an
  ``UPDATE`` of that row) waits until such a transaction has ended, so a decision either commits before
  the takeover, and the new leader reads it, or is refused;
- every operator or EO command's transaction starts by bumping the row's ``changes`` (:meth:`Leadership.
  serialise_command`): commands run on any instance, ordered with decisions and takeovers by that row
  lock, and the leader learns from the counter that the procedures it keeps in memory changed;
- outbox rows carry the epoch they were committed under, and only the instance that holds the lease now
  publishes (the outbox asks :meth:`Leadership.holds` before every send).

Timing, with F = ``procedure.failover_s``: a lease lasts 0.6 F from its last renewal; the leader renews it,
and standbys try to take it, every 0.1 F. A leader killed or cut off is replaced at most 0.7 F after its
last renewal, which leaves 0.3 F to start consuming and decide. The leader counts its lease from *before*
it sent the renewal, on the monotonic clock, which keeps running while the process is stopped (SIGSTOP, a
long pause): a leader that wakes up after its lease ran out knows it before it does anything, and steps
down. The lease's times are the database's (``clock_timestamp()``), so the instances' clocks do not matter.

SQLite has no second instance to fail over to: the database file is held by a lock file, a second
instance refuses to start, and the one instance leads from the start (a new epoch each start).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal

from sqlalchemy import DateTime, and_, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from services.procedure.models import LeaseRow
from shared.db import async_url

log = logging.getLogger(__name__)

LEASE = "procedure"
LEASE_SHARE = 0.6
"""Share of ``failover_s`` a lease lasts from its last renewal."""
ROUND_SHARE = 0.1
"""Share of ``failover_s`` between two renewals (leader) or two attempts to take over (standby)."""


_FOREVER = datetime(9999, 1, 1, tzinfo=UTC)


class NotLeader(Exception):
    """This instance does not lead (any more): it must neither decide nor publish."""


class SecondInstance(RuntimeError):
    """A second procedure service on one SQLite database (unsafe): refused at start."""


@dataclass(frozen=True)
class Leader:
    """Who leads according to the lease row."""

    instance_id: str
    since: datetime
    epoch: int


class Leadership:
    """This instance's part in the leadership: takes, renews and gives up the lease; fences decisions."""

    def __init__(
        self,
        *,
        database_url: str,
        instance_id: str,
        failover_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = async_url(database_url)
        self.single_instance = self._url.get_backend_name() == "sqlite"
        self.instance_id = instance_id
        self.failover_s = failover_s
        self.lease_s = LEASE_SHARE * failover_s
        self.round_s = ROUND_SHARE * failover_s
        self._clock = clock
        self.epoch: int | None = None
        """The epoch this instance leads under; None while it stands by."""
        self.since: datetime | None = None
        self._deadline = -math.inf
        self._changes: int | None = None
        self._lost = asyncio.Event()
        self._engine: AsyncEngine | None = None
        self._lock_file: IO[bytes] | None = None
        self.on_commands: Callable[[], None] = lambda: None
        """Called by the leader when the lease's command counter moved (commands ran, maybe elsewhere)."""

    # --- what the rest of the service asks ------------------------------------------------------------

    def holds(self) -> bool:
        """Whether this instance leads now: elected, and its lease not run out on its own clock."""
        return self.epoch is not None and self._clock() < self._deadline

    @property
    def role(self) -> Literal["leader", "standby"]:
        return "leader" if self.holds() else "standby"

    async def fence(self, session: AsyncSession) -> int:
        """First statement of a decision's transaction: raise :class:`NotLeader` unless this instance still
        leads under its epoch; the share lock keeps a takeover out until the transaction ends. Returns the
        lease's ``changes`` counter (commands run since)."""
        epoch = self.epoch
        if epoch is None or not self.holds():
            self._step_down_soon()
            raise NotLeader(f"instance {self.instance_id} does not lead (its lease ran out)")
        row = (await session.execute(
            select(LeaseRow.holder, LeaseRow.epoch, LeaseRow.changes)
            .where(LeaseRow.name == LEASE)
            .with_for_update(read=True)
        )).one()
        if row.holder != self.instance_id or row.epoch != epoch:
            self._step_down_soon()
            raise NotLeader(f"instance {self.instance_id} was deposed: epoch {epoch} is now {row.epoch} "
                            f"held by {row.holder}")
        return int(row.changes)

    async def serialise_command(self, session: AsyncSession) -> int:
        """First statement of an operator or EO command's transaction, on any instance: lock the lease row
        (ordering the command with decisions and takeovers) and count the command, so that the leader
        reads what it changed. Returns the epoch in force."""
        epoch = await session.scalar(
            update(LeaseRow).where(LeaseRow.name == LEASE).values(changes=LeaseRow.changes + 1)
            .returning(LeaseRow.epoch)
        )
        assert epoch is not None, "the leader_lease row is missing (migration 0004)"
        return int(epoch)

    async def leader(self) -> Leader | None:
        """Who leads according to the database (None: the lease has run out, nobody leads)."""
        now_column = () if self.single_instance else (self._now(),)
        async with self._connect() as connection:
            row = (await connection.execute(
                select(LeaseRow.holder, LeaseRow.since, LeaseRow.epoch, LeaseRow.expires_at, *now_column)
                .where(LeaseRow.name == LEASE)
            )).one()
        now = datetime.now(UTC) if self.single_instance else _aware(row[4])
        if row.holder is None or row.since is None or row.expires_at is None or row.expires_at <= now:
            return None
        return Leader(instance_id=row.holder, since=row.since, epoch=int(row.epoch))

    # --- the loop ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Hold the SQLite file (refusing a second instance); open the lease's own connection pool."""
        if self.single_instance:
            self._lock_file = _lock_sqlite(self._url.database)
            self._engine = create_async_engine(self._url, connect_args={"timeout": 30}, hide_parameters=True)
            return
        # A pool of its own: renewals never wait behind API requests for a connection.
        self._engine = create_async_engine(self._url, pool_size=1, max_overflow=1, pool_pre_ping=True,
                                           hide_parameters=True)

    async def run(
        self, *, on_elected: Callable[[], Awaitable[None]], on_deposed: Callable[[], Awaitable[None]]
    ) -> None:
        """Take the lease when it is free, renew it while leading, step down when it is lost; forever.
        ``on_elected`` starts the leader's work (it may raise: the instance then steps down), ``on_deposed``
        stops it."""
        if self.single_instance:
            await self._acquire(force=True)
            self._deadline = math.inf
            await on_elected()
            await asyncio.Event().wait()
        failures = 0
        while True:
            self._lost.clear()
            if self.epoch is not None and not self.holds():
                await self._step_down(on_deposed, "its lease ran out before it could renew it")
            try:
                async with asyncio.timeout(self.lease_s / 2):
                    elected = await self._acquire() if self.epoch is None else False
                    if self.epoch is not None and not elected:
                        await self._renew()
                failures = 0
            except NotLeader as exc:
                await self._step_down(on_deposed, str(exc))
                elected = False
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                failures += 1
                elected = False
                if failures == 1 or failures % 50 == 0:
                    log.warning("leadership: the lease could not be %s (%s: %s)",
                                "renewed" if self.epoch is not None else "checked", type(exc).__name__, exc)
            if elected:
                log.warning("leadership: instance %s leads from now on (epoch %d)", self.instance_id, self.epoch)
                try:
                    await on_elected()
                except Exception:
                    log.exception("leadership: starting to lead failed; standing by again")
                    await self._step_down(on_deposed, "starting to lead failed", release=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout=self.round_s)

    async def close(self) -> None:
        """Give the lease up (a standby takes over at its next attempt) and release what :meth:`start` took."""
        try:
            if self.epoch is not None and self._engine is not None:
                with contextlib.suppress(SQLAlchemyError, OSError, TimeoutError):
                    async with asyncio.timeout(2):
                        await self._release()
                    log.info("leadership: lease given up by %s", self.instance_id)
            self.epoch = None
        finally:
            if self._engine is not None:
                await self._engine.dispose()
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None

    # --- the lease row ----------------------------------------------------------------------------------

    def _connect(self) -> contextlib.AbstractAsyncContextManager[Any]:
        if self._engine is None:
            raise RuntimeError("Leadership.start() was not called")
        return self._engine.begin()

    def _now(self) -> Any:
        """The database's clock (PostgreSQL), or this process's (SQLite: one process anyway)."""
        if self.single_instance:
            return datetime.now(UTC)
        return func.clock_timestamp(type_=DateTime(timezone=True))

    def _until(self) -> Any:
        if self.single_instance:
            return _FOREVER  # nobody to fail over to: the lease is not renewed, and ends on a clean stop
        return self._now() + timedelta(seconds=self.lease_s)

    async def _acquire(self, *, force: bool = False) -> bool:
        sent_at = self._clock()
        free = or_(LeaseRow.holder.is_(None), LeaseRow.holder == self.instance_id, LeaseRow.expires_at.is_(None),
                   LeaseRow.expires_at < self._now())
        statement = (
            update(LeaseRow)
            .where(and_(LeaseRow.name == LEASE, *(() if force else (free,))))
            .values(holder=self.instance_id, epoch=LeaseRow.epoch + 1, since=self._now(), expires_at=self._until())
            .returning(LeaseRow.epoch, LeaseRow.since, LeaseRow.changes)
        )
        async with self._connect() as connection:
            row = (await connection.execute(statement)).one_or_none()
        if row is None:
            if force:
                raise RuntimeError("the leader_lease row is missing (migration 0004)")
            return False
        self.epoch, self.since, self._changes = int(row.epoch), row.since, int(row.changes)
        self._deadline = sent_at + self.lease_s
        return True

    async def _renew(self) -> None:
        sent_at = self._clock()
        async with self._connect() as connection:
            changes = (await connection.execute(
                update(LeaseRow)
                .where(LeaseRow.name == LEASE, LeaseRow.holder == self.instance_id, LeaseRow.epoch == self.epoch)
                .values(expires_at=self._until())
                .returning(LeaseRow.changes)
            )).scalar_one_or_none()
        if changes is None:
            raise NotLeader(f"instance {self.instance_id} lost the lease of epoch {self.epoch} to another instance")
        self._deadline = sent_at + self.lease_s
        if int(changes) != self._changes:
            self._changes = int(changes)
            self.on_commands()

    async def _release(self) -> None:
        async with self._connect() as connection:
            await connection.execute(
                update(LeaseRow)
                .where(LeaseRow.name == LEASE, LeaseRow.holder == self.instance_id, LeaseRow.epoch == self.epoch)
                .values(expires_at=self._now())
            )

    @property
    def changes(self) -> int | None:
        """The lease's command counter at the last renewal (None: unknown)."""
        return self._changes

    def _step_down_soon(self) -> None:
        """Called where a fence failed: the loop steps down now rather than at its next round."""
        self._deadline = -math.inf
        self._lost.set()

    async def _step_down(self, on_deposed: Callable[[], Awaitable[None]], why: str, *, release: bool = False) -> None:
        epoch = self.epoch
        self._deadline = -math.inf
        log.warning("leadership: instance %s stops leading (epoch %s): %s", self.instance_id, epoch, why)
        try:
            await on_deposed()
        finally:
            if release:
                with contextlib.suppress(SQLAlchemyError, OSError, TimeoutError):
                    async with asyncio.timeout(2):
                        await self._release()
            self.epoch = None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _lock_sqlite(database: str | None) -> IO[bytes] | None:
    """Hold ``<database>.lock``: a second procedure service on this SQLite file would decide twice."""
    if not database or database == ":memory:":
        return None
    path = Path(f"{database}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+b")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SecondInstance(
            f"another procedure service is using the SQLite database {database} (it holds {path}): SQLite "
            "supports one instance; give [procedure] database_url a PostgreSQL database to run several"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n".encode())
    handle.flush()
    return handle
