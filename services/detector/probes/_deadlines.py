"""The probes' timeouts, kept by one sweep instead of a timer per probe.

``asyncio.timeout`` around each probe made a context manager, a timer handle and its cancellation per probe
(about 7 us of a probe worker's CPU on uvloop, more on a worker whose probes queue for their slots). Here
a probe's deadline is one small object appended to a queue per timeout value (the deadlines of one queue
come in the order they are due); one timer, armed only while probes are in flight (at the earliest deadline
of a probe still running; earlier when a probe with a shorter timeout starts), sweeps the queues at most once
per ``tick_s``: it forgets the probes that have finished and cancels those past their deadline (at most one
tick late). Cancellation follows ``asyncio.timeout``'s rules: the probe sees ``TimeoutError``
only if no one else cancelled its task meanwhile (``Task.uncancel``).
"""

from __future__ import annotations

import asyncio
from collections import deque

TICK_S = 0.01
"""The shortest time between two sweeps: a probe past its deadline is cancelled at most this much later."""


class Deadline:
    """One probe's deadline (see :meth:`Deadlines.start`)."""

    __slots__ = ("_cancelling", "_expired", "_task", "done", "when")

    def __init__(self, task: asyncio.Task[object], when: float) -> None:
        self._task: asyncio.Task[object] | None = task
        self._cancelling = task.cancelling()
        self._expired = False
        self.when = when
        self.done = False

    def expire(self) -> None:
        if self._task is not None:
            self._expired = True
            self._task.cancel()

    def finish(self) -> bool:
        """The probe is over (call once, whatever its outcome): True if the deadline cancelled it and no other
        cancellation is pending, so that its ``CancelledError`` means a timeout."""
        task, self._task = self._task, None  # a finished probe's task is not kept until the sweep comes
        self.done = True
        return self._expired and task is not None and task.uncancel() <= self._cancelling


class Deadlines:
    """The deadlines of one prober's probes, swept at most once per ``tick_s`` (see the module docstring)."""

    def __init__(self, *, tick_s: float = TICK_S) -> None:
        self._tick_s = tick_s
        self._queues: dict[float, deque[Deadline]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._wake_at = 0.0

    def start(self, timeout_s: float) -> Deadline:
        """The deadline of the running task, ``timeout_s`` from now: the task is cancelled once it has passed,
        unless :meth:`Deadline.finish` was called first."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a prober used on another loop (tests): the old loop's timer is gone
            self._loop, self._timer = loop, None
            self._queues.clear()
        task = asyncio.current_task(loop)
        assert task is not None, "a probe runs in a task"
        deadline = Deadline(task, loop.time() + timeout_s)
        queue = self._queues.get(timeout_s)
        if queue is None:
            queue = self._queues[timeout_s] = deque()
        queue.append(deadline)
        if self._timer is None or deadline.when < self._wake_at:  # earlier: a shorter timeout than the others'
            self._arm(loop, deadline.when)
        return deadline

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._wake_at = when
        self._timer = loop.call_at(when, self._sweep)

    def __len__(self) -> int:
        """Deadlines not yet swept away (finished probes stay until a sweep reaches them)."""
        return sum(len(queue) for queue in self._queues.values())

    def _sweep(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        earliest: float | None = None
        for timeout_s, queue in list(self._queues.items()):
            while queue and (queue[0].done or queue[0].when <= now):
                deadline = queue.popleft()
                if not deadline.done:
                    deadline.expire()
            if queue:
                when = queue[0].when
                earliest = when if earliest is None or when < earliest else earliest
            else:
                del self._queues[timeout_s]
        self._timer = None
        if earliest is not None:
            self._arm(loop, max(earliest, now + self._tick_s))
