"""A probe worker process (``detector.workers`` > 1) and the pipe protocol it speaks with the detector.

The worker runs the scheduler and the prober for the targets the detector assigned to it, and nothing else:
results go back to the parent, which folds them into the targets' states, decides and publishes (one Kafka
producer, the quorum and suspicion logic in one place). Started as ``python -m services.detector.probe_worker
--max-concurrency N --per-host-limit M``; it exits when its input closes (the parent stopped or died).

Protocol: the framing of :mod:`shared.pipe_channel` (pickled lists of tuples, those of one event-loop turn
in one frame), both ways. Parent to worker: ``("put", target, version)`` (probe it: new or
changed), ``("drop", target_id)``, ``("now", target_id)`` (probe at once), ``("confirming", target_id)``
(its status after its latest result is confirming a change: probe it next at the retry pace; the status
itself stays in the parent). Worker to parent: ``("result",
target_id, version, result)`` and, every half second, ``("stats", scheduled, in_flight, started, completed,
skipped, lags)`` (lags: the scheduler lag samples since the last one, in seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys

from services.detector.domain import ProbeResult
from services.detector.probes import Prober
from services.detector.scheduler import Scheduler
from services.detector.targets import Target
from shared.eventloop import run
from shared.gc_settle import GcSettler
from shared.logging import bind_service, configure_logging
from shared.pipe_channel import Channel, Message, child_channel, handle_frames, reserve_stdout

log = logging.getLogger(__name__)

STATS_EVERY_S = 0.5


class ProbeWorker:
    """The worker's side: a scheduler whose results go to the parent, paced by the parent's statuses."""

    def __init__(self, *, channel: Channel, prober: Prober, max_concurrency: int, per_host_limit: int,
                 settler: GcSettler | None = None) -> None:
        self._channel = channel
        self._settler = settler
        self._versions: dict[str, int] = {}
        self.scheduler = Scheduler(
            probe=prober.probe, on_result=self._result, max_concurrency=max_concurrency,
            per_host_limit=per_host_limit,
        )

    def _result(self, target: Target, result: ProbeResult) -> None:
        self._channel.send(("result", target.id, self._versions.get(target.id, -1), result))
        return None  # paced when the parent's status comes back

    def handle(self, message: Message) -> None:
        kind = message[0]
        if kind == "put":
            target, version = message[1], message[2]
            self._versions[target.id] = version
            self.scheduler.schedule(target)
            if self._settler is not None:
                self._settler.changed()
        elif kind == "drop":
            self._versions.pop(message[1], None)
            self.scheduler.unschedule(message[1])
        elif kind == "now":
            self.scheduler.probe_now(message[1])
        elif kind == "confirming":
            self.scheduler.confirming(message[1])
        else:
            log.error("probe worker: unknown message %r", kind)

    async def report(self) -> None:
        scheduler = self.scheduler
        while True:
            await asyncio.sleep(STATS_EVERY_S)
            lags = list(scheduler.lag_samples)
            scheduler.lag_samples.clear()
            self._channel.send(("stats", len(scheduler), scheduler.in_flight, scheduler.started,
                                scheduler.completed, scheduler.skipped, lags))


async def _serve(max_concurrency: int, per_host_limit: int, out_fd: int) -> None:
    reader, channel = await child_channel(out_fd)
    settler = GcSettler().install()  # the collector's cost kept off its targets (gc_settle.py)
    worker = ProbeWorker(channel=channel, prober=Prober(), max_concurrency=max_concurrency,
                         per_host_limit=per_host_limit, settler=settler)
    loops = [asyncio.create_task(worker.scheduler.run()), asyncio.create_task(worker.report())]
    try:
        await handle_frames(reader, channel, worker.handle)
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        settler.close()
        with contextlib.suppress(Exception):
            channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="luccs-fallback detector probe worker (started by the detector)")
    parser.add_argument("--max-concurrency", type=int, required=True)
    parser.add_argument("--per-host-limit", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    args = parser.parse_args()
    # The protocol gets stdout's pipe to itself; anything printed by a library goes to stderr instead.
    out_fd = reserve_stdout()
    configure_logging(level=args.log_level, log_format=args.log_format, stream=sys.stderr)
    bind_service(f"detector-worker-{os.getpid()}")
    with contextlib.suppress(KeyboardInterrupt):
        run(_serve(args.max_concurrency, args.per_host_limit, out_fd))


if __name__ == "__main__":
    main()
