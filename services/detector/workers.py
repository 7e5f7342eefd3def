"""Probing on every core: ``detector.workers`` probe processes sharing the targets (the parent's side).

The detector process keeps everything that decides: the targets' states, the quorum-free per-target state
machine, suspicion, the latest-state buffer and its one Kafka producer, the database. The probes themselves (HTTP, TLS,
XML, signatures: the CPU of a detector) run in ``workers`` child processes (``probe_worker.py``), each with
its own scheduler. Each target has exactly one owner among the live workers, chosen by rendezvous hashing
(:func:`~services.detector.vantage.owners` with k = 1), so that a worker leaving or coming back moves only
its own targets. A worker that dies is restarted (after a pause that grows while it keeps dying); until it
is back, its targets are probed by the others, then they move back to it.

:class:`WorkerPool` has the scheduler's surface (``schedule``, ``unschedule``, ``probe_now``, ``run`` and
its counters), so the detector uses either. The global and per-host concurrency limits are divided among
the workers (a host's targets are spread over all of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
from collections import deque
from dataclasses import dataclass, field

from services.detector.domain import ProbeResult, confirming
from services.detector.metrics import DetectorMetrics
from services.detector.scheduler import ResultFn
from services.detector.targets import Target
from services.detector.vantage import owners
from shared.pipe_channel import Channel, Message, receive, stop_child

log = logging.getLogger(__name__)


@dataclass
class _Worker:
    name: str
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    live: bool = False
    targets: set[str] = field(default_factory=set)
    # Its scheduler's counters as last reported (the parent sums them over the workers).
    scheduled: int = 0
    in_flight: int = 0
    started: int = 0
    completed: int = 0
    skipped: int = 0
    failures: int = 0  # deaths in a row, for the restart pause


@dataclass(slots=True)  # one per target: no __dict__ each
class _Assigned:
    target: Target
    version: int
    owner: _Worker | None = None


class WorkerPool:
    """Runs the probes of the scheduled targets in ``workers`` child processes (see the module docstring)."""

    def __init__(
        self,
        *,
        workers: int,
        on_result: ResultFn,
        max_concurrency: int,
        per_host_limit: int,
        metrics: DetectorMetrics | None = None,
        command: list[str] | None = None,
        log_level: str = "INFO",
        log_format: str = "auto",
        restart_s: float = 0.5,
        lag_samples: int = 20_000,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._on_result = on_result
        self._metrics = metrics
        self._command = command or [
            sys.executable, "-m", "services.detector.probe_worker",
            "--max-concurrency", str(max(1, max_concurrency // workers)),
            "--per-host-limit", str(max(1, per_host_limit // workers)),
            "--log-level", log_level, "--log-format", log_format,
        ]
        self._restart_s = restart_s
        self._workers = [_Worker(f"worker-{i}") for i in range(workers)]
        self._by_name = {w.name: w for w in self._workers}
        self._assigned: dict[str, _Assigned] = {}
        self._versions = itertools.count(1)
        self.lag_samples: deque[float] = deque(maxlen=lag_samples)
        self.restarts = 0
        self._gone_started = self._gone_completed = self._gone_skipped = 0  # counters of workers that died

    # --- the scheduler's surface --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._assigned)

    @property
    def in_flight(self) -> int:
        return sum(w.in_flight for w in self._workers)

    @property
    def started(self) -> int:
        return self._gone_started + sum(w.started for w in self._workers)

    @property
    def completed(self) -> int:
        return self._gone_completed + sum(w.completed for w in self._workers)

    @property
    def skipped(self) -> int:
        return self._gone_skipped + sum(w.skipped for w in self._workers)

    def schedule(self, target: Target) -> None:
        """(Re)schedule ``target`` on its owner; a result of its old version is ignored."""
        entry = self._assigned.get(target.id)
        if entry is None:
            entry = self._assigned[target.id] = _Assigned(target, next(self._versions))
        else:
            entry.target, entry.version = target, next(self._versions)
        self._place(entry)

    def unschedule(self, target_id: str) -> None:
        entry = self._assigned.pop(target_id, None)
        if entry is not None and entry.owner is not None:
            self._release(entry, entry.owner)

    def probe_now(self, target_id: str) -> bool:
        """Ask the target's owner to probe it at once (it skips a target whose probe is running)."""
        entry = self._assigned.get(target_id)
        if entry is None or entry.owner is None or entry.owner.channel is None:
            return False
        entry.owner.channel.send(("now", target_id))
        return True

    # --- ownership ----------------------------------------------------------------------------------

    def owner_of(self, target_id: str) -> str | None:
        """The worker probing ``target_id`` now (None: no worker is live)."""
        entry = self._assigned.get(target_id)
        return entry.owner.name if entry is not None and entry.owner is not None else None

    def pids(self) -> dict[str, int]:
        """The process id of every live worker."""
        return {w.name: w.process.pid for w in self._workers if w.live and w.process is not None}

    def reported(self) -> dict[str, int]:
        """Per live worker, the targets its scheduler said it had at its last report."""
        return {w.name: w.scheduled for w in self._workers if w.live}

    def _owner(self, target_id: str) -> _Worker | None:
        live = [w.name for w in self._workers if w.live]
        return self._by_name[owners(target_id, live, 1)[0]] if live else None

    def _place(self, entry: _Assigned) -> None:
        owner = self._owner(entry.target.id)
        if entry.owner is not None and entry.owner is not owner:
            self._release(entry, entry.owner)
        entry.owner = owner
        if owner is not None and owner.channel is not None:
            owner.targets.add(entry.target.id)
            owner.channel.send(("put", entry.target, entry.version))

    @staticmethod
    def _release(entry: _Assigned, worker: _Worker) -> None:
        worker.targets.discard(entry.target.id)
        if worker.live and worker.channel is not None:
            worker.channel.send(("drop", entry.target.id))

    def _rebalance(self) -> int:
        """Give every target to its owner among the live workers now; return how many moved."""
        moved = 0
        for entry in self._assigned.values():
            if self._owner(entry.target.id) is not entry.owner:
                self._place(entry)
                moved += 1
        return moved

    # --- the processes ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Start the workers and keep them running until cancelled (then stop them)."""
        try:
            await asyncio.gather(*(self._spawn(worker) for worker in self._workers))
            self._rebalance()  # once all are up: no target placed on the first one only to move again
            await asyncio.gather(*(self._keep(worker) for worker in self._workers))
        finally:
            await asyncio.gather(*(self._stop(w) for w in self._workers), return_exceptions=True)

    async def _keep(self, worker: _Worker) -> None:
        while True:
            try:
                await self._serve(worker)  # until the worker's output closes: it died
            except Exception:  # its output cannot be read: killed (in _buried) and restarted as one that died
                log.exception("probe worker %s sent what cannot be read: killing it", worker.name)
            await self._buried(worker)
            worker.failures += 1
            self.restarts += 1
            pause = min(self._restart_s * 2 ** (worker.failures - 1), 10.0)
            log.error("probe worker %s died (exit code %s): its targets are probed by the others; restarting it "
                      "in %.1fs", worker.name, worker.process.returncode if worker.process else None, pause)
            await asyncio.sleep(pause)
            await self._spawn(worker)
            log.info("probe worker %s restarted (pid %s): %d targets moved back to it", worker.name,
                     worker.process.pid if worker.process else None, self._rebalance())

    async def _spawn(self, worker: _Worker) -> None:
        process = await asyncio.create_subprocess_exec(
            *self._command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert process.stdin is not None
        worker.process, worker.channel = process, Channel(process.stdin)
        worker.scheduled = worker.in_flight = worker.started = worker.completed = worker.skipped = 0
        worker.live = True

    async def _serve(self, worker: _Worker) -> None:
        assert worker.process is not None and worker.process.stdout is not None
        reader = worker.process.stdout
        healthy = False
        while (batch := await receive(reader)) is not None:
            for message in batch:
                self._handle(worker, message)
            if not healthy and worker.completed:
                healthy, worker.failures = True, 0  # it works: a later death restarts it quickly again

    async def _buried(self, worker: _Worker) -> None:
        worker.live = False
        self._gone_started += worker.started
        self._gone_completed += worker.completed
        self._gone_skipped += worker.skipped
        worker.scheduled = worker.in_flight = worker.started = worker.completed = worker.skipped = 0
        worker.targets.clear()
        channel, worker.channel = worker.channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                channel.close()
        self._rebalance()
        if worker.process is not None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
            await worker.process.wait()

    async def _stop(self, worker: _Worker) -> None:
        worker.live = False
        process, channel = worker.process, worker.channel
        worker.channel = None
        await stop_child(process, channel, wait_s=5)  # it cancels its probes and exits

    def _handle(self, worker: _Worker, message: Message) -> None:
        kind = message[0]
        if kind == "result":
            self._result(worker, message[1], message[2], message[3])
        elif kind == "stats":
            self._stats(worker, *message[1:])
        else:
            log.error("probe worker %s: unknown message %r", worker.name, kind)

    def _result(self, worker: _Worker, target_id: str, version: int, result: ProbeResult) -> None:
        entry = self._assigned.get(target_id)
        if entry is None or entry.version != version or entry.owner is not worker:
            return  # removed, changed or moved meanwhile
        status = self._on_result(entry.target, result)
        if status is not None and confirming(status) and worker.channel is not None:
            worker.channel.send(("confirming", target_id))  # not the status: pickled, it cost more than a result

    def _stats(self, worker: _Worker, scheduled: int, in_flight: int, started: int, completed: int,
               skipped: int, lags: list[float]) -> None:
        new_skips = skipped - worker.skipped
        worker.scheduled, worker.in_flight = scheduled, in_flight
        worker.started, worker.completed, worker.skipped = started, completed, skipped
        self.lag_samples.extend(lags)
        if self._metrics is not None:
            for lag in lags:
                self._metrics.scheduler_lag.observe(lag)
            self._metrics.in_flight.set(self.in_flight)
            if new_skips > 0:
                self._metrics.skipped.inc(new_skips)

