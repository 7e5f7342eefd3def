"""Availability events on their way to the broker: at most one pending per target, never more.

A state change is marked at once and published by the publish loop as soon as it can; a heartbeat only
marks a target for re-publication. The event itself is built when it is sent, from the target's status
at that moment, so what reaches the broker is always the latest state (fresh ``observed_at`` included).

When the broker is unreachable, marks accumulate per target, not per change: memory stays bounded by
the number of targets. Successive changes of one target fold into the one its consumers still have to
learn (:func:`~services.detector.domain.coalesce`): up -> down -> up while the broker is away publishes
a heartbeat of ``up`` (nothing changed for the consumers, so no procedure opens for an outage that is
already over), with the superseded changes told in the detail, counted in a metric and logged.

What is still to be published (pending, or sent and not yet acknowledged) is what the detector saves as a
target's unpublished change (:meth:`LatestStates.unpublished`); a saved one is put back with
:meth:`LatestStates.restore` after a restart, and ``on_published`` says when a change has reached the broker, so
that the saved copy is cleared.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import islice

from services.detector.clock import Clock, running_clock, sleep
from services.detector.domain import Transition, coalesce
from shared.events import AvailabilityData, CloudEvent
from shared.retry import Backoff

log = logging.getLogger(__name__)

EventBuilder = Callable[[str, Transition | None, int], CloudEvent[AvailabilityData] | None]
"""(target id, net transition, superseded changes) -> the event to send, or None if the target is gone."""
Send = Callable[[str, CloudEvent[AvailabilityData]], Awaitable[None]]
Published = Callable[[str, Transition | None, int], None]
"""(target id, the transition published or None for a heartbeat, superseded changes it stood for)."""


@dataclass(frozen=True)
class _Mark:
    transition: Transition | None = None
    superseded: int = 0  # changes folded away before publication

    def then(self, later: _Mark) -> _Mark:
        merged = coalesce(self.transition, later.transition)
        folded = self.superseded + later.superseded
        if self.transition is not None and later.transition is not None:
            folded += 1 if merged is not None else 2
        return _Mark(merged, folded)


class LatestStates:
    """The latest state of each target waiting to be published (one pending event per target at most), and the
    loop that publishes them. Not an outbox: nothing here is durable (the write-behind saves the unpublished
    change with the target's state)."""

    def __init__(
        self,
        *,
        build: EventBuilder,
        send: Send,
        batch_size: int = 500,
        retry_initial_s: float = 0.5,
        clock: Clock | None = None,
        retry_max_s: float = 10.0,
        on_failure: Callable[[BaseException], None] | None = None,
        on_superseded: Callable[[int], None] | None = None,
        on_published: Published | None = None,
    ) -> None:
        self._build = build
        self._send = send
        self._batch_size = batch_size
        self._retry_initial_s = retry_initial_s
        self._clock = clock  # None: the running loop's (the retry pauses)
        self._retry_max_s = retry_max_s
        self._on_failure = on_failure
        self._on_superseded = on_superseded
        self._on_published = on_published
        self._pending: dict[str, _Mark] = {}
        self._in_flight: dict[str, _Mark] = {}  # taken by flush, not acknowledged yet
        self._wakeup = asyncio.Event()
        self.last_error: str | None = None
        self.published = 0

    def __len__(self) -> int:
        return len(self._pending)

    def pending(self, target_id: str) -> Transition | None:
        mark = self._pending.get(target_id)
        return mark.transition if mark is not None else None

    def unpublished(self, target_id: str) -> tuple[Transition | None, int]:
        """The change of ``target_id`` its consumers have not been told yet (sent but unacknowledged included),
        and how many changes were folded into it."""
        sent, waiting = self._in_flight.get(target_id), self._pending.get(target_id)
        mark = sent.then(waiting) if sent is not None and waiting is not None else sent or waiting
        return (mark.transition, mark.superseded) if mark is not None else (None, 0)

    def restore(self, target_id: str, transition: Transition | None, superseded: int = 0) -> None:
        """Put back a change saved as unpublished before a restart (it folds with any newer one)."""
        self._put(target_id, _Mark(transition, superseded))

    def changed(self, target_id: str, transition: Transition) -> None:
        """A state change of ``target_id``: publish it at once."""
        self._put(target_id, _Mark(transition))

    def refresh(self, target_id: str) -> None:
        """Re-publish ``target_id``'s current state (heartbeat, degraded flag); a pending change stays."""
        self._put(target_id, _Mark())

    def drop(self, target_id: str) -> None:
        """Forget ``target_id`` (no longer probed)."""
        self._pending.pop(target_id, None)
        self._in_flight.pop(target_id, None)

    def _put(self, target_id: str, mark: _Mark) -> None:
        earlier = self._pending.get(target_id)
        self._pending[target_id] = earlier.then(mark) if earlier is not None else mark
        self._wakeup.set()

    async def flush(self) -> bool:
        """Publish one batch of pending events; return False if the broker refused some (they stay pending)."""
        # islice, not a list of every pending item cut short: 40,000 targets marked at once (a start, a
        # heartbeat round) made each batch copy them all, and the flushes quadratic in the targets.
        taken = list(islice(self._pending.items(), self._batch_size))
        for target_id, _ in taken:
            del self._pending[target_id]
        events: list[tuple[str, _Mark, CloudEvent[AvailabilityData]]] = []
        for target_id, mark in taken:
            event = self._build(target_id, mark.transition, mark.superseded)
            if event is not None:
                events.append((target_id, mark, event))
                self._in_flight[target_id] = mark
        try:
            outcomes = await asyncio.gather(
                *(self._send(tid, event) for tid, _, event in events), return_exceptions=True
            )
        except BaseException:
            for target_id, _, _ in events:
                self._requeue(target_id)  # cancelled (shutdown): still to be published, and saved as such
            raise
        failed: BaseException | None = None
        for (target_id, mark, _), outcome in zip(events, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed = outcome
                self._requeue(target_id)
                continue
            self._in_flight.pop(target_id, None)
            self.published += 1
            if mark.superseded and self._on_superseded is not None:
                self._on_superseded(mark.superseded)
            if self._on_published is not None:
                self._on_published(target_id, mark.transition, mark.superseded)
        if failed is not None:
            if isinstance(failed, asyncio.CancelledError):
                raise failed
            self.last_error = f"{type(failed).__name__}: {failed}"
            if self._on_failure is not None:
                self._on_failure(failed)
            return False
        if events:
            self.last_error = None
        return True

    def _requeue(self, target_id: str) -> None:
        mark = self._in_flight.pop(target_id, None)
        if mark is None:
            return  # dropped meanwhile
        # Marked again while we tried: what was tried comes first, the newer mark after it.
        newer = self._pending.get(target_id)
        self._pending[target_id] = mark.then(newer) if newer is not None else mark

    async def run(self) -> None:
        """Publish pending events until cancelled, retrying with backoff while the broker is unreachable."""
        backoff = Backoff(first_s=self._retry_initial_s, max_s=self._retry_max_s)
        failures = 0
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            if await self.flush():
                failures = 0
                continue
            failures += 1
            delay = backoff.delay_s(failures)
            log.warning("publishing availability failed (%d pending), retrying in %.1fs: %s",
                        len(self._pending), delay, self.last_error)
            await sleep(running_clock(self._clock), delay)


def note_superseded(detail: str | None, superseded: int) -> str | None:
    """The detail of an event that stands for changes that could not be published in time."""
    if not superseded:
        return detail
    note = f"{superseded} state change(s) superseded while the broker was unreachable"
    return f"{detail}; {note}" if detail else note

