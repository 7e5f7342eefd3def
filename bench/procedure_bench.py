"""Procedure service benchmark: availability events per second, and transition-to-procedure-event latency.

Runs the procedure service as a process (as a user would) against a real broker:

1. steady: N heartbeat-style events (no state change) for T targets seen by I detector instances are put
   on the availability topic, then the service is started; throughput is measured from the first to the
   last committed offset of its consumer group;
2. storm: while a background producer keeps sending heartbeats at a fixed rate, K transitions of ADA B2G
   (down, up, down, ...) are sent one at a time; latency is from sending a transition to seeing the
   resulting procedure event on the procedures topic.

    python -m bench.procedure_bench --bootstrap 127.0.0.1:9092 [--events 100000] [--transitions 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from bench import checkout_env, luccs_fallback
from shared.config import KafkaSettings
from shared.events import AvailabilityData, CloudEvent, Component, ComponentState, EventType, ProcedureData, parse_event
from shared.kafka import ensure_topics

BASE = datetime.now(UTC)


def _event(target: str, component: Component, instance: str, state: ComponentState, at: datetime) -> bytes:
    return CloudEvent[AvailabilityData](
        source=f"/bench/{instance}", type=EventType.AVAILABILITY_HEARTBEAT, subject=target,
        data=AvailabilityData(target_id=target, component=component, detector_instance=instance, state=state,
                              since=BASE, observed_at=at, probe="http", ok=state == ComponentState.UP,
                              reason="ok" if state == ComponentState.UP else "refused",
                              latency_ms=20.0 + at.microsecond % 1000 / 10),  # as a detector sends (rolled up)
    ).to_bytes()


def _heartbeats(count: int, targets: int, instances: int, base: datetime) -> list[tuple[str, bytes]]:
    """Heartbeats of NTP targets, all up; observed_at grows so each one is news to the service."""
    out = []
    for i in range(count):
        target = f"ntp{i % targets}"
        at = base + timedelta(microseconds=i)
        out.append((target, _event(target, Component.NTP, f"d{i % instances}", ComponentState.UP, at)))
    return out


async def _committed(admin: AIOKafkaAdminClient, group: str) -> int:
    offsets = await admin.list_consumer_group_offsets(group)
    return sum(max(meta.offset, 0) for meta in offsets.values())


def _start_service(
    workdir: Path, settings: KafkaSettings, port: int, database_url: str | None
) -> subprocess.Popen[bytes]:
    db = f'database_url = "{database_url}"\n' if database_url else ""
    config = workdir / "bench.toml"
    config.write_text(
        f'data_dir = "{workdir}"\n[logging]\nlevel = "WARNING"\n'
        f'[kafka]\nbootstrap_servers = "{settings.bootstrap_servers}"\n'
        f'topic_prefix = "{settings.topic_prefix}"\n[procedure]\nport = {port}\nstale_after_s = 3600\n{db}',
        encoding="utf-8",
    )
    log = (workdir / "procedure.log").open("wb")
    return subprocess.Popen(luccs_fallback("procedure", "--config", str(config)), stdout=log, stderr=subprocess.STDOUT,
                            env=checkout_env())


async def _wait_ready(port: int, timeout_s: float = 60) -> None:
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("procedure service did not become ready")


async def steady(settings: KafkaSettings, producer: AIOKafkaProducer, args: argparse.Namespace) -> int:
    print(f"steady: producing {args.events} heartbeats ({args.targets} targets x {args.instances} instances) ...")
    messages = _heartbeats(args.events, args.targets, args.instances, BASE)
    started = time.perf_counter()
    for key, value in messages:
        await producer.send(settings.availability_topic, value=value, key=key.encode())
    await producer.flush()
    print(f"steady: produced in {time.perf_counter() - started:.1f}s")
    return len(messages)


async def measure_consumption(admin: AIOKafkaAdminClient, group: str, total: int, timeout_s: float) -> float:
    first: tuple[float, int] | None = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = await _committed(admin, group)
        now = time.perf_counter()
        if done > 0 and first is None:
            first = (now, done)
        if done >= total and first is not None:
            elapsed = now - first[0]
            return (done - first[1]) / elapsed if elapsed > 0 else float("inf")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"only {await _committed(admin, group)} of {total} events consumed in {timeout_s}s")


async def storm(
    settings: KafkaSettings, producer: AIOKafkaProducer, args: argparse.Namespace
) -> list[tuple[float, float, float, float, float]]:
    """Per transition, ms: total latency, its split (to decision, decision to publication, to the reader),
    and sent to published (the service's own share: consume, decide, commit, relay)."""
    consumer = AIOKafkaConsumer(settings.procedures_topic, bootstrap_servers=settings.bootstrap_servers,
                                auto_offset_reset="latest", fetch_max_wait_ms=5)
    sender = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=0)  # no batching delay
    await sender.start()
    await consumer.start()
    await consumer.seek_to_end()
    stop = asyncio.Event()

    async def background() -> None:
        while not stop.is_set():
            # Dated now, like a live detector's (the service counts a time far ahead as made on arrival).
            batch = _heartbeats(args.storm_rate // 20, args.targets, args.instances, datetime.now(UTC))
            for key, value in batch:
                await producer.send(settings.availability_topic, value=value, key=key.encode())
            await asyncio.sleep(0.05)

    noise = asyncio.create_task(background())
    latencies: list[tuple[float, float, float, float, float]] = []
    # One ADA B2G target seen by one instance: each of its transitions opens or closes scenario 2.
    await sender.send_and_wait(settings.availability_topic, key=b"ada",
                                 value=_event("ada", Component.ADA_B2G, "d-storm", ComponentState.UP,
                                              datetime.now(UTC)))
    try:
        for n in range(args.transitions):
            state = ComponentState.DOWN if n % 2 == 0 else ComponentState.UP
            at = datetime.now(UTC)
            sent = time.time()
            await sender.send_and_wait(settings.availability_topic, key=b"ada",
                                         value=_event("ada", Component.ADA_B2G, "d-storm", state, at))
            expected = EventType.PROCEDURE_OPENED if state == ComponentState.DOWN else EventType.PROCEDURE_CLOSED
            async with asyncio.timeout(30):
                while True:
                    record = await consumer.getone()
                    event = parse_event(record.value, ProcedureData) if record.value else None
                    if event is not None and event.type == expected:
                        break
            received = time.time()
            decided = event.time.timestamp()
            published = record.timestamp / 1000  # the relay's producer stamps it when it sends
            latencies.append(((received - sent) * 1000, (decided - sent) * 1000, (published - decided) * 1000,
                              (received - published) * 1000, (published - sent) * 1000))
    finally:
        stop.set()
        await noise
        await consumer.stop()
        await sender.stop()
    return latencies


async def main(args: argparse.Namespace) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = KafkaSettings(bootstrap_servers=args.bootstrap, topic_prefix=prefix, partitions=args.partitions)
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=5, max_batch_size=256 * 1024)
    admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap)
    await producer.start()
    await admin.start()
    port = 18000 + os.getpid() % 1000
    with tempfile.TemporaryDirectory() as tmp:
        total = await steady(settings, producer, args)
        service = _start_service(Path(tmp), settings, port, args.database_url)
        try:
            await _wait_ready(port)
            rate = await measure_consumption(admin, f"{prefix}.procedure", total, timeout_s=args.timeout)
            print(f"steady: {rate:,.0f} availability events/s through the procedure service "
                  f"(goal >= 10,000/s; {args.database_url or 'SQLite'})")
            samples = await storm(settings, producer, args)
            print(f"storm: {len(samples)} transitions under {args.storm_rate:,}/s heartbeat load (ms):")
            for i, name in enumerate(("total: transition sent -> procedure event read", "  sent -> consumed (decision)",
                                      "  consumed -> published (the goal)", "  published -> read",
                                      "transition sent -> procedure event published")):
                values = [s[i] for s in samples]
                cuts = statistics.quantiles(values, n=100, method="inclusive")
                print(f"  {name:<48} p50 {statistics.median(values):7.1f}  p99 {cuts[98]:7.1f}  max {max(values):7.1f}")
            print("  (goal: p99 under 50 ms from the consumed transition to the published procedure event)")
        finally:
            service.terminate()
            service.wait(timeout=20)
            _report_warnings(Path(tmp) / "procedure.log")
            await producer.stop()
            await admin.close()


def _report_warnings(log: Path) -> None:
    """A benchmark whose service logged warnings measured something else too: say so."""
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
             if '"level": "WARNING"' in line or '"level": "ERROR"' in line]
    if lines:
        print(f"the service logged {len(lines)} warnings or errors, e.g.: {lines[0][:200]}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=os.environ.get("LUCCS_BENCH_KAFKA", "127.0.0.1:9092"))
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--transitions", type=int, default=100)
    parser.add_argument("--storm-rate", type=int, default=2_000, help="heartbeats per second during the storm")
    parser.add_argument("--database-url", default=None, help="default: a SQLite file in a temporary directory")
    parser.add_argument("--timeout", type=float, default=300)
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
