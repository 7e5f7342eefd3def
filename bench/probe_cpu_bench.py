"""CPU per probe of the prober alone: N probes (half ``http``, half ``as4``) at a fixed concurrency against the
detector bench's loopback responder, without scheduler, states or workers.

    .venv/bin/python -m bench.probe_cpu_bench --probes 20000
    .venv/bin/python -m bench.probe_cpu_bench --probes 5000 --profile     # cProfile's top functions too
    .venv/bin/python -m bench.probe_cpu_bench --loop asyncio              # asyncio's own loop instead of uvloop
    .venv/bin/python -m bench.probe_cpu_bench --responder-loop asyncio    # the responder on asyncio's loop

The prober runs pinned to ``--cpu`` (the responder to ``--server-cpu``, as in ``bench.detector_bench``) and
the figure is this process's CPU time (user + system) per probe, which other work on the machine disturbs
less than a rate does (it still slows caches and frequency: compare runs taken in turn). It also prints the
responder's CPU per probe answered (warm-up included): the responder stands for the EOs' servers.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import subprocess
import sys
import time
from collections import Counter

from bench.detector_bench import cpu_seconds_of
from shared import eventloop

WARM_UP_PROBES = 2000  # one per target, before measuring


async def _probe(count: int, concurrency: int, ports: list[int], profile: bool) -> None:
    from services.detector.probes import Prober
    from services.detector.targets import from_settings
    from shared.config import DetectorSettings, TargetSettings

    settings = DetectorSettings(instance_id="bench", interval_s=10, timeout_s=2, heartbeat_s=15, eo_targets=False)
    targets = []
    for i in range(WARM_UP_PROBES):
        kind = "as4" if i % 2 else "http"
        configured = TargetSettings(
            id=f"{kind}-{i}", component="ada_b2g" if kind == "as4" else "ntp", probe=kind,
            url=f"http://127.0.0.1:{ports[i % len(ports)]}/{kind}/{i}",
        )
        targets.append(from_settings(configured, settings))
    prober = Prober()
    for target in targets:  # warm-up: every target once (the request heads are rendered once per target)
        await prober.probe(target)
    slots = asyncio.Semaphore(concurrency)
    reasons = Counter[str]()

    async def one(i: int) -> None:
        async with slots:
            reasons[(await prober.probe(targets[i % len(targets)])).reason] += 1

    profiler = cProfile.Profile() if profile else None
    cpu, wall = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    await asyncio.gather(*(one(i) for i in range(count)))
    if profiler is not None:
        profiler.disable()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"{count} probes on {loop}'s loop: {1000 * cpu / count:.3f} ms of CPU per probe, "
          f"{count / wall:.0f} probes/s, {dict(reasons)}")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--server-cpu", type=int, default=1 if (os.cpu_count() or 1) > 1 else None)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop",
                        help="the prober's event loop (uvloop, as the services, when installed; or asyncio's own)")
    parser.add_argument("--responder-loop", choices=["uvloop", "asyncio"], default="uvloop",
                        help="the responder's event loop (as bench.detector_bench's)")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions (slows it down)")
    args = parser.parse_args()
    server_cpu = [] if args.server_cpu is None else ["--server-cpu", str(args.server_cpu)]
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.detector_bench", "--serve", "64", *server_cpu,
         "--responder-loop", args.responder_loop],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        ports = json.loads(server.stdout.readline())
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {args.cpu})
        responder_cpu = cpu_seconds_of(server.pid)
        eventloop.run(_probe(args.probes, args.concurrency, ports, args.profile), prefer_uvloop=args.loop == "uvloop")
        answered = args.probes + WARM_UP_PROBES
        responder_cpu = cpu_seconds_of(server.pid) - responder_cpu
        print(f"responder on {args.responder_loop}: {1000 * responder_cpu / answered:.3f} ms of CPU per probe answered "
              f"({answered} probes, warm-up included)")
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
