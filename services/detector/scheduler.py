"""The probe scheduler: one loop over a heap of next-due times, probes run as tasks within limits.

Each target has a phase in its interval (see :func:`~services.detector.domain.phase`), so thousands of
targets are spread evenly instead of firing together. While a target's probes are confirming a change (the
status handed back by ``on_result`` says so, the domain decides when: see
:func:`~services.detector.domain.due_after_probe`), its next probe comes at the retry pace instead; its
regular slot is kept, so it is back on its phase once the streak ends. Each target has one live heap entry;
the retry pace obeys the same limits as every probe.

The loop only pops due entries and starts a task per probe; it never awaits a probe, so a slow or hanging
target delays no other target. The probes themselves wait for a slot of the global concurrency limit and
of their host's limit (a provider hosting many EO endpoints is not hammered), and each is bounded by its
own timeout. A target whose previous probe is still running when it is due again is skipped for that
slot, so in-flight work never exceeds one probe per target. Lag (start minus due) is measured at the
moment a probe really starts. The loop wakes at most once per ``tick_s`` (5 ms): at thousands of probes a
second each wake-up starts every probe due since the last one, instead of a wake-up per probe.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.detector.clock import Clock, running_clock
from services.detector.domain import ProbeResult, TargetStatus, confirming, first_due, next_due, retry_due
from services.detector.metrics import DetectorMetrics
from services.detector.targets import Target

log = logging.getLogger(__name__)

ProbeFn = Callable[[Target], Awaitable[ProbeResult]]
ResultFn = Callable[[Target, ProbeResult], TargetStatus | None]
"""Folds a result in; returns the target's status then (None: not a target any more, nothing to confirm)."""
TICK_S = 0.005
"""The shortest time between two wake-ups of the scheduler's loop (probes falling due meanwhile start together)."""


@dataclass(eq=False, slots=True)  # one per target: no __dict__ each
class _Slot:
    target: Target
    generation: int
    regular_due: float  # the target's next slot on its phase
    entry: int = -1  # sequence number of the one heap entry that counts; the others are stale


