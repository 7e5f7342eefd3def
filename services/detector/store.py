"""The detector's saved targets in its database, and the loop that writes them behind.

Thousands of targets are probed every few seconds: a write per probe would cost more than the probe. The
detector notes which targets changed (:meth:`~services.detector.service.Detector.take_changes`) and
:class:`WriteBehind` upserts them in one statement about every second, one row per target however many
probes it had meanwhile; a state change or a publication wakes it at once, so that a change not yet
acknowledged by the broker is durable within milliseconds. A crash loses at most the last second of counter
changes, never a decided state change. Forgotten targets (no longer configured or registered) are deleted
in the same transaction. When the database fails, nothing is lost from memory: the targets are marked again
and the next attempt (after a backoff) writes them.

Rows are kept per detector instance. An instance id that is gone for good (a pod of an earlier rollout, with
pod names as ids, on a shared PostgreSQL database) leaves its rows behind: the same loop deletes the rows of
other instances not saved for the retention period (:meth:`TargetStore.sweep`), at start and then hourly.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast, get_args

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.detector.clock import Clock, running_clock, sleep, wait_for_event
from services.detector.domain import ProbeResult, TargetStatus, Transition
from services.detector.models import TargetStateRow
from services.detector.service import Detector, SavedTarget
from services.detector.targets import ProbeKind
from shared.db import upsert
from shared.events import Component, ComponentState
from shared.retry import Backoff

__all__ = ["TargetStore", "WriteBehind"]

log = logging.getLogger(__name__)

_DELETE_CHUNK = 500  # ids per DELETE statement: far below every backend's limit on bound parameters
# Rows per upsert statement: binding their parameters runs on the event loop, so a big batch is cut into
# statements between which probes can start.
_UPSERT_CHUNK = 200
# Rows of other instances deleted per sweep at most: a backlog (many old pods) is cleared over several short
# transactions, one per write-behind interval, rather than in one long one.
_SWEEP_LIMIT = 5000
_PROBE_KINDS = frozenset(get_args(ProbeKind))


class TargetStore:
    """The saved targets of one detector instance.

    Rows of other instances sharing the database are left alone, except by :meth:`sweep` once they have not
    been saved for ``retention``.
    """

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, instance_id: str,
        retention: timedelta = timedelta(days=7),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sessions = sessions
        self._instance_id = instance_id
        self._retention = retention
        self._clock = clock

    async def load(self) -> list[SavedTarget]:
        """Every target this instance saved; rows it cannot read any more are skipped (and logged)."""
        async with self._sessions() as session:
            rows = (await session.scalars(
                select(TargetStateRow).where(TargetStateRow.instance_id == self._instance_id)
            )).all()
        saved: list[SavedTarget] = []
        for row in rows:
            try:
                saved.append(_from_row(row))
            except ValueError as exc:  # a state or component this version does not know
                log.warning("saved target %s is unreadable, starting it afresh: %s", row.target_id, exc)
        return saved

    async def save(self, saved: Sequence[SavedTarget], forgotten: Sequence[str]) -> None:
        """Upsert ``saved`` and delete ``forgotten``, in one transaction."""
        if not saved and not forgotten:
            return
        now = self._clock()
        async with self._sessions() as session, session.begin():
            for start in range(0, len(forgotten), _DELETE_CHUNK):
                await session.execute(delete(TargetStateRow).where(
                    TargetStateRow.instance_id == self._instance_id,
                    TargetStateRow.target_id.in_(forgotten[start : start + _DELETE_CHUNK]),
                ))
            table = cast(Any, TargetStateRow.__table__)
            for start in range(0, len(saved), _UPSERT_CHUNK):
                rows = [self._row(s, now) for s in saved[start : start + _UPSERT_CHUNK]]
                await upsert(session, table, rows, key=["instance_id", "target_id"])

    async def sweep(self, *, limit: int = _SWEEP_LIMIT) -> int:
        """Delete up to ``limit`` rows of other instances not saved for ``retention``; return how many.

        A running detector saves each of its targets at every probe, so such rows belong to instances that
        are gone (or stopped for longer than the retention, which would resume them unconfirmed anyway):
        without this, every rollout with pod names as instance ids would leave a row per target forever.
        """
        cutoff = self._clock() - self._retention
        stale_rows = (
            TargetStateRow.instance_id != self._instance_id,
            TargetStateRow.saved_at < cutoff,
        )
        async with self._sessions() as session, session.begin():
            found = (await session.execute(
                select(TargetStateRow.instance_id, TargetStateRow.target_id).where(*stale_rows).limit(limit)
            )).all()
            by_instance: defaultdict[str, list[str]] = defaultdict(list)
            for instance_id, target_id in found:
                by_instance[instance_id].append(target_id)
            for instance_id, target_ids in by_instance.items():
                for start in range(0, len(target_ids), _DELETE_CHUNK):
                    await session.execute(delete(TargetStateRow).where(
                        *stale_rows,  # again: saved meanwhile (the instance is back), it stays
                        TargetStateRow.instance_id == instance_id,
                        TargetStateRow.target_id.in_(target_ids[start : start + _DELETE_CHUNK]),
                    ))
        return len(found)

    def _row(self, saved: SavedTarget, now: datetime) -> dict[str, Any]:
        status = saved.status
        last = status.last
        assert last is not None, "only probed targets are saved"
        return {
            "instance_id": self._instance_id,
            "target_id": saved.target_id,
            "component": saved.component.value,
            "probe": saved.probe,
            "url": saved.url,
            "state": status.state.value,
            "since": status.since,
            "degraded": status.degraded,
            "consecutive_failures": status.consecutive_failures,
            "consecutive_successes": status.consecutive_successes,
            "consecutive_slow": status.consecutive_slow,
            "consecutive_fast": status.consecutive_fast,
            "last_ok": last.ok,
            "last_reason": last.reason,
            "last_detail": last.detail,
            "last_latency_ms": last.latency_ms,
            "last_checked_at": last.finished_at,
            "last_cert_expires_at": last.cert_expires_at,
            "last_ebms_error": last.ebms_error,
            "cert_warning_days": saved.cert_warning,
            "unpublished_from": saved.unpublished.previous.value if saved.unpublished is not None else None,
            "unpublished_superseded": saved.superseded,
            "unconfirmed": status.unconfirmed,
            "saved_at": now,
        }


def _from_row(row: TargetStateRow) -> SavedTarget:
    """The saved target of ``row``; ``ValueError`` if a closed-set column holds a name this version does not know."""
    state = ComponentState(row.state)
    if row.probe not in _PROBE_KINDS:
        raise ValueError(f"{row.probe!r} is not a probe kind")
    last = ProbeResult(
        ok=row.last_ok, reason=row.last_reason, finished_at=row.last_checked_at, latency_ms=row.last_latency_ms,
        detail=row.last_detail, cert_expires_at=row.last_cert_expires_at, ebms_error=row.last_ebms_error,
    )
    unpublished = None
    if row.unpublished_from is not None:
        # Saved with the transition it stands for: into ``state``, at ``since`` (see TargetStateRow).
        unpublished = Transition(
            previous=ComponentState(row.unpublished_from), current=state, at=row.since or row.last_checked_at
        )
    return SavedTarget(
        target_id=row.target_id,
        component=Component(row.component),
        probe=cast(ProbeKind, row.probe),  # checked above
        url=row.url,
        status=TargetStatus(
            state=state, since=row.since, consecutive_failures=row.consecutive_failures,
            consecutive_successes=row.consecutive_successes, last=last, degraded=row.degraded,
            consecutive_slow=row.consecutive_slow, consecutive_fast=row.consecutive_fast,
            # Kept across restarts: a state resumed unconfirmed and probed once since must not pass for current
            # (and its held change must stay held) after a second restart within the resume window.
            unconfirmed=row.unconfirmed,
        ),
        unpublished=unpublished,
        superseded=row.unpublished_superseded,
        cert_warning=row.cert_warning_days,
    )


class WriteBehind:
    """Saves the detector's changed targets every ``interval_s``, and at once when it sets ``save_now``.

    "At once" is at most every ``min_gap_s``: a lone state change is saved immediately, while a burst of
    them (a hosting provider of hundreds of EO endpoints going down) is saved in a few batches rather than
    in one transaction each. Between saves it sweeps other instances' expired rows (:meth:`TargetStore.sweep`):
    at start, then every ``sweep_every_s``, or at the next interval while a bounded sweep leaves some behind.
    """

    def __init__(
        self,
        *,
        detector: Detector,
        store: TargetStore,
        interval_s: float = 1.0,
        min_gap_s: float = 0.05,
        retry_max_s: float = 30.0,
        sweep_every_s: float = 3600.0,
        on_save: Callable[[float], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._clock = clock  # None: the running loop's
        self._detector = detector
        self._store = store
        self._interval_s = interval_s
        self._min_gap_s = min_gap_s
        self._retry_max_s = retry_max_s
        self._sweep_every_s = sweep_every_s
        self._on_save = on_save
        self._on_failure = on_failure
        self.last_error: str | None = None
        self.saved = 0
        self.swept = 0

    async def flush(self) -> bool:
        """Save what changed since the last flush; return False if the database refused (it stays marked)."""
        saved, forgotten = self._detector.take_changes()
        if not saved and not forgotten:
            return True
        started = time.perf_counter()
        try:
            await self._store.save(saved, forgotten)
        except Exception as exc:
            self._detector.untake(saved, forgotten)
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self._on_failure is not None:
                self._on_failure(exc)
            return False
        except BaseException:
            self._detector.untake(saved, forgotten)  # cancelled mid-write: the final flush writes them
            raise
        self.saved += len(saved)
        self.last_error = None
        if self._on_save is not None:
            self._on_save(time.perf_counter() - started)
        return True

    async def sweep(self) -> float:
        """Sweep other instances' expired rows once; return the seconds until the next sweep is due."""
        try:
            swept = await self._store.sweep()
        except Exception as exc:  # the saves report a broken database; this only waits for its next turn
            log.warning("deleting expired target states of other instances failed: %s: %s", type(exc).__name__, exc)
            return self._sweep_every_s
        self.swept += swept
        if swept:
            log.info("deleted %d expired target states of other detector instances", swept)
        return self._interval_s if swept >= _SWEEP_LIMIT else self._sweep_every_s

    async def run(self) -> None:
        """Flush until cancelled; while the database fails, retry with backoff (urgent saves wait too).

        Sweeps at start and whenever a sweep is due, after the flush (a change to save never waits for one).
        """
        save_now = self._detector.save_now
        clock = running_clock(self._clock)
        backoff = Backoff(first_s=self._interval_s, max_s=self._retry_max_s)
        failures = 0
        last_flush = clock.time() - self._min_gap_s
        next_sweep = clock.time() + await self.sweep()
        while True:
            await wait_for_event(clock, save_now, self._interval_s)
            await sleep(clock, last_flush + self._min_gap_s - clock.time())
            save_now.clear()
            last_flush = clock.time()
            flushed = await self.flush()
            if clock.time() >= next_sweep:
                next_sweep = clock.time() + await self.sweep()
            if flushed:
                failures = 0
                continue
            failures += 1
            delay = backoff.delay_s(failures)
            log.warning("saving target states failed, retrying in %.0fs: %s", delay, self.last_error)
            await sleep(clock, delay)
