"""Monotonic time and timers as the detector's loops use them, injectable so that tests advance time by hand.

A :class:`Clock` is what an asyncio event loop already offers (``time()`` and ``call_at()``), so the running
loop is the default everywhere; a test passes its own (``tests/clock.py``) and no test sleeps on the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Clock", "Timer", "running_clock", "sleep", "wait_for_event"]


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic seconds and timers at a given time on them."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer: ...


def running_clock(clock: Clock | None) -> Clock:
    """``clock``, or the running event loop's when None."""
    return clock if clock is not None else asyncio.get_running_loop()


async def sleep(clock: Clock, seconds: float) -> None:
    """``asyncio.sleep`` on ``clock``."""
    if seconds <= 0:
        await asyncio.sleep(0)
        return
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    timer = clock.call_at(clock.time() + seconds, lambda: None if done.done() else done.set_result(None))
    try:
        await done
    finally:
        timer.cancel()


async def wait_for_event(clock: Clock, event: asyncio.Event, within_s: float) -> bool:
    """Wait until ``event`` is set or ``within_s`` seconds of ``clock`` have passed; return whether it is set."""
    if event.is_set():
        return True
    waiter: asyncio.Future[Any] = asyncio.ensure_future(event.wait())
    timed_out: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    timer = clock.call_at(clock.time() + within_s, lambda: None if timed_out.done() else timed_out.set_result(None))
    try:
        await asyncio.wait({waiter, timed_out}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
    return event.is_set()
