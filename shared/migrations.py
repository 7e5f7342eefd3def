"""One Alembic run at a time in a process.

Alembic keeps the running migration's context in module globals (``alembic.context``, ``alembic.op``).
Two runs interleaved on one event loop, as when ``luccs-fallback all`` starts every service at once, would
use each other's: a service's tables created in another service's database, or a ``KeyError`` mid-run.
Every service's ``upgrade`` takes this lock around its Alembic commands.
"""

from __future__ import annotations

import asyncio
import weakref

__all__ = ["alembic_lock"]

_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def alembic_lock() -> asyncio.Lock:
    """The lock of the running event loop that Alembic commands run under (one per loop: tests run many)."""
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock
