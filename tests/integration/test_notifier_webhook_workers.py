"""Webhooks sent by worker processes (``notifier.workers`` = 2) to real loopback receivers: each EO once with a
valid signature and its Idempotency-Key, a child SIGKILLed mid-fan-out, the same outcomes as in-process,
no child left once the notifier stops or is killed."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.notifier.app import NotifierParts
from services.notifier.domain import idempotency_key
from services.notifier.webhook_http import WebhookHttpClient
from services.notifier.webhook_workers import WebhookWorkers
from services.notifier.webhooks import WebhookSender
from shared.config import NotifierSettings
from shared.events import DeliveryChannel
from shared.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify
from tests.integration.test_notifier_delivery import (
    RECORD,
    Receiver,
    attempts_of,
    database_url,  # noqa: F401 (the fixture: SQLite and PostgreSQL)
    deliveries,
    notifier_settings,
    procedure_event,
    register,
    running_notifier,
    settled,
)
from tests.support import WebhookReceiver, eventually, free_port, wait_for

pytestmark = pytest.mark.integration


def pool_of(parts: NotifierParts) -> WebhookWorkers:
    assert parts.webhook_workers is not None
    assert parts.senders[DeliveryChannel.WEBHOOK] is parts.webhook_workers
    return parts.webhook_workers


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_a_fan_out_through_two_workers_reaches_each_eo_once_signed(
    database_url: str, kafka_bootstrap: str, topic_prefix: str  # noqa: F811
) -> None:
    receiver = WebhookReceiver().start()
    settings = notifier_settings(kafka_bootstrap, topic_prefix, database_url, workers=2)
    eoris = [f"LU{i:04d}" for i in range(300)]
    try:
        async with running_notifier(settings, publish=False) as parts:
            pool = pool_of(parts)
            assert len(pool.pids()) == 2
            for eori in eoris:
                await register(parts, eori, receiver.url(f"/hook/{eori}"))
            event = procedure_event()
            await parts.planner.on_procedure(event, RECORD)
            await eventually(lambda: settled(parts), timeout=60, what="300 deliveries settled")
            rows = await deliveries(parts)
            in_process = pool.sent_in_process
    finally:
        receiver.stop()
    assert in_process == 0  # every POST went through a child
    assert [(r.eori, r.status, r.attempts) for r in rows] == [(e, "delivered", 1) for e in eoris]
    assert sorted(w.path for w in receiver.received) == [f"/hook/{e}" for e in eoris]  # once each
    now = int(time.time())
    for hook in receiver.received:
        eori = hook.path.rsplit("/", 1)[1]
        assert verify(f"secret-{eori}", hook.body, hook.headers[SIGNATURE_HEADER], now=now)
        assert hook.headers[IDEMPOTENCY_HEADER] == idempotency_key(event.id, eori, DeliveryChannel.WEBHOOK)
        assert hook.headers["Content-Type"] == "application/cloudevents+json"
        assert hook.event["id"] == event.id


async def test_a_worker_killed_mid_fan_out_loses_nothing_and_is_restarted(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    receiver = WebhookReceiver(delay_s=0.02).start()  # slow enough that the victim has attempts in flight
    settings = notifier_settings(kafka_bootstrap, topic_prefix, f"sqlite:///{tmp_path / 'notifier.db'}", workers=2,
                                 per_host_concurrency=10)
    eoris = [f"LU{i:04d}" for i in range(200)]
    try:
        async with running_notifier(settings, publish=False) as parts:
            pool = pool_of(parts)
            for eori in eoris:
                await register(parts, eori, receiver.url(f"/hook/{eori}"))
            event = procedure_event()
            await parts.planner.on_procedure(event, RECORD)
            await eventually(lambda: len(receiver.received) >= 20 and pool.in_flight().get("webhook-worker-0"),
                             what="a fan-out under way with attempts in flight in worker 0")
            victim = pool.pids()["webhook-worker-0"]
            os.kill(victim, signal.SIGKILL)
            await eventually(lambda: pool.restarts >= 1 and len(pool.pids()) == 2, what="worker 0 restarted")
            assert pool.pids()["webhook-worker-0"] != victim
            await eventually(lambda: settled(parts), timeout=60, what="200 deliveries settled")
            rows = await deliveries(parts)
            errors = [a.error for row in rows for a in await attempts_of(parts, row.id) if a.error]
    finally:
        receiver.stop()
    assert not running(victim)
    assert [(r.eori, r.status) for r in rows] == [(e, "delivered") for e in eoris]
    assert errors and all("webhook worker webhook-worker-0 died" in e for e in errors)
    assert "retried with the same Idempotency-Key" in errors[0]
    # At least once: an attempt the victim had sent may come again, always with the same key.
    keys = {hook.path.rsplit("/", 1)[1]: set() for hook in receiver.received}  # type: ignore[var-annotated]
    for hook in receiver.received:
        keys[hook.path.rsplit("/", 1)[1]].add(hook.headers[IDEMPOTENCY_HEADER])
    assert sorted(keys) == eoris
    assert all(k == {idempotency_key(event.id, e, DeliveryChannel.WEBHOOK)} for e, k in keys.items())


@pytest.mark.parametrize("workers", [1, 2])
async def test_refusals_and_failures_end_as_they_do_in_process(
    workers: int, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    good = WebhookReceiver().start()
    failing = WebhookReceiver(statuses=[500] * 10).start()
    redirecting = Receiver(status=302, location="http://elsewhere.example/hook")
    closed = free_port()  # nobody listens there
    settings = notifier_settings(kafka_bootstrap, topic_prefix, f"sqlite:///{tmp_path / 'notifier.db'}",
                                 workers=workers, max_attempts=2)
    try:
        async with running_notifier(settings, publish=False) as parts:
            await register(parts, "LU0001", good.url())
            await register(parts, "LU0002", "ftp://127.0.0.1/hook")
            await register(parts, "LU0003", failing.url())
            await register(parts, "LU0004", f"http://127.0.0.1:{redirecting.port}/hook")
            await register(parts, "LU0005", f"http://127.0.0.1:{closed}/hook")
            await parts.planner.on_procedure(procedure_event(), RECORD)
            await eventually(lambda: settled(parts), timeout=60, what="five deliveries settled")
            rows = await deliveries(parts)
            sent_in_process = parts.webhook_workers.sent_in_process if parts.webhook_workers else None
    finally:
        good.stop()
        failing.stop()
        redirecting.stop()
    assert sent_in_process in (None, 0)
    assert [(r.eori, r.status, r.attempts, r.last_http_status, r.last_error) for r in rows] == [
        ("LU0001", "delivered", 1, 200, None),
        ("LU0002", "dead", 1, None, "not an http(s) URL: 'ftp://127.0.0.1/hook'"),
        ("LU0003", "dead", 2, 500, "HTTP 500"),
        ("LU0004", "dead", 2, 302, "HTTP 302: redirect to http://elsewhere.example/hook not followed; "
                                   "the webhook must answer 2xx at its registered URL"),
        ("LU0005", "dead", 2, None, f"cannot connect to 127.0.0.1: 127.0.0.1:{closed}: Connection refused"),
    ]


async def test_stopping_the_notifier_leaves_no_worker_running(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    receiver = WebhookReceiver().start()
    settings = notifier_settings(kafka_bootstrap, topic_prefix, f"sqlite:///{tmp_path / 'notifier.db'}", workers=3)
    try:
        async with running_notifier(settings, publish=False) as parts:
            pool = pool_of(parts)
            pids = list(pool.pids().values())
            assert len(pids) == 3 and all(running(pid) for pid in pids)
            await register(parts, "LU0001", receiver.url())
            await parts.planner.on_procedure(procedure_event(), RECORD)
            await eventually(lambda: settled(parts), what="the delivery settled")
    finally:
        receiver.stop()
    assert not [pid for pid in pids if running(pid)]
    assert pool.pids() == {}


async def test_webhooks_go_out_in_process_while_no_worker_is_live(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    receiver = WebhookReceiver().start()
    settings = notifier_settings(kafka_bootstrap, topic_prefix, f"sqlite:///{tmp_path / 'notifier.db'}", workers=2)
    try:
        async with running_notifier(settings, publish=False) as parts:
            pool = pool_of(parts)
            pool.command = ["/nonexistent/python"]  # a restart cannot start: every child stays down
            for pid in pool.pids().values():
                os.kill(pid, signal.SIGKILL)
            await eventually(lambda: not pool.pids(), what="both workers down")
            await register(parts, "LU0001", receiver.url())
            await parts.planner.on_procedure(procedure_event(), RECORD)
            await eventually(lambda: settled(parts), what="the delivery settled")
            rows = await deliveries(parts)
    finally:
        receiver.stop()
    assert [(r.status, r.attempts) for r in rows] == [("delivered", 1)]
    assert pool.sent_in_process == 1
    assert len(receiver.received) == 1


_ORPHANED_POOL = """
import asyncio, sys
from services.notifier.webhook_http import WebhookHttpClient
from services.notifier.webhook_workers import WebhookWorkers
from services.notifier.webhooks import WebhookSender
from shared.config import NotifierSettings

