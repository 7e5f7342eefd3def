"""A clock for tests of code that takes one (``time()`` and ``call_at()``, as an event loop has): time moves
only when the test advances it, firing each timer at its time, so no test waits on the wall clock."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

_SETTLE_TURNS = 50  # event-loop turns given to the tasks a timer woke (no wall-clock time passes)


class ManualTimer:
    def __init__(self, callback: Callable[[], object]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


async def settle() -> None:
    """Let every task that is ready run until it waits again (on a timer, an event, a lock)."""
    for _ in range(_SETTLE_TURNS):
        await asyncio.sleep(0)


class ManualClock:
    """Monotonic seconds that move by :meth:`advance`; :meth:`sleep` is ``asyncio.sleep`` on this clock."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._timers: list[tuple[float, int, ManualTimer]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> ManualTimer:
        timer = ManualTimer(callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.call_at(self.now + seconds, lambda: None if future.done() else future.set_result(None))
        await future

    async def _fire_next(self, until: float) -> bool:
        """Fire the next timer due by ``until`` (time moves to it); False when there is none."""
        await settle()
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers or self._timers[0][0] > until:
            return False
        when, _, timer = heapq.heappop(self._timers)
        self.now = max(self.now, when)
        timer.callback()
        await settle()
        return True

    async def advance(self, seconds: float) -> None:
        """Move time ``seconds`` forward, firing every timer due meanwhile at its own time."""
        end = self.now + seconds
        while await self._fire_next(end):
            pass
        self.now = max(self.now, end)
        await settle()

    async def advance_until(self, predicate: Callable[[], bool], *, within: float, what: str = "condition") -> float:
        """Advance timer by timer until ``predicate`` holds; fail if it does not within ``within`` seconds.
        Returns the seconds it took."""
        start = self.now
        end = start + within
        await settle()
        while not predicate():
            if not await self._fire_next(end):
                raise AssertionError(f"{what}: not within {within}s of clock time")
        return self.now - start
