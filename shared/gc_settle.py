"""Keeping a service's long-lived objects out of the garbage collector's full collections (detector, notifier).

A detector holds tens of thousands of targets for hours (the parent: their targets, statuses and owners; a
probe worker: its targets, their schedule slots), while every probe allocates and drops short-lived containers
(a task, coroutines, futures, a result). CPython's collector counts the probes' objects that survive a
young collection towards a full one and then traverses every tracked object, the targets included: at
40,000 targets a full collection took about 0.2 s of a worker's CPU every 2-3 s, and the collector as a
whole about 30 % of each probe worker's CPU and a quarter of the parent's (gc callbacks timing every
collection during ``bench.detector_bench --targets 40000 --workers 2``).

Two measures, both taken by :meth:`GcSettler.install` (the detector's process and each probe worker):

- After targets are put (a start, a registry change), once the puts have been quiet for ``quiet_s`` (at the
  latest ``max_delay_s`` after the first), :meth:`GcSettler.settle` collects everything once and freezes
  what survives (``gc.freeze``): the collector no longer traverses those objects. Frozen objects are still
  freed when their last reference goes (a replaced target, a status superseded by the next result); only
  garbage *cycles* among them wait, for the next settle, which unfreezes and collects everything first.
- A young collection every ``young_threshold`` (50,000) net allocations instead of CPython's 700: the
  probes' objects are nearly all freed by their reference counts within the probe, and a young collection
  traverses whatever is alive at that moment (the probes in flight, and the thousands of probe tasks
  waiting for a slot when the detector falls behind), so at 700 the same live objects were traversed, and
  promoted towards full collections, about fifty times a second. Cyclic garbage waits for up to 50,000
  allocations (a few MiB) before it is freed.

Measured in that bench (the callbacks again, 40,000 targets, a loaded machine): the collector fell from
about 31 % of a worker's CPU (5.6 s of 18 s) to 2.5-4 % (0.4-0.6 s of 16 s), the parent's from 27 % to 4 %; the
freeze alone took a worker's to about 24 % (the waiting probes, not the targets, were most of what a full
collection traversed). Nothing is changed unless a settler is installed: a detector alone in its process and its
probe workers install one; ``luccs-fallback all``, tests and library callers keep the collector's defaults.

The notifier alone in its process (``luccs-fallback notifier``) installs one too and settles once at the end
of its start, before its consumers and dispatcher run (so no fan-out's objects are frozen with it). A national
fan-out makes and drops several objects per delivery (a job, its outcome, the rows and events of its record),
and at CPython's thresholds the collector ran about 2,300 young and 18 full collections in a 50,000-webhook
fan-out (3.5 s of 20 s of CPU); with the settler 330 and 4 (0.6 s), and about a fifth less CPU per webhook
(``bench.notifier_bench``, in turn, on a loaded machine: ``bench/README.md``).
"""

from __future__ import annotations

import asyncio
import gc

__all__ = ["GcSettler"]


class GcSettler:
    """Freezes the surviving objects once the puts of long-lived objects have settled (see the module docstring)."""

    def __init__(self, *, quiet_s: float = 2.0, max_delay_s: float = 10.0, young_threshold: int = 50_000) -> None:
        self._young_threshold = young_threshold
        self._thresholds: tuple[int, int, int] | None = None  # the collector's, while installed
        self._quiet_s = quiet_s
        self._max_delay_s = max_delay_s
        self._first: float | None = None  # the first change not settled yet
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.settled = 0
        """How many times :meth:`settle` ran."""

    def install(self) -> GcSettler:
        """Collect young objects every ``young_threshold`` allocations (the older generations after 20 and 10
        collections of the one below, as CPython counts them) until :meth:`close`; returns the settler."""
        if self._thresholds is None:
            self._thresholds = gc.get_threshold()
            gc.set_threshold(self._young_threshold, 20, 10)
        return self

    def changed(self) -> None:
        """Long-lived objects were added or replaced (cheap: called for each target put)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._last = now
        if self._first is None or loop is not self._loop:
            self._first, self._loop = now, loop
            self._timer = loop.call_at(self._due(), self._check)

    def _due(self) -> float:
        assert self._first is not None
        return min(self._last + self._quiet_s, self._first + self._max_delay_s)

    def _check(self) -> None:
        assert self._loop is not None
        due = self._due()
        if self._loop.time() < due:  # changed meanwhile: wait for the quiet (one timer, moved only here)
            self._timer = self._loop.call_at(due, self._check)
            return
        self._timer, self._first = None, None
        self.settle()

    def settle(self) -> None:
        """Collect every object (the frozen ones too: cycles among them are freed here) and freeze the survivors."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.settled += 1

    def close(self) -> None:
        """Stop settling, give the frozen objects back to the collector and restore its thresholds."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._first = None, None
        gc.unfreeze()
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None