async def main():
    cfg = NotifierSettings()
    pool = WebhookWorkers(workers=2, settings=cfg,
                          in_process=WebhookSender(settings=cfg, client=WebhookHttpClient(allow_private=False)))
    await pool.start()
    print(*pool.pids().values(), flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


def test_workers_exit_when_the_notifier_process_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _ORPHANED_POOL], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(running(pid) for pid in pids)
        parent.kill()  # no clean-up in the parent: the workers see their input close
        parent.wait(timeout=30)
        wait_for(lambda: not any(running(pid) for pid in pids), timeout=30, what="the orphaned workers to exit")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


async def test_a_worker_that_keeps_dying_is_restarted_after_growing_pauses(caplog: pytest.LogCaptureFixture) -> None:
    cfg = NotifierSettings()
    pool = WebhookWorkers(workers=2, settings=cfg, restart_s=0.05,
                          in_process=WebhookSender(settings=cfg, client=WebhookHttpClient(allow_private=False)),
                          command=[sys.executable, "-c", "import sys; sys.exit(3)"])  # dies before answering

    def pauses() -> list[float]:
        return [float(r.args[2]) for r in caplog.records  # type: ignore[index,arg-type]
                if r.name == "services.notifier.webhook_workers" and "is down" in r.getMessage()
                and r.args[0] == "webhook-worker-0"]  # type: ignore[index]

    with caplog.at_level(logging.ERROR, logger="services.notifier.webhook_workers"):
        await pool.start()
        try:
            await eventually(lambda: len(pauses()) >= 4, what="four deaths of worker 0")
        finally:
            await pool.aclose()
    assert pauses()[:4] == [0.05, 0.1, 0.2, 0.4]
    # (Its exit code: 3, or 255 when asyncio's child watcher lost the race with so quick an exit.)
    assert "is down (exit code " in next(r.getMessage() for r in caplog.records if "is down" in r.getMessage())
    assert pool.restarts >= 4


