"""Bulk registry import: 100,000 EOs through ``POST /api/v1/eos:import``, seconds, EOs/s and the service's RSS.

Starts one procedure service (``luccs-fallback procedure``, its own SQLite file in a temporary folder, or
with ``--database URL`` a fresh PostgreSQL database of its own on that server, dropped at the end) on the
broker, writes an NDJSON file of ``--eos`` EOs (half with a webhook and its secret, so sealing is measured
too; every one with an AS4 endpoint), and imports it with ``luccs-fallback eos import`` (keys returned as a
file), timing from the first byte sent to the answer.
Then imports the same file again (every line unchanged) and prints both, with the service's CPU seconds,
its RSS after each (VmRSS) and its peak (VmHWM), and the load average. The registry topic is published by
the leader's outbox during and after the import, outside the timed import: after each run the bench waits
for it (the topic's end offsets) and prints how long that took and the CPU it cost.

    python -m bench.import_bench --bootstrap 127.0.0.1:9092 [--eos 100000] [--database postgresql://...]

Nothing here fails on a number. Goal (issue 14): 100,000 EOs in under 20 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy.engine import make_url

from bench import checkout_env, luccs_fallback
from shared.config import KafkaSettings
from tests.support import free_port, pg_admin

TOKEN = "bench-operator-token"


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (on a loaded machine, steadier than the wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _write_file(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            eo: dict[str, object] = {"eori": f"LU{i:010d}", "name": f"Operator {i}", "language": "fr",
                                     "email": f"ops{i}@eo.example", "as4_endpoint": f"https://as4-{i}.eo.example/msh"}
            if i % 2 == 0:
                eo |= {"webhook_url": f"https://hooks.eo.example/{i}", "webhook_secret": f"bench-secret-{i:012d}"}
            out.write(json.dumps(eo) + "\n")


def _import(script: str, url: str, path: Path, keys: Path) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run([script, "eos", "import", str(path), "--url", url, "--token", TOKEN,
                           "--keys-out", str(keys)], capture_output=True, text=True, check=False, env=checkout_env())
    elapsed = time.monotonic() - started
    summary = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.startswith("created")]
    return elapsed, summary[-1] if summary else f"exit {done.returncode}: {done.stderr[-500:]}"


async def _published(kafka: KafkaSettings, count: int, timeout_s: float) -> bool:
    """Wait (bounded) until the registry topic holds ``count`` messages: the outbox has published the import."""
    metadata = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)  # partitions_for fetches a topic's
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers)
    await metadata.start()
    await consumer.start()
    try:
        partitions = [TopicPartition(kafka.eos_topic, p) for p in await metadata.partitions_for(kafka.eos_topic)]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sum((await consumer.end_offsets(partitions)).values()) >= count:
                return True
            await asyncio.sleep(0.5)
        return False
    finally:
        await consumer.stop()
        await metadata.stop()


@contextlib.contextmanager
def _fresh_database(server_url: str | None) -> Iterator[str | None]:
    """A new, empty PostgreSQL database on the server of ``server_url`` (so "all new" means new), dropped after."""
    if server_url is None:
        yield None
        return
    name = f"luccs_import_bench_{os.getpid()}"
    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    asyncio.run(pg_admin(server_url, drop, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(pg_admin(server_url, drop))


def main(args: argparse.Namespace) -> None:
    script = luccs_fallback()[0]
    with tempfile.TemporaryDirectory() as tmp_name, _fresh_database(args.database) as database_url:
        tmp = Path(tmp_name)
        port = free_port()
        kafka = KafkaSettings(bootstrap_servers=args.bootstrap, topic_prefix=f"bench-import-{uuid.uuid4().hex[:8]}")
        database = f'database_url = "{database_url}"\n' if database_url else ""
        config = tmp / "procedure.toml"
        config.write_text(
            f'data_dir = "{tmp}"\n[logging]\nlevel = "WARNING"\n[api]\noperator_tokens = ["{TOKEN}"]\n'
            f'[kafka]\nbootstrap_servers = "{args.bootstrap}"\ntopic_prefix = "{kafka.topic_prefix}"\n'
            f'[procedure]\nport = {port}\n{database}notifier_url = ""\nimport_chunk_lines = {args.chunk}\n',
            encoding="utf-8")
        data = tmp / "eos.ndjson"
        _write_file(data, args.eos)
        print(f"import: {args.eos:,} EOs, {data.stat().st_size / 1e6:.1f} MB NDJSON, chunks of {args.chunk}, "
              f"{'PostgreSQL' if args.database else 'SQLite'}", flush=True)
        log = tmp / "procedure.log"
        with log.open("wb") as out:
            service = subprocess.Popen([script, "procedure", "--config", str(config)], stdout=out,
                                       stderr=subprocess.STDOUT, env=checkout_env())
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or service.poll() is not None:
                    raise SystemExit(f"the procedure service did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.2)
            print(f"  service started: RSS {_status_kib(service.pid, 'VmRSS') / 1024:.0f} MiB", flush=True)
            for run in ("first (all new)", "again (all unchanged)"):
                cpu = _cpu_s(service.pid)
                elapsed, summary = _import(script, url, data, tmp / "keys.ndjson")
                cpu = _cpu_s(service.pid) - cpu
                rss, peak = (_status_kib(service.pid, f) / 1024 for f in ("VmRSS", "VmHWM"))
                print(f"  {run}: {elapsed:.1f} s, {args.eos / elapsed:,.0f} EOs/s; {summary}; service CPU "
                      f"{cpu:.1f} s; service RSS {rss:.0f} MiB (peak {peak:.0f} MiB); "
                      f"load average {os.getloadavg()[0]:.1f}", flush=True)
                # Untimed: the outbox publishes the registry topic after the answer; the next run starts after it.
                cpu, started = _cpu_s(service.pid), time.monotonic()
                done = asyncio.run(_published(kafka, args.eos, timeout_s=300))
                print(f"    registry topic {'published' if done else 'NOT published'} "
                      f"{time.monotonic() - started:.1f} s "
                      f"after the answer (service CPU {_cpu_s(service.pid) - cpu:.1f} s)", flush=True)
        finally:
            service.terminate()
            try:
                service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.kill()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=os.environ.get("LUCCS_BENCH_KAFKA", "127.0.0.1:9092"))
    parser.add_argument("--eos", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=1000, help="procedure.import_chunk_lines (default 1000)")
    parser.add_argument("--database", help="a PostgreSQL server (postgresql://user@host:port/db): the bench "
                        "creates a database of its own there and drops it at the end (default: SQLite in a "
                        "temporary folder)")
    main(parser.parse_args())


if __name__ == "__main__":
    cli()
