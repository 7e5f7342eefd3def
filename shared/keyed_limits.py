"""At most N holders at once per key (a webhook host), a key kept only while something holds or waits for it: a
national fan-out may reach as many hosts as EOs.

Counted by hand rather than with a semaphore per key inside a generator's context manager: a webhook worker
takes a hold per attempt, thousands a second, and the free case (a slot open, nobody queued) is now a dict
lookup and an increment. A slot freed while others wait goes to the first of them (first come, first served).
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType

__all__ = ["KeyedLimits"]


class _Limit:
    __slots__ = ("held", "limit", "waiters")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.waiters: deque[asyncio.Future[None]] = deque()


class KeyedLimits:
    """``async with limits.hold(key, limit):`` waits while ``limit`` others hold ``key`` (the limit a key's first
    holder gives stays until the key is dropped)."""

    def __init__(self) -> None:
        self._limits: dict[str, _Limit] = {}

    def __len__(self) -> int:
        """The keys in use."""
        return len(self._limits)

    def hold(self, key: str, limit: int) -> _Hold:
        return _Hold(self, key, limit)

    async def _acquire(self, key: str, limit: int) -> _Limit:
        entry = self._limits.get(key)
        if entry is None:
            entry = self._limits[key] = _Limit(limit)
        if entry.held < entry.limit and not entry.waiters:
            entry.held += 1
            return entry
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry.waiters.append(waiter)
        try:
            await waiter  # resolved by a release, which hands its slot over: ``held`` already counts it
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release(key, entry)  # handed a slot as it was cancelled: pass it on
            else:
                if waiter in entry.waiters:  # a release may have passed it over already (cancelled)
                    entry.waiters.remove(waiter)
                self._drop_if_idle(key, entry)
            raise
        return entry

    def _release(self, key: str, entry: _Limit) -> None:
        while entry.waiters:
            waiter = entry.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        entry.held -= 1
        self._drop_if_idle(key, entry)

    def _drop_if_idle(self, key: str, entry: _Limit) -> None:
        if not entry.held and not entry.waiters and self._limits.get(key) is entry:
            del self._limits[key]


class _Hold:
    __slots__ = ("_entry", "_key", "_limit", "_limits")

    def __init__(self, limits: KeyedLimits, key: str, limit: int) -> None:
        self._limits, self._key, self._limit = limits, key, limit
        self._entry: _Limit | None = None

    async def __aenter__(self) -> None:
        self._entry = await self._limits._acquire(self._key, self._limit)

    async def __aexit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        entry, self._entry = self._entry, None
        if entry is not None:
            self._limits._release(self._key, entry)