async def test_a_hanging_worker_is_killed_and_its_attempts_retried(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    receiver = WebhookReceiver(delay_s=0.1).start()
    settings = notifier_settings(kafka_bootstrap, topic_prefix, f"sqlite:///{tmp_path / 'notifier.db'}", workers=2,
                                 webhook_timeout_s=1, per_host_concurrency=4)
    eoris = [f"LU{i:04d}" for i in range(40)]
    try:
        async with running_notifier(settings, publish=False) as parts:
            pool = pool_of(parts)
            for eori in eoris:
                await register(parts, eori, receiver.url(f"/hook/{eori}"))
            await parts.planner.on_procedure(procedure_event(), RECORD)
            await eventually(lambda: pool.in_flight().get("webhook-worker-1"), what="attempts in flight in worker 1")
            stopped = pool.pids()["webhook-worker-1"]
            os.kill(stopped, signal.SIGSTOP)  # alive, but answers nothing
            await eventually(lambda: pool.restarts >= 1, timeout=30, what="the hanging worker killed")
            await eventually(lambda: settled(parts), timeout=60, what="40 deliveries settled")
            rows = await deliveries(parts)
    finally:
        receiver.stop()
    assert not running(stopped)
    assert [(r.eori, r.status) for r in rows] == [(e, "delivered") for e in eoris]
    assert sorted({hook.path for hook in receiver.received}) == [f"/hook/{e}" for e in eoris]
