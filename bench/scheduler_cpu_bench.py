"""CPU per probe of the detector's scheduler alone: the real :class:`~services.detector.scheduler.Scheduler` over N
targets whose probe is a stand-in (one turn of the event loop, a fixed result), so that what is measured is
the scheduler's own share of a probe (heap, wake-ups, task, limits, lag), not the HTTP exchange.

    .venv/bin/python -m bench.scheduler_cpu_bench                       # 2,000 targets at 1 s: 2,000 probes/s
    .venv/bin/python -m bench.scheduler_cpu_bench --targets 4000 --seconds 10

Pinned to ``--cpu``; prints the probes per second kept and this process's CPU time per probe after a warm-up
of one and a half intervals. Compare runs taken in turn: other work on the machine moves the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime


async def _measure(count: int, interval_s: float, seconds: float) -> None:
    from services.detector.domain import ProbeResult
    from services.detector.scheduler import Scheduler
    from services.detector.targets import Target, from_settings
    from shared.config import DetectorSettings, TargetSettings

    settings = DetectorSettings(instance_id="bench", interval_s=interval_s, timeout_s=2, eo_targets=False)
    targets = [
        from_settings(TargetSettings(id=f"t{i}", component="ntp", probe="http",
                                     url=f"http://127.0.0.1:{9000 + i % 64}/http/{i}"), settings)
        for i in range(count)
    ]
    result = ProbeResult(ok=True, reason="ok", finished_at=datetime.now(UTC), latency_ms=1.0)

    async def probe(_target: Target) -> ProbeResult:
        await asyncio.sleep(0)  # a probe suspends at least once
        return result

    scheduler = Scheduler(probe=probe, on_result=lambda _t, _r: None, max_concurrency=250, per_host_limit=50)
    for target in targets:
        scheduler.schedule(target)
    running = asyncio.create_task(scheduler.run())
    await asyncio.sleep(1.5 * interval_s)
    cpu, wall, done = time.process_time(), time.perf_counter(), scheduler.completed
    await asyncio.sleep(seconds)
    cpu, wall, done = time.process_time() - cpu, time.perf_counter() - wall, scheduler.completed - done
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    print(f"{count} targets every {interval_s:g}s: {done / wall:.0f} probes/s (of {count / interval_s:.0f}), "
          f"{1e6 * cpu / max(done, 1):.1f} us of CPU per probe in the scheduler")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds (after the warm-up)")
    parser.add_argument("--cpu", type=int, default=0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(_measure(args.targets, args.interval, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
