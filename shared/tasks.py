"""Background loops of a service, started in its lifespan and cancelled on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class BackgroundTasks:
    """Runs long-lived loops; a loop that dies is logged and reported by :meth:`problem` (for /readyz)."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[Any]] = []
        self.failures: dict[str, str] = {}

    def start(self, coro: Coroutine[Any, Any, Any], *, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._on_done)
        self._tasks.append(task)

    def _on_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.failures[task.get_name()] = f"{type(exc).__name__}: {exc}"
            log.error("background task %s died", task.get_name(), exc_info=exc)

    async def problem(self) -> str | None:
        return "; ".join(f"{name}: {why}" for name, why in self.failures.items()) or None

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
