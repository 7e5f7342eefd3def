"""Live feed of procedure, advisory and status changes for dashboards (server-sent events)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any


class Broadcaster:
    """Fans each change out to every subscriber; a subscriber too slow to keep up is dropped, not waited for."""

    def __init__(self, *, queue_size: int = 1000) -> None:
        self._subscribers: set[asyncio.Queue[tuple[str, str, str | None] | None]] = set()
        self._queue_size = queue_size

    def publish(self, kind: str, payload: dict[str, Any], *, eori: str | None = None) -> None:
        """``eori``: the EO a change concerns (None: national), for subscribers that may not read it."""
        message = (kind, json.dumps(payload, default=str, ensure_ascii=False), eori)
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                # Make room for the end-of-stream marker: the client reconnects and reloads the status.
                self._subscribers.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)

    async def subscribe(
        self, *, visible: Callable[[str | None], bool] = lambda _eori: True, keepalive_s: float = 15.0
    ) -> AsyncIterator[str]:
        """Server-sent-event frames of the changes ``visible`` lets through (given the EORI a change concerns),
        with a comment line every ``keepalive_s`` so proxies keep it open."""
        queue: asyncio.Queue[tuple[str, str, str | None] | None] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        try:
            yield ": connected\n\n"
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), timeout=keepalive_s)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if message is None:
                    yield "event: overflow\ndata: {}\n\n"
                    return
                kind, data, eori = message
                if not visible(eori):
                    continue
                yield f"event: {kind}\ndata: {data}\n\n"
        finally:
            self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