class Scheduler:
    """Probes every scheduled target once per interval, at the retry pace while a change is being confirmed
    (see the module docstring)."""

    def __init__(
        self,
        *,
        probe: ProbeFn,
        on_result: ResultFn,
        max_concurrency: int,
        per_host_limit: int,
        metrics: DetectorMetrics | None = None,
        lag_samples: int = 20_000,
        clock: Clock | None = None,
        tick_s: float = TICK_S,
    ) -> None:
        self._clock = clock  # None: the running loop's
        self._tick_s = tick_s
        self._probe = probe
        self._on_result = on_result
        self._metrics = metrics
        self._global = asyncio.Semaphore(max_concurrency)
        self._per_host_limit = per_host_limit
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._host_refs: dict[str, int] = {}
        self._slots: dict[str, _Slot] = {}
        self._heap: list[tuple[float, int, str, int]] = []  # due, sequence, target id, generation
        self._seq = itertools.count()
        self._generations = itertools.count(1)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._waiter: asyncio.Future[None] | None = None
        self._wake_at: float | None = None
        self.lag_samples: deque[float] = deque(maxlen=lag_samples)
        self.started = 0
        self.completed = 0
        self.skipped = 0

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def _now(self) -> float:
        return running_clock(self._clock).time()

    def schedule(self, target: Target) -> None:
        """(Re)schedule ``target``: first probe within one interval; a probe of its old version is ignored."""
        previous = self._slots.get(target.id)
        if previous is not None:
            self._release_host(previous.target.endpoint.host_key)
        self._host_refs[target.endpoint.host_key] = self._host_refs.get(target.endpoint.host_key, 0) + 1
        due = first_due(target_id=target.id, now=self._now(), interval_s=target.interval_s)
        slot = _Slot(target, next(self._generations), regular_due=due)
        self._slots[target.id] = slot
        self._push(slot, due)
        self._compact()

    def _push(self, slot: _Slot, due: float) -> None:
        """Make ``due`` the slot's one next probe time (earlier entries of the slot become stale)."""
        slot.entry = next(self._seq)
        heapq.heappush(self._heap, (due, slot.entry, slot.target.id, slot.generation))
        if self._wake_at is None or due < self._wake_at:
            self._wake()

    def _live(self, target_id: str, generation: int, entry: int) -> _Slot | None:
        slot = self._slots.get(target_id)
        if slot is None or slot.generation != generation or slot.entry != entry:
            return None
        return slot

    def probe_now(self, target_id: str) -> bool:
        """Probe ``target_id`` as soon as the limits allow, its regular slot kept; return whether it was
        scheduled (a target whose probe is already running is not probed twice: that probe's result is fresh)."""
        slot = self._slots.get(target_id)
        if slot is None or target_id in self._running:
            return False
        self._push(slot, self._now())
        return True

    def unschedule(self, target_id: str) -> None:
        """Stop probing ``target_id``; a probe in flight finishes but its result is dropped."""
        slot = self._slots.pop(target_id, None)
        if slot is not None:
            self._release_host(slot.target.endpoint.host_key)
            self._compact()

    def _release_host(self, host: str) -> None:
        refs = self._host_refs.get(host, 0) - 1
        if refs > 0:
            self._host_refs[host] = refs
        else:
            self._host_refs.pop(host, None)
            self._hosts.pop(host, None)  # probes in flight keep their own reference

    def _compact(self) -> None:
        # Replaced and removed targets leave stale heap entries behind; rebuild once they dominate.
        if len(self._heap) > 2 * len(self._slots) + 64:
            live = [e for e in self._heap if self._live(e[2], e[3], e[1]) is not None]
            heapq.heapify(live)
            self._heap = live

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def run(self) -> None:
        """Start probes as they fall due, until cancelled (probes in flight are cancelled with it)."""
        loop = asyncio.get_running_loop()
        clock = running_clock(self._clock)
        try:
            while True:
                now = clock.time()
                self._start_due(now)
                self._waiter = loop.create_future()
                timer = None
                if self._heap:
                    # At most one wake-up per tick: at thousands of probes a second, each wake-up starts the
                    # probes due since the last one instead of one probe each (a lag of at most one tick).
                    self._wake_at = max(self._heap[0][0], now + self._tick_s)
                    timer = clock.call_at(self._wake_at, self._wake)
                else:
                    self._wake_at = None
                try:
                    await self._waiter
                finally:
                    if timer is not None:
                        timer.cancel()
        finally:
            await self._cancel_running()

    def _start_due(self, now: float) -> None:
        heap = self._heap
        create_task = asyncio.get_running_loop().create_task
        while heap and heap[0][0] <= now:
            due, entry, target_id, generation = heapq.heappop(heap)
            slot = self._live(target_id, generation, entry)
            if slot is None:
                continue
            # Whether this was the regular slot or a retry before it, the next regular one stays on the phase.
            if slot.regular_due <= now:
                slot.regular_due = next_due(due=slot.regular_due, now=now, interval_s=slot.target.interval_s)
            self._push(slot, slot.regular_due)
            if target_id in self._running:
                self.skipped += 1
                if self._metrics is not None:
                    self._metrics.skipped.inc()
                continue
            # Unnamed and without a done callback: at thousands of probes a second, a name string and one more
            # callback turn of the loop per probe are a measurable share of a probe's CPU.
            self._running[target_id] = create_task(self._run_probe(slot, due))

    async def _run_probe(self, slot: _Slot, due: float) -> None:
        # At most one task per target id is ever in _running (a due target whose probe runs is skipped), so
        # the task that ends removes its own entry.
        try:
            await self._probe_and_fold(slot, due)
        except Exception:
            log.exception("probe task of %s failed", slot.target.id)
        finally:
            self._running.pop(slot.target.id, None)

    async def _probe_and_fold(self, slot: _Slot, due: float) -> None:
        host_key = slot.target.endpoint.host_key
        host = self._hosts.get(host_key)
        if host is None:
            host = self._hosts[host_key] = asyncio.Semaphore(self._per_host_limit)
        async with host, self._global:
            lag = max(0.0, self._now() - due)
            self.lag_samples.append(lag)
            self.started += 1
            if self._metrics is not None:
                self._metrics.scheduler_lag.observe(lag)
                self._metrics.in_flight.inc()
            try:
                result = await self._probe(slot.target)
            finally:
                if self._metrics is not None:
                    self._metrics.in_flight.dec()
        self.completed += 1
        if self._slots.get(slot.target.id) is not slot:
            return  # unscheduled or replaced meanwhile
        status = self._on_result(slot.target, result)
        if status is not None:
            self._pace(slot, status)

    def confirming(self, target_id: str) -> None:
        """Probe ``target_id`` next at the retry pace: its status after its latest result is confirming a change
        (told here when ``on_result`` could not tell it at once: a probe worker, whose parent decides)."""
        slot = self._slots.get(target_id)
        if slot is not None:
            self._retry(slot)

    def _pace(self, slot: _Slot, status: TargetStatus) -> None:
        if confirming(status):  # else the regular slot stands (due_after_probe)
            self._retry(slot)

    def _retry(self, slot: _Slot) -> None:
        due = retry_due(
            finished=self._now(), regular_due=slot.regular_due, retry_interval_s=slot.target.retry_interval_s
        )
        if due < slot.regular_due:
            self._push(slot, due)

    async def _cancel_running(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
