"""A real 3-broker KRaft cluster (``KAFKA_NODES=3 deploy/kafka/kafka.sh``), topics with 3 replicas and
``min.insync.replicas`` 2: during an ADA B2G outage, with 1,000 EOs registered, the broker leading the
partition of the procedure's events is SIGKILLed mid fan-out. The procedure service (on PostgreSQL) opens
the procedure once and closes it once when ADA comes back, through the other brokers; the notifier (on
PostgreSQL) gets both notices to every EO, a copy sent twice with the same Idempotency-Key.

The failover figures (a new partition leader, the close decided and published after the kill) go into the
chaos report. The killed broker is started again at the end (``kafka.sh start`` starts the missing node).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from sqlalchemy.engine import make_url

from services.notifier.domain import idempotency_key
from shared.config import KafkaSettings
from shared.events import Component, ComponentState, DeliveryChannel, EventType, ProcedureData, parse_event
from shared.signing import IDEMPOTENCY_HEADER
from tests.conftest import KafkaCluster
from tests.e2e.test_pipeline import _command
from tests.e2e.test_procedure_crash import _publish as _publish_availability
from tests.e2e.test_procedure_crash import _seen
from tests.integration.test_notifier_crash import _publish, _ready, _start, eo_events, notifier_config
from tests.support import ChaosReport, WebhookReceiver, free_port, pg_admin, stop_processes, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

EOS = 1000
REPO = Path(__file__).resolve().parents[2]
ADA, NTP = Component.ADA_B2G, Component.NTP
UP, DOWN = ComponentState.UP, ComponentState.DOWN


async def _procedure_records(kafka: KafkaSettings) -> list[tuple[int, Any]]:
    """(partition, event) of everything on the procedures topic now."""
    consumer = AIOKafkaConsumer(kafka.procedures_topic, bootstrap_servers=kafka.bootstrap_servers,
                                auto_offset_reset="earliest")
    await consumer.start()
    found: list[tuple[int, Any]] = []
    try:
        quiet = 0
        while quiet < 3:
            batch = await consumer.getmany(timeout_ms=200)
            records = [r for rs in batch.values() for r in rs if r.value]
            found += [(r.partition, parse_event(r.value, ProcedureData)) for r in records]
            quiet = 0 if records else quiet + 1
    finally:
        await consumer.stop()
    return found


async def _describe(kafka: KafkaSettings) -> tuple[dict[int, tuple[int, list[int], list[int]]], str]:
    """The procedures topic's partitions (leader, replicas, in-sync replicas) and its min.insync.replicas."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, request_timeout_ms=5000)
    await admin.start()
    try:
        [topic] = await admin.describe_topics([kafka.procedures_topic])
        partitions = {p["partition"]: (p["leader"], list(p["replicas"]), list(p["isr"])) for p in topic["partitions"]}
        [configs] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, kafka.procedures_topic)])
        min_isr = next(str(entry[1]) for resource in configs.resources for entry in resource[4]
                       if entry[0] == "min.insync.replicas")
        return partitions, min_isr
    finally:
        await admin.close()


def _broker_pid(cluster: KafkaCluster, node: int) -> int:
    pid = int((cluster.directory / f"node-{node}" / "kafka.pid").read_text())
    assert b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes(), f"pid {pid} is not broker {node}"
    return pid


def _restart_missing_node(cluster: KafkaCluster) -> None:
    ports = [int(node.rsplit(":", 1)[1]) for node in cluster.bootstrap_servers.split(",")]
    voters = (cluster.directory / "node-1" / "server.properties").read_text()
    controller = min(int(v.rsplit(":", 1)[1]) for line in voters.splitlines()
                     if line.startswith("controller.quorum.voters=") for v in line.split("=", 1)[1].split(","))
    env = {**os.environ, "KAFKA_NODES": str(len(ports)), "KAFKA_PORT": str(min(ports)),
           "KAFKA_CONTROLLER_PORT": str(controller), "LUCCS_VAR_DIR": str(cluster.directory.parent)}
    subprocess.run([str(REPO / "deploy" / "kafka" / "kafka.sh"), "start"], env=env, check=True, timeout=120)


