"""At most N holders at once per key (a webhook host), the keys' semaphores dropped as soon as nothing holds or
waits for them: a national fan-out may reach as many hosts as EOs, and a key is kept only while it is in use."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["KeyedLimits"]


class _Limit:
    __slots__ = ("semaphore", "users")

    def __init__(self, limit: int) -> None:
        self.semaphore = asyncio.Semaphore(limit)
        self.users = 0  # holding or waiting


class KeyedLimits:
    """``async with limits.hold(key, limit):`` waits while ``limit`` others hold ``key`` (the limit a key's first
    holder gives stays until the key is dropped)."""

    def __init__(self) -> None:
        self._limits: dict[str, _Limit] = {}

    def __len__(self) -> int:
        """The keys in use."""
        return len(self._limits)

    @contextlib.asynccontextmanager
    async def hold(self, key: str, limit: int) -> AsyncIterator[None]:
        entry = self._limits.get(key)
        if entry is None:
            entry = self._limits[key] = _Limit(limit)
        entry.users += 1
        try:
            async with entry.semaphore:
                yield
        finally:
            entry.users -= 1
            if not entry.users and self._limits.get(key) is entry:
                del self._limits[key]
