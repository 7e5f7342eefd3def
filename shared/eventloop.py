"""The event loop a luccs-fallback process runs on: uvloop (libuv, written in C) when it can be imported, else
asyncio's own.

A detector probing tens of thousands of targets spends much of its CPU in the event loop itself (a fresh
connection, its callbacks and its timers per probe); uvloop does that work for less (``bench/README.md``,
"CPU per probe"). The detector's probe workers run on it, and so does the detector's own process when it runs
alone (``luccs-fallback detector``: the parent of the workers, folding their results into the targets'
states). So do the notifier's webhook workers (``notifier.workers`` > 1) and the notifier's own process when it
runs alone (``luccs-fallback notifier``: claims, lanes, the pipes to the workers and the outcomes' records; 100,000
webhooks about 7 % sooner, its CPU about as much less: ``bench/README.md``, "Fourteenth round"). The procedure
service and ``luccs-fallback all`` stay on asyncio's loop for now.

On uvloop a refused connection's error says "Connection refused" without the address that asyncio's names;
what a service reports must not depend on that: a start-up error names what it could not reach itself
(``shared/db.py``'s ``DatabaseUnreachable``; ``tests/integration/test_cli_startup.py`` runs on both loops).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["loop_factory", "run"]

T = TypeVar("T")


def loop_factory(*, prefer_uvloop: bool = True) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when ``prefer_uvloop`` and it is installed; None (asyncio's default) otherwise."""
    if not prefer_uvloop:
        return None
    try:
        import uvloop
    except ImportError:  # an optional speed-up: asyncio's loop does the same, for more CPU
        return None
    # uvloop resolves names (loop.getaddrinfo, shared/resolver.py) on libuv's thread pool, 4 threads unless
    # told otherwise: as many as asyncio's default executor has, so a cold cache of many hosts resolves as fast.
    os.environ.setdefault("UV_THREADPOOL_SIZE", str(min(32, (os.cpu_count() or 1) + 4)))
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], *, prefer_uvloop: bool = True) -> T:
    """``asyncio.run(main)`` on the loop :func:`loop_factory` picks."""
    with asyncio.Runner(loop_factory=loop_factory(prefer_uvloop=prefer_uvloop)) as runner:
        return runner.run(main)
