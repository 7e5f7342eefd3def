"""Two procedure-service processes on one PostgreSQL database and the real broker: one leads, one stands by.

- The leader is SIGKILLed during an ADA B2G outage, as ADA comes back: the standby takes over and closes
  the procedure within ``procedure.failover_s``; the procedure opened once and closed once.
- The leader is SIGSTOPped until its lease has run out and the standby leads and opens a procedure, then
  SIGCONTed: the zombie neither commits nor publishes anything (the topic and the database show it), and
  stands by.

Both tests share the two processes (module fixture); each finds out who leads when it starts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from services.procedure.models import OutboxRow, ProcedureRow
from shared.config import KafkaSettings
from shared.db import make_engine, session_factory
from shared.events import Component, ComponentState, EventType, ProcedureData, parse_event
from tests.e2e.test_pipeline import _command
from tests.e2e.test_procedure_crash import _procedure_events, _publish, _seen
from tests.support import ChaosReport, free_port, pg_admin, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

FAILOVER_S = 5.0  # the default
ADA, NTP = Component.ADA_B2G, Component.NTP
UP, DOWN = ComponentState.UP, ComponentState.DOWN


@dataclass
class Instance:
    name: str
    port: int
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([*_command(), "procedure", "--config", str(self.config)], stdout=out,
                                            stderr=subprocess.STDOUT)

    def status(self) -> dict[str, Any] | None:
        try:
            response = httpx.get(f"http://127.0.0.1:{self.port}/api/v1/status", timeout=2)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def role(self) -> str | None:
        status = self.status()
        return status["instance"]["role"] if status else None


@dataclass
class Pair:
    kafka: KafkaSettings
    database_url: str
    instances: list[Instance] = field(default_factory=list)

    def leader_and_standby(self, timeout: float = 60) -> tuple[Instance, Instance]:
        """Wait until one instance leads and the other stands by (both answering)."""
        def settled() -> tuple[Instance, Instance] | None:
            roles = {i.name: i.role() for i in self.instances}
            leaders = [i for i in self.instances if roles[i.name] == "leader"]
            standbys = [i for i in self.instances if roles[i.name] == "standby"]
            return (leaders[0], standbys[0]) if len(leaders) == 1 and len(standbys) == 1 else None

        found: tuple[Instance, Instance] = wait_for(settled, timeout=timeout, interval=0.2,
                                                    what="one leader and one standby")
        return found


@pytest.fixture(scope="module")
def pair(kafka_bootstrap: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("failover")
    database = f"luccs_failover_{os.getpid()}"
    asyncio.run(pg_admin(postgres_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                         f'CREATE DATABASE "{database}"'))
    database_url = make_url(postgres_url).set(database=database).render_as_string(hide_password=False)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"failover-{os.getpid()}-{int(time.time())}")
    found = Pair(kafka=kafka, database_url=database_url)
    for name in ("a", "b"):
        port = free_port()
        config = tmp / f"{name}.toml"
        # One data_dir: the instances share the sealing key file, as they must share the key.
        config.write_text(
            f'data_dir = "{tmp}"\n[kafka]\nbootstrap_servers = "{kafka_bootstrap}"\n'
            f'topic_prefix = "{kafka.topic_prefix}"\n'
            f'[procedure]\nport = {port}\ndatabase_url = "{database_url}"\nstale_after_s = 300\n'
            f"failover_s = {FAILOVER_S}\nnotifier_url = \"\"\n",
            encoding="utf-8",
        )
        found.instances.append(Instance(name=name, port=port, config=config, log=tmp / f"{name}.log"))
    for instance in found.instances:
        instance.start()
    try:
        yield found
    finally:
        for instance in found.instances:
            if instance.process is not None:
                if instance.process.poll() is None:
                    os.kill(instance.process.pid, signal.SIGCONT)  # a stopped process ignores SIGTERM until then
                    instance.process.terminate()
                try:
                    instance.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    instance.process.kill()
                    instance.process.wait(timeout=5)
        asyncio.run(pg_admin(postgres_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


async def _rows(database_url: str) -> tuple[list[ProcedureRow], list[OutboxRow]]:
    engine = make_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            procedures = list((await session.scalars(select(ProcedureRow))).all())
            outbox = list((await session.scalars(select(OutboxRow).order_by(OutboxRow.id))).all())
        return procedures, outbox
    finally:
        await engine.dispose()


def _new(pair: Pair, before: list[Any]) -> list[Any]:
    """The procedure events published since ``before`` was read (waiting 2 s for late ones)."""
    seen = {e.id for e in before}
    return [e for e in asyncio.run(_procedure_events(pair.kafka, settle_s=2.0)) if e.id not in seen]


def _wait_event(pair: Pair, kind: EventType, *, after: list[Any], timeout: float = 30) -> Any:
    """The first procedure event of ``kind`` not among ``after`` (bounded)."""
    seen = {e.id for e in after}

    def new() -> Any:
        events = asyncio.run(_procedure_events(pair.kafka, settle_s=0.3, timeout_s=5))
        return next((e for e in events if e.type == kind and e.id not in seen), None)

    return wait_for(new, timeout=timeout, interval=0.2, what=f"a {kind.value} event")


def test_leader_sigkilled_during_an_outage_the_standby_closes_within_the_bound(
    pair: Pair, chaos: ChaosReport
) -> None:
    leader, standby = pair.leader_and_standby()
    for instance, role, flag in ((leader, "leader", 1), (standby, "standby", 0)):  # every instance says who leads
        ready = httpx.get(f"http://127.0.0.1:{instance.port}/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json()["instance"]["role"] == role, ready.text
        assert ready.json()["leader"]["instance_id"] == leader.status()["instance"]["id"]  # type: ignore[index]
        metrics = httpx.get(f"http://127.0.0.1:{instance.port}/metrics", timeout=5).text
        assert f"luccs_procedure_leader {flag}.0" in metrics
    before = asyncio.run(_procedure_events(pair.kafka, settle_s=0.5))
    t0 = datetime.now(UTC)
    asyncio.run(_publish(pair.kafka, _seen("ntp", NTP, UP, t0), _seen("ada", ADA, DOWN, t0)))
    opened = _wait_event(pair, EventType.PROCEDURE_OPENED, after=before)

    assert leader.process is not None
    killed_at = datetime.now(UTC)
    leader.process.send_signal(signal.SIGKILL)
    asyncio.run(_publish(pair.kafka, _seen("ada", ADA, UP, killed_at)))
    closed = _wait_event(pair, EventType.PROCEDURE_CLOSED, after=before, timeout=FAILOVER_S * 6)
    decided_in = (closed.time - killed_at).total_seconds()
    took_over = standby.status()
    leader.process.wait(timeout=10)
    leader.start()  # back as a standby, for the other test

    events = _new(pair, before)
    procedures, _ = asyncio.run(_rows(pair.database_url))
    kinds = [e.type for e in events]
    chaos.add_procedure_notices(
        faults=1, opened=kinds.count(EventType.PROCEDURE_OPENED), closed=kinds.count(EventType.PROCEDURE_CLOSED),
        detail=f"procedure leader SIGKILLed during an ADA B2G outage: the standby decided {decided_in:.2f}s after "
               f"the kill (bound failover_s={FAILOVER_S:g}s)",
    )
    assert took_over is not None and took_over["instance"]["role"] == "leader", took_over
    assert took_over["leader"]["instance_id"] == took_over["instance"]["id"]
    assert kinds == [EventType.PROCEDURE_OPENED, EventType.PROCEDURE_CLOSED]
    assert [p.state for p in procedures if p.id == opened.data.procedure_id] == ["closed"]
    assert decided_in < FAILOVER_S, f"the standby decided {decided_in:.2f}s after the kill"


def test_leader_paused_past_its_lease_commits_and_publishes_nothing_when_it_wakes(
    pair: Pair, chaos: ChaosReport
) -> None:
    zombie, standby = pair.leader_and_standby()
    zombie_epoch = zombie.status()["leader"]["epoch"]  # type: ignore[index]
    before = asyncio.run(_procedure_events(pair.kafka, settle_s=0.5))
    assert zombie.process is not None
    zombie.process.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        # While it sleeps: its lease runs out, the standby leads and decides an outage.
        wait_for(lambda: standby.role() == "leader", timeout=FAILOVER_S * 3, interval=0.1, what="the standby leads")
        took_over_s = time.monotonic() - stopped
        t0 = datetime.now(UTC)
        asyncio.run(_publish(pair.kafka, _seen("ntp", NTP, UP, t0), _seen("ada", ADA, DOWN, t0)))
        opened = _wait_event(pair, EventType.PROCEDURE_OPENED, after=before)
    finally:
        zombie.process.send_signal(signal.SIGCONT)
    paused_s = time.monotonic() - stopped
    # Awake with its in-memory state of before the pause (no procedure, ADA up), its ticks due and the
    # outage's observations to read: it must stand by instead of acting on any of it.
    wait_for(lambda: zombie.role() == "standby", timeout=10, interval=0.1, what="the zombie stands by")
    new_leader = standby.status()
    t1 = datetime.now(UTC)
    asyncio.run(_publish(pair.kafka, _seen("ada", ADA, UP, t1)))
    _wait_event(pair, EventType.PROCEDURE_CLOSED, after=before)

    events = _new(pair, before)
    procedures, outbox = asyncio.run(_rows(pair.database_url))
    zombie_rows = [r for r in outbox if r.epoch == zombie_epoch and r.created_at >= t0]
    published = {parse_event(r.payload, ProcedureData).id for r in outbox
                 if r.payload and r.topic == pair.kafka.procedures_topic}
    unrecorded = [e for e in events if e.id not in published]
    kinds = [e.type for e in events]
    chaos.add(faults=1, messages=len(events), losses=int(EventType.PROCEDURE_OPENED not in kinds)
              + int(EventType.PROCEDURE_CLOSED not in kinds), duplicates=max(0, len(events) - 2) + len(zombie_rows),
              detail=f"procedure leader SIGSTOPped {paused_s:.1f}s (standby led after {took_over_s:.2f}s), then "
                     f"SIGCONTed: {len(zombie_rows)} rows committed and {len(unrecorded)} events published by the "
                     f"zombie; events: {', '.join(str(k) for k in kinds)}")
    assert new_leader is not None and new_leader["leader"]["epoch"] > zombie_epoch
    assert zombie_rows == []
    assert unrecorded == []
    assert all(r.epoch == new_leader["leader"]["epoch"] for r in outbox if r.created_at >= t0), (
        [(r.id, r.epoch) for r in outbox])
    assert kinds == [EventType.PROCEDURE_OPENED, EventType.PROCEDURE_CLOSED]
    assert [p.state for p in procedures if p.id == opened.data.procedure_id] == ["closed"]
    assert sum(p.state in ("open", "proposed") for p in procedures) == 0
    assert took_over_s < FAILOVER_S
    assert "stops leading" in zombie.log.read_text()
