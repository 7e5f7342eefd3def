"""Failover of the procedure service: the leader SIGKILLed N times, how long until the standby decides.

Starts two procedure-service processes (``luccs-fallback procedure``) on one PostgreSQL database of its
own and the broker, with the default ``procedure.failover_s``. Then ``--kills`` times: find the leader,
SIGKILL it and at the same moment publish an availability change that calls for a decision (ADA B2G down
when nothing is open, back up when a procedure is open); measure until the other instance says it leads
(``GET /api/v1/status``) and until the decision's procedure event is on the topic; restart the killed
process and wait until it stands by. Prints each kill and p50/max of both times; and checks that every
decision was published exactly once.

    python -m bench.failover_bench --bootstrap 127.0.0.1:9092 \\
        --postgres postgresql://postgres@127.0.0.1:5432/postgres [--kills 10]

Every wait is bounded (``--timeout``); nothing here fails on a number.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from sqlalchemy.engine import make_url

from bench import checkout_env, luccs_fallback
from shared.config import KafkaSettings
from shared.events import AvailabilityData, CloudEvent, Component, ComponentState, EventType, ProcedureData, parse_event
from shared.kafka import Publisher, ensure_topics
from tests.support import free_port, pg_admin


def _seen(component: Component, state: ComponentState) -> CloudEvent[AvailabilityData]:
    now = datetime.now(UTC)
    return CloudEvent[AvailabilityData](
        source="/bench", type=EventType.AVAILABILITY_CHANGED, subject=component.value,
        data=AvailabilityData(target_id=component.value, component=component, detector_instance="bench",
                              state=state, since=now, observed_at=now, probe="http",
                              ok=state == ComponentState.UP, reason="bench"),
    )


class Instance:
    def __init__(self, name: str, port: int, config: Path, log: Path) -> None:
        self.name, self.port, self.config, self.log = name, port, config, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(luccs_fallback("procedure", "--config", str(self.config)), stdout=out,
                                            stderr=subprocess.STDOUT, env=checkout_env())

    async def role(self, client: httpx.AsyncClient) -> str | None:
        try:
            response = await client.get(f"http://127.0.0.1:{self.port}/api/v1/status", timeout=1)
        except httpx.HTTPError:
            return None
        body: dict[str, Any] = response.json() if response.status_code == 200 else {}
        instance = body.get("instance") or {}
        role: str | None = instance.get("role")
        return role


async def _until(check: Any, timeout_s: float, what: str, interval_s: float = 0.02) -> float:
    """Poll the async ``check`` until truthy; return when (monotonic)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return time.monotonic()
        await asyncio.sleep(interval_s)
    raise TimeoutError(f"no {what} within {timeout_s}s")


async def main(args: argparse.Namespace) -> None:
    database = f"luccs_failover_bench_{os.getpid()}"
    await pg_admin(args.postgres, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', f'CREATE DATABASE "{database}"')
    database_url = make_url(args.postgres).set(database=database).render_as_string(hide_password=False)
    kafka = KafkaSettings(bootstrap_servers=args.bootstrap, topic_prefix=f"failover-bench-{uuid.uuid4().hex[:8]}")
    await ensure_topics(kafka)
    publisher = Publisher(kafka, client_id="failover-bench")
    await publisher.start()
    consumer = AIOKafkaConsumer(kafka.procedures_topic, bootstrap_servers=kafka.bootstrap_servers,
                                auto_offset_reset="earliest")
    await consumer.start()
    events: list[tuple[float, CloudEvent[ProcedureData]]] = []

    async def collect() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=50)
            for records in batch.values():
                events.extend((time.monotonic(), parse_event(r.value, ProcedureData)) for r in records if r.value)

    collector = asyncio.create_task(collect())
    instances: list[Instance] = []
    kills: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in ("a", "b"):
            port = free_port()
            config = tmp / f"{name}.toml"
            config.write_text(
                f'data_dir = "{tmp}"\n[logging]\nlevel = "WARNING"\n[kafka]\nbootstrap_servers = "{args.bootstrap}"\n'
                f'topic_prefix = "{kafka.topic_prefix}"\n[procedure]\nport = {port}\n'
                f'database_url = "{database_url}"\nstale_after_s = 3600\nnotifier_url = ""\n', encoding="utf-8")
            instances.append(Instance(name, port, config, tmp / f"{name}.log"))
        try:
            for instance in instances:
                instance.start()
            async with httpx.AsyncClient() as client:
                await publisher.publish(kafka.availability_topic, _seen(Component.NTP, ComponentState.UP), key="ntp")
                await publisher.publish(kafka.availability_topic, _seen(Component.ADA_B2G, ComponentState.UP),
                                        key="ada_b2g")
                print(f"failover: {args.kills} SIGKILLs of the leading procedure instance (failover_s default)",
                      flush=True)
                ada_down = False
                for n in range(args.kills):
                    async def roles() -> dict[str, str | None]:
                        return {i.name: await i.role(client) for i in instances}

                    async def settled() -> bool:
                        found = await roles()
                        return sorted(r or "" for r in found.values()) == ["leader", "standby"]

                    await _until(settled, args.timeout, "one leader and one standby")
                    current = await roles()
                    leader = next(i for i in instances if current[i.name] == "leader")
                    standby = next(i for i in instances if i is not leader)
                    seen = len(events)
                    ada_down = not ada_down
                    assert leader.process is not None
                    killed_at = time.monotonic()
                    os.kill(leader.process.pid, signal.SIGKILL)
                    await publisher.publish(kafka.availability_topic, _seen(
                        Component.ADA_B2G, ComponentState.DOWN if ada_down else ComponentState.UP), key="ada_b2g")

                    async def leads(standby: Instance = standby) -> bool:
                        return await standby.role(client) == "leader"

                    async def decided(seen: int = seen) -> bool:
                        return len(events) > seen

                    led_at = await _until(leads, args.timeout, "standby leading")
                    await _until(decided, args.timeout, "the decision on the topic")
                    decided_at = events[seen][0]
                    kills.append((led_at - killed_at, decided_at - killed_at))
                    print(f"  kill {n + 1:>2}: {leader.name} killed; {standby.name} leads after "
                          f"{led_at - killed_at:5.2f} s, decision published after {decided_at - killed_at:5.2f} s "
                          f"({events[seen][1].type})", flush=True)
                    leader.process.wait(timeout=10)
                    leader.start()
                await asyncio.sleep(2)  # room for a duplicate to show up
        finally:
            collector.cancel()
            for instance in instances:
                if instance.process is not None and instance.process.poll() is None:
                    instance.process.terminate()
                    instance.process.wait(timeout=20)
            await consumer.stop()
            await publisher.stop()
            await pg_admin(args.postgres, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    ids = [(e.type, e.data.procedure_id) for _t, e in events]
    print(f"{len(kills)} kills:")
    for name, values in (("kill -> standby leads", [k[0] for k in kills]),
                         ("kill -> decision on the topic", [k[1] for k in kills])):
        print(f"  {name:<32} p50 {statistics.median(values):5.2f} s  max {max(values):5.2f} s")
    print(f"  procedure events: {len(ids)} for {len(kills)} decisions, duplicates: {len(ids) - len(set(ids))}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=os.environ.get("LUCCS_BENCH_KAFKA", "127.0.0.1:9092"))
    parser.add_argument("--postgres", default=os.environ.get("LUCCS_BENCH_POSTGRES",
                                                             "postgresql://postgres@127.0.0.1:55432/postgres"))
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=60.0)
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
