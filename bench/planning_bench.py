"""Planning a national fan-out in process: ``Planner.on_procedure`` for N registered EOs, no broker, no sending.

Figures that a loaded machine leaves readable: the process's CPU seconds (every thread: the event loop and
aiosqlite's), the statements run and their summed time, and the wall clock until the plan was committed
(one transaction: what the dispatcher can then claim). ``--profile FILE`` writes a
cProfile of the planning (``python -m pstats FILE``).

    python -m bench.planning_bench --eos 100000
    python -m bench.planning_bench --eos 100000 --database postgresql://postgres@127.0.0.1:56432/DBNAME

The database is emptied of the notifier's tables first (give it one of its own); default: a SQLite file in
a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import cProfile
import os
import resource
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry
from sqlalchemy import Table, event, func, select

from bench.notifier_bench import _empty_database
from services.notifier.app import NotifierParts, build_notifier
from services.notifier.migrate import upgrade
from services.notifier.models import DeliveryRow, EoRow, ReachRow
from shared.config import KafkaSettings, NotifierSettings, Settings
from shared.db import insert_plain
from shared.events import CloudEvent, EventType, Language, ProcedureData, ProcedureState, Scenario, Scope


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Statements:
    """Counts the statements an engine runs and sums their time at the driver."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.by_text: dict[str, list[float]] = {}

    def attach(self, sync_engine: Any) -> None:
        @event.listens_for(sync_engine, "before_cursor_execute")
        def _before(_conn: Any, _cursor: Any, _sql: Any, _params: Any, context: Any, _many: Any) -> None:
            context._bench_started = time.perf_counter()

        @event.listens_for(sync_engine, "after_cursor_execute")
        def _after(_conn: Any, _cursor: Any, _sql: Any, _params: Any, context: Any, _many: Any) -> None:
            took = time.perf_counter() - context._bench_started
            self.count += 1
            self.seconds += took
            self.by_text.setdefault(" ".join(str(_sql).split())[:90], []).append(took)


@contextmanager
def _profiled(path: str | None) -> Iterator[None]:
    if not path:
        yield
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        profile.dump_stats(path)


async def registered_notifier(eos: int, database: str, *, prefix: str) -> tuple[NotifierParts, CloudEvent[Any]]:
    """A notifier's parts on a fresh database (``database``, emptied first, or a SQLite file in a temporary
    folder) with ``eos`` EOs registered (webhooks only), and a national ``opened`` event to plan for them. The
    caller closes the parts (``aclose``)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # the bench's SQLite file: gone with the bench
    url = database or f"sqlite:///{tmp / 'notifier.db'}"
    if database:
        await _empty_database(database)
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix="bench"),
        notifier=NotifierSettings(database_url=url, allow_insecure_webhooks=True, allow_private_webhooks=True),
        data_dir=tmp,
    )
    parts = build_notifier(settings, registry=CollectorRegistry())
    try:
        await upgrade(parts.engine)
        languages = list(Language)
        now = datetime.now(UTC)
        rows = [
            (f"LU{i:012d}", f"Bench EO {i}", languages[i % 3], None,
             f"http://127.0.0.1:9/hook/LU{i:012d}", f"secret-{i}", now)
            for i in range(eos)
        ]
        async with parts.sessions.begin() as session:
            await insert_plain(session, cast(Table, EoRow.__table__), rows=rows, columns=(
                "eori", "name", "language", "email", "webhook_url", "webhook_secret", "updated_at"))
    except BaseException:
        await parts.aclose()
        raise
    procedure_id = f"bench-{uuid.uuid4().hex[:8]}"
    opened = CloudEvent[ProcedureData](
        source="/bench", type=EventType.PROCEDURE_OPENED, subject=procedure_id,
        data=ProcedureData(procedure_id=procedure_id, scenario=Scenario.ADA_B2G_UNAVAILABLE, scope=Scope.NATIONAL,
                           state=ProcedureState.OPEN, reason="benchmark", opened_at=now),
    )
    return parts, opened


async def run(args: argparse.Namespace) -> dict[str, float]:
    parts, opened = await registered_notifier(args.eos, args.database, prefix="planning-bench")
    try:
        texts = getattr(parts, "texts", None)
        if texts is not None:  # as the notifier does at startup (code before 8eda0d5 compiled them on first use)
            texts.compile_all()
        statements = _Statements()
        statements.attach(parts.engine.sync_engine)
        planner = parts.planner
        cpu, started = _cpu_s(), time.perf_counter()
        with _profiled(args.profile):
            await planner.on_procedure(opened, cast(Any, None))
        wall, cpu = time.perf_counter() - started, _cpu_s() - cpu
        async with parts.sessions() as session:
            planned = await session.scalar(select(func.count()).select_from(DeliveryRow))
            concerned = await session.scalar(select(func.count()).select_from(ReachRow))
        if planned != args.eos or concerned != args.eos:
            raise SystemExit(f"planned {planned} deliveries and {concerned} reach rows for {args.eos} EOs")
        if args.statements:
            for text, times in sorted(statements.by_text.items(), key=lambda item: -sum(item[1]))[:8]:
                print(f"  {sum(times):6.2f} s  {len(times):3d}x  {text}")
        return {"wall_s": wall, "cpu_s": cpu, "statements": statements.count, "statements_s": statements.seconds}
    finally:
        await parts.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eos", type=int, default=100_000)
    parser.add_argument("--database", default="", help="postgresql://... (emptied first); default: SQLite, temporary")
    parser.add_argument("--profile", default="", help="write a cProfile of the planning to this file")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--statements", action="store_true", help="list the statements that took longest")
    args = parser.parse_args()
    for _ in range(args.repeat):
        result = asyncio.run(run(args))
        load = os.getloadavg()[0]
        print(f"{args.eos} EOs, {'PostgreSQL' if args.database else 'SQLite'}: planned in {result['wall_s']:.2f} s"
              ","
              f" process CPU {result['cpu_s']:.2f} s ({result['cpu_s'] / args.eos * 1e6:.1f} us per EO),"
              f" {result['statements']} statements taking {result['statements_s']:.2f} s, load {load:.1f}")


if __name__ == "__main__":
    main()