def test_broker_leading_the_procedures_dies_mid_outage_the_procedure_opens_once_reaches_all_closes_once(
    kafka_cluster: KafkaCluster, postgres_url: str, tmp_path: Path, topic_prefix: str, chaos: ChaosReport
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_cluster.bootstrap_servers, topic_prefix=topic_prefix,
                          replication_factor=3, min_insync_replicas=2)
    kafka_lines = "replication_factor = 3\nmin_insync_replicas = 2"
    databases = {name: f"luccs_cluster_{name}_{os.getpid()}_{int(time.time())}" for name in ("procedure", "notifier")}
    asyncio.run(pg_admin(postgres_url, *(f'CREATE DATABASE "{d}"' for d in databases.values())))
    urls = {name: make_url(postgres_url).set(database=d).render_as_string(hide_password=False)
            for name, d in databases.items()}
    receiver = WebhookReceiver(delay_s=0.01).start()
    ports = {"procedure": free_port(), "notifier": free_port()}
    procedure_config = tmp_path / "procedure.toml"
    procedure_config.write_text(
        f'data_dir = "{tmp_path}"\n[kafka]\nbootstrap_servers = "{kafka.bootstrap_servers}"\n'
        f'topic_prefix = "{topic_prefix}"\n{kafka_lines}\n'
        f'[procedure]\nport = {ports["procedure"]}\ndatabase_url = "{urls["procedure"]}"\nstale_after_s = 300\n'
        'notifier_url = ""\n',
        encoding="utf-8",
    )
    notifier = notifier_config(tmp_path, kafka_bootstrap=kafka.bootstrap_servers, topic_prefix=topic_prefix,
                               port=ports["notifier"], instance_id="notifier-0", kafka_extra=kafka_lines,
                               extra=f'database_url = "{urls["notifier"]}"\nescalate_after_s = 3600')
    logs = {name: tmp_path / f"{name}.log" for name in ports}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    killed_node: int | None = None
    try:
        asyncio.run(_publish(kafka, kafka.eos_topic, eo_events(receiver, EOS)))  # creates the topics
        partitions, min_isr = asyncio.run(_describe(kafka))
        assert all(len(replicas) == 3 for _, replicas, _ in partitions.values()), partitions
        assert min_isr == "2"
        with logs["procedure"].open("ab") as out:
            processes["procedure"] = subprocess.Popen([*_command(), "procedure", "--config", str(procedure_config)],
                                                      stdout=out, stderr=subprocess.STDOUT)
        processes["notifier"] = _start(notifier, logs["notifier"])
        for name, port in ports.items():
            wait_for(partial(_ready, port), timeout=90, interval=0.2, what=f"the {name} to be ready")

        t0 = datetime.now(UTC)
        asyncio.run(_publish_availability(kafka, _seen("ntp", NTP, UP, t0), _seen("ada", ADA, DOWN, t0)))

        def opened() -> tuple[int, Any] | None:
            return next(((p, e) for p, e in asyncio.run(_procedure_records(kafka))
                         if e.type == EventType.PROCEDURE_OPENED), None)

        partition, opening = wait_for(opened, timeout=60, interval=0.2, what="the procedure to open")
        wait_for(lambda: len(receiver.received) >= 100, timeout=60, interval=0.1, what="the fan-out under way")

        partitions, _ = asyncio.run(_describe(kafka))
        killed_node = partitions[partition][0]
        os.kill(_broker_pid(kafka_cluster, killed_node), signal.SIGKILL)
        killed = time.monotonic()
        at_kill = len(receiver.received)
        asyncio.run(_publish_availability(kafka, _seen("ada", ADA, UP, datetime.now(UTC))))

        def new_leader() -> int | None:
            leader = asyncio.run(_describe(kafka))[0][partition][0]
            return leader if leader not in (killed_node, -1) else None

        wait_for(new_leader, timeout=60, interval=0.1, what="a new leader of the partition")
        leader_s = time.monotonic() - killed

        def closed() -> Any:
            return next((e for _, e in asyncio.run(_procedure_records(kafka)) if e.type == EventType.PROCEDURE_CLOSED),
                        None)

        closing = wait_for(closed, timeout=60, interval=0.2, what="the procedure to close")
        closed_s = time.monotonic() - killed

        def everyone_told() -> bool:
            return all(len({h.path for h in receiver.of_type(kind.value)}) >= EOS
                       for kind in (EventType.PROCEDURE_OPENED, EventType.PROCEDURE_CLOSED))

        wait_for(everyone_told, timeout=120, interval=0.5, what=f"all {EOS} EOs told of the opening and the close")
        reached_s = time.monotonic() - killed
        events = [e for _, e in asyncio.run(_procedure_records(kafka))]
    finally:
        stop_processes(processes, logs)
        receiver.stop()
        asyncio.run(pg_admin(postgres_url, *(f'DROP DATABASE IF EXISTS "{d}" WITH (FORCE)'
                                              for d in databases.values())))
        if killed_node is not None:
            _restart_missing_node(kafka_cluster)

    kinds = Counter(e.type for e in events)
    copies = {kind: Counter(h.path for h in receiver.of_type(kind.value))
              for kind in (EventType.PROCEDURE_OPENED, EventType.PROCEDURE_CLOSED)}
    duplicates = sum(n - 1 for per_eo in copies.values() for n in per_eo.values())
    chaos.add(
        faults=1, messages=len(receiver.received),
        losses=sum(EOS - len(per_eo) for per_eo in copies.values()) + int(kinds[EventType.PROCEDURE_OPENED] == 0)
        + int(kinds[EventType.PROCEDURE_CLOSED] == 0),
        duplicates=duplicates + max(0, kinds[EventType.PROCEDURE_OPENED] - 1)
        + max(0, kinds[EventType.PROCEDURE_CLOSED] - 1),
        detail=f"3-broker cluster (replication 3, min ISR 2): broker {killed_node}, leader of the procedure's "
               f"partition, SIGKILLed during an ADA B2G outage after {at_kill} of {EOS} opening webhooks: new "
               f"partition leader {leader_s:.2f}s after the kill, close published {closed_s:.2f}s after, every "
               f"EO told of both {reached_s:.1f}s after; {kinds[EventType.PROCEDURE_OPENED]} opened + "
               f"{kinds[EventType.PROCEDURE_CLOSED]} closed events",
    )
    assert kinds[EventType.PROCEDURE_OPENED] == 1 and kinds[EventType.PROCEDURE_CLOSED] == 1, kinds
    for kind, event in ((EventType.PROCEDURE_OPENED, opening), (EventType.PROCEDURE_CLOSED, closing)):
        assert len(copies[kind]) == EOS
        for hook in receiver.of_type(kind.value):
            eori = hook.path.rsplit("/", 1)[1]
            assert hook.headers[IDEMPOTENCY_HEADER] == idempotency_key(event.id, eori, DeliveryChannel.WEBHOOK)
