"""One retry policy for the whole system: how long to wait before the next try, and when to give up.

Every place that tries again (a consumer's handler, the wait for the broker at start, a notice that failed
to be delivered) describes its schedule as a :class:`RetryPolicy` instead of writing its own loop and
arithmetic. The policy is pure: it takes the attempt number, the time elapsed and a random source, so a
caller that stores the time of the next try (the notifier's deliveries) uses it as well as one that waits
(:func:`retrying`). The clock, the sleep and the random source are injectable: tests never wait.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Backoff", "RetryPolicy", "retrying"]

T = TypeVar("T")

_RANDOM = random.Random()


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``first_s`` after the first failure, ``factor`` times more after each further one,
    at most ``max_s``. With ``jitter`` ("full jitter") the pause is drawn uniformly from [0, that], so that
    many callers failing together do not all come back at the same instant. ``factor=1``: a constant pause."""

    first_s: float
    max_s: float = float("inf")
    factor: float = 2.0
    jitter: bool = False

    def __post_init__(self) -> None:
        if self.first_s < 0 or self.max_s < 0 or self.factor < 1:
            raise ValueError("a backoff needs first_s >= 0, max_s >= 0 and factor >= 1")

    def ceiling_s(self, failures: int) -> float:
        """The pause after ``failures`` consecutive failures (1: after the first one), before any jitter."""
        try:
            grown = self.first_s * self.factor ** max(0, failures - 1)
        except OverflowError:  # thousands of failures: long past the cap
            return self.max_s
        return min(self.max_s, grown)

    def delay_s(self, failures: int, *, rng: random.Random | None = None) -> float:
        """The pause after ``failures`` consecutive failures, jittered when the backoff says so."""
        ceiling = self.ceiling_s(failures)
        return (rng or _RANDOM).uniform(0.0, ceiling) if self.jitter else ceiling


@dataclass(frozen=True)
class RetryPolicy:
    """A :class:`Backoff` and when to give up: after ``max_attempts`` tries, or once ``max_elapsed_s`` have
    passed since the first began (None: no such limit)."""

    backoff: Backoff
    max_attempts: int | None = None
    max_elapsed_s: float | None = None

    def next_delay_s(self, *, attempt: int, elapsed_s: float = 0.0, rng: random.Random | None = None) -> float | None:
        """After failed attempt number ``attempt`` (1-based), ``elapsed_s`` after the first one began: how long
        to wait before the next one, or None to give up."""
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return None
        if self.max_elapsed_s is not None and elapsed_s >= self.max_elapsed_s:
            return None
        return self.backoff.delay_s(attempt, rng=rng)


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    retry_if: Callable[[Exception], bool] = lambda _exc: True,
    on_failure: Callable[[int, Exception, float | None], None] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> T:
    """Await ``call()`` until it returns, waiting as ``policy`` says after each failure; return its result.

    An exception for which ``retry_if`` is false is raised at once, the one after which the policy gives up
    after ``on_failure``; cancellation is never caught. ``on_failure(attempt, exc, delay_s)`` is called inside
    the ``except`` block of each retried failure (``log.exception`` works there), ``delay_s`` None when giving
    up.
    """
    started = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except Exception as exc:
            if not retry_if(exc):
                raise
            delay = policy.next_delay_s(attempt=attempt, elapsed_s=clock() - started, rng=rng)
            if on_failure is not None:
                on_failure(attempt, exc, delay)
            if delay is None:
                raise
        await sleep(delay)
