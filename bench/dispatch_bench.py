"""The dispatcher's database path in process: claim and record a planned national fan-out, no sending.

After ``Planner.on_procedure`` has planned N webhook deliveries (as ``bench/planning_bench.py`` does), the
dispatcher claims them ``--batch`` at a time (``Dispatcher._claim_batch_of_jobs``, what each refill of a lane
runs) and records each batch as delivered (``Dispatcher._record``, what each batch of outcomes runs), with no
sending and nothing else on the loop. It prints the process's CPU (every thread: the event loop and
aiosqlite's) and the wall clock of each side per delivery: the notifier process's own cost of a delivery
once its POST has moved to the webhook workers (``notifier.workers``), besides the deliveries feed.
``--profile FILE`` writes a cProfile of the claims and records (``python -m pstats FILE``).

    .venv/bin/python -m bench.dispatch_bench --eos 100000
    .venv/bin/python -m bench.dispatch_bench --eos 100000 --database postgresql://postgres@127.0.0.1:56432/DBNAME
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
from typing import Any, cast

from sqlalchemy import func, select

from bench.planning_bench import _profiled, _Statements, registered_notifier
from services.notifier.jobs import Outcome
from services.notifier.models import DeliveryRow
from shared.events import (
    DeliveryStatus,
)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(args: argparse.Namespace) -> dict[str, float]:
    parts, opened = await registered_notifier(args.eos, args.database, prefix="dispatch-bench")
    dispatcher = parts.dispatcher
    try:
        parts.texts.compile_all()
        await parts.planner.on_procedure(opened, cast(Any, None))
        await dispatcher._release_own_claims()  # what run() does first: sets the SQLite writer lock
        statements = _Statements()
        statements.attach(parts.engine.sync_engine)
        claim_cpu = claim_wall = record_cpu = record_wall = 0.0
        done = 0
        dispatcher._claim_batch = args.batch
        with _profiled(args.profile):
            while True:
                cpu, started = _cpu_s(), time.perf_counter()
                jobs, _exhausted = await dispatcher._claim_batch_of_jobs(excluding_lanes=[])
                claim_cpu += _cpu_s() - cpu
                claim_wall += time.perf_counter() - started
                if not jobs:
                    break
                batch = [(job, Outcome.delivered(204), 0.002) for job in jobs]
                cpu, started = _cpu_s(), time.perf_counter()
                await dispatcher._record(batch)
                record_cpu += _cpu_s() - cpu
                record_wall += time.perf_counter() - started
                done += len(jobs)
        async with parts.sessions() as session:
            delivered = await session.scalar(select(func.count()).select_from(DeliveryRow).where(
                DeliveryRow.status == DeliveryStatus.DELIVERED))
        if delivered != args.eos or done != args.eos:
            raise SystemExit(f"claimed {done} and recorded {delivered} deliveries of {args.eos}")
        if args.statements:
            for text, times in sorted(statements.by_text.items(), key=lambda item: -sum(item[1]))[:10]:
                print(f"  {sum(times):6.2f} s  {len(times):4d}x  {text}")
        return {"claim_cpu": claim_cpu, "claim_wall": claim_wall, "record_cpu": record_cpu, "record_wall": record_wall}
    finally:
        await parts.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eos", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2000, help="deliveries per claim (and per recorded batch)")
    parser.add_argument("--database", default="", help="postgresql://... (emptied first); default: SQLite, temporary")
    parser.add_argument("--statements", action="store_true", help="list the statements that took longest")
    parser.add_argument("--profile", default="", help="write a cProfile of the claims and records to this file")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    per = 1e6 / args.eos
    print(f"{args.eos} deliveries, {'PostgreSQL' if args.database else 'SQLite'}, batches of {args.batch}: "
          f"claims {result['claim_wall']:.2f} s ({result['claim_cpu'] * per:.1f} us CPU per delivery), "
          f"records {result['record_wall']:.2f} s ({result['record_cpu'] * per:.1f} us CPU per delivery), "
          f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
