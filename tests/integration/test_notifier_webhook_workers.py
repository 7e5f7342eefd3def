"""Webhooks sent by worker processes (``notifier.workers`` = 2) to real loopback receivers: each EO once with a
valid signature and its Idempotency-Key, a child SIGKILLed mid-fan-out, the same outcomes as in-process,
no child left once the notifier stops or is killed; a child that dies at start fails no attempt, SIGTERM and
SIGINT leave a child's attempts in flight to finish, a child whose answers cannot be read is killed and its
attempts fail (to be retried)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.notifier.app import NotifierParts
from services.notifier.domain import Audience, idempotency_key
from services.notifier.jobs import Job
from services.notifier.webhook_http import WebhookHttpClient
from services.notifier.webhook_workers import WebhookWorkers
from services.notifier.webhooks import WebhookSender
from shared.config import NotifierSettings
from shared.events import DeliveryChannel, EventType, Language
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


def webhook_job(n: int, url: str) -> Job:
    return Job(f"d{n}", "event-1", EventType.PROCEDURE_OPENED, "procedure-1", f"LU{n:04d}", Audience.EO,
               DeliveryChannel.WEBHOOK, url, "lane", f"key-{n}", 1, datetime.now(UTC), Language.EN, "subject",
               "message", b'{"n": %d}' % n, "secret")


def loopback_pool(command: list[str] | None = None, **settings: float) -> WebhookWorkers:
    """Two workers that may POST to loopback receivers over plain HTTP."""
    cfg = NotifierSettings(allow_insecure_webhooks=True, allow_private_webhooks=True, **settings)
    return WebhookWorkers(workers=2, settings=cfg, restart_s=0.05, command=command,
                          in_process=WebhookSender(settings=cfg, client=WebhookHttpClient(allow_private=True)))


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


async def test_a_worker_that_dies_right_after_start_fails_no_attempt() -> None:
    # Each child execs and dies 0.4 s later without a word (an import error, bad settings, out of memory at
    # start): it never says it is ready, so it is given no attempt; all go out in the notifier process.
    receiver = WebhookReceiver().start()
    pool = loopback_pool([sys.executable, "-c", "import time; time.sleep(0.4)"])
    outcomes = []

    async def send_until_restarted(base: int) -> None:
        for n in range(base, base + 500):  # bounded; ends once each child has died twice
            if pool.restarts >= 4:
                return
            outcomes.append(await pool.send(webhook_job(n, receiver.url(f"/hook/{n}"))))
            await asyncio.sleep(0.01)

    try:
        await pool.start()
        await asyncio.gather(*(send_until_restarted(k * 1000) for k in range(4)))
        restarts = pool.restarts
    finally:
        await pool.aclose()
        receiver.stop()
    assert restarts >= 4  # the attempts were sent across restarts, while children were starting
    assert outcomes and [o for o in outcomes if not o.ok] == []
    assert pool.sent_in_process == len(outcomes) == len(receiver.received)


class HeldReceiver:
    """A loopback webhook receiver that holds every answer until :attr:`release` is set."""

    def __init__(self) -> None:
        self.received = 0
        self.release = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            self.received += 1
            await self.release.wait()
            writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()

        self._server = await asyncio.start_server(answer, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/hook"

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()


async def test_sigterm_and_sigint_leave_a_workers_attempts_in_flight_to_finish() -> None:
    receiver = HeldReceiver()
    url = await receiver.start()
    pool = loopback_pool()
    try:
        await pool.start()
        pids = pool.pids()
        assert len(pids) == 2
        # A session of its own each: a signal to the notifier's process group does not reach them.
        assert all(os.getpgid(pid) == pid != os.getpgid(0) for pid in pids.values())
        futures = [pool.send(webhook_job(n, url)) for n in range(10)]
        await eventually(lambda: receiver.received == 10, what="10 POSTs held by the receiver")
        assert all(pool.in_flight().values())  # both children have POSTs in flight
        # What Ctrl-C, `systemctl stop` (KillMode=control-group) or `tini -g` send to every process.
        os.kill(pids["webhook-worker-0"], signal.SIGINT)
        os.kill(pids["webhook-worker-1"], signal.SIGTERM)
        os.killpg(pids["webhook-worker-0"], signal.SIGTERM)
        os.killpg(pids["webhook-worker-1"], signal.SIGINT)
        receiver.release.set()
        async with asyncio.timeout(30):
            outcomes = await asyncio.gather(*futures)
        assert [o.ok for o in outcomes] == [True] * 10
        assert pool.restarts == 0 and pool.pids() == pids
    finally:
        await pool.aclose()
        receiver.stop()
    # They exit when their input closes (the notifier's stop), signals or not.
    assert not [pid for pid in pids.values() if running(pid)]
    assert pool.pids() == {}


_GARBLING_WORKER = """
import os, pickle, struct, sys
def frame():
    header = sys.stdin.buffer.read(4)
    if len(header) < 4:
        sys.exit(0)  # input closed
    return pickle.loads(sys.stdin.buffer.read(struct.unpack(">I", header)[0]))
def send(data):
    sys.stdout.buffer.write(struct.pack(">I", len(data)) + data)
    sys.stdout.buffer.flush()
frame()  # the settings
send(pickle.dumps([("ready",)]))
while True:
    if any(message[0] == "post" for message in frame()):
        send(b"this is no pickle")  # a frame whose length is right and whose body cannot be read
"""


async def test_a_worker_whose_answers_cannot_be_read_is_killed_and_its_attempts_fail_transiently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = loopback_pool([sys.executable, "-c", _GARBLING_WORKER])
    with caplog.at_level(logging.ERROR, logger="services.notifier.webhook_workers"):
        try:
            await pool.start()
            pids = pool.pids()
            assert len(pids) == 2
            futures = [pool.send(webhook_job(n, "http://127.0.0.1:9/hook")) for n in range(4)]
            async with asyncio.timeout(30):
                outcomes = await asyncio.gather(*futures)
            await eventually(lambda: pool.restarts >= 2 and len(pool.pids()) == 2, what="both workers restarted")
            restarted = pool.pids()
        finally:
            await pool.aclose()
    assert {(o.ok, o.permanent) for o in outcomes} == {(False, False)}  # retried later by the dispatcher
    assert {o.error for o in outcomes} == {
        f"webhook worker {name} was killed (its answers could not be read: FrameError) before answering: "
        "will be retried with the same Idempotency-Key" for name in pids
    }
    assert not [pid for pid in pids.values() if running(pid)]
    assert set(restarted.values()).isdisjoint(pids.values())
    assert sum("sent what cannot be read" in r.getMessage() for r in caplog.records) >= 2
    assert pool.sent_in_process == 0


async def test_a_worker_that_is_never_ready_is_killed_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    # Alive but silent from its start (stuck before it read its settings): no attempt goes to it, and it is
    # killed once an attempt's timeout + 5 s has passed, as a hanging worker is.
    pool = loopback_pool([sys.executable, "-c", "import time; time.sleep(120)"], webhook_timeout_s=0.5)
    with caplog.at_level(logging.ERROR, logger="services.notifier.webhook_workers"):
        try:
            await pool.start()
            assert pool.pids() == {}
            await eventually(lambda: pool.restarts >= 2, what="both silent workers killed")
        finally:
            await pool.aclose()
    assert sum("was not ready" in r.getMessage() for r in caplog.records) >= 2
    down = next(r.getMessage() for r in caplog.records if "is down" in r.getMessage())
    # (-9: killed; 255 when asyncio's child watcher lost the race, as in the test above.)
    assert "is down (exit code -9)" in down or "is down (exit code 255)" in down


async def _held_until_steady(receiver: HeldReceiver, expected: int) -> int:
    """How many attempts the receiver holds once ``expected`` have arrived and half a second has passed."""
    await eventually(lambda: receiver.received >= expected, what=f"{expected} attempts in flight")
    await asyncio.sleep(0.5)  # more would have arrived by now if the limit let them
    return receiver.received


@contextlib.asynccontextmanager
async def held_pool(per_host_concurrency: int) -> AsyncIterator[tuple[HeldReceiver, str, WebhookWorkers]]:
    """A receiver holding its answers, its URL, and two workers (not started) that may POST to it."""
    receiver = HeldReceiver()
    url = await receiver.start()
    pool = loopback_pool(per_host_concurrency=per_host_concurrency)
    try:
        yield receiver, url, pool
    finally:
        await pool.aclose()
        receiver.stop()


async def test_a_host_has_at_most_its_limit_in_flight_across_the_workers_with_attempts_handed_out_ahead() -> None:
    async with held_pool(4) as (receiver, url, pool):  # 2 each
        await pool.start()
        assert pool.ahead == 4
        sends = [asyncio.ensure_future(pool.send(webhook_job(n, url))) for n in range(40)]
        in_flight = await _held_until_steady(receiver, 4)
        queued = sum(pool.in_flight().values())
        receiver.release.set()
        outcomes = await asyncio.gather(*sends)
    assert in_flight == 4  # both workers' shares, and no more
    assert queued == 40  # the rest handed out, waiting in the workers
    assert all(o.ok for o in outcomes) and receiver.received == 40
    assert pool.sent_in_process == 0


async def test_a_limit_below_the_number_of_workers_gives_some_workers_none_of_it() -> None:
    async with held_pool(1) as (receiver, url, pool):
        await pool.start()
        sends = [asyncio.ensure_future(pool.send(webhook_job(n, url))) for n in range(6)]
        in_flight = await _held_until_steady(receiver, 1)
        busy = {name for name, count in pool.in_flight().items() if count}
        receiver.release.set()
        outcomes = await asyncio.gather(*sends)
    assert in_flight == 1
    assert busy == {"webhook-worker-0"}
    assert all(o.ok for o in outcomes)


async def test_in_this_process_a_host_keeps_its_limit_and_the_workers_wait_for_those_in_flight_here() -> None:
    async with held_pool(3) as (receiver, url, pool):
        # Not started: no worker is live, so these go out in this process, three at a time (none handed out ahead).
        assert pool.ahead == 0
        here = [asyncio.ensure_future(pool.send(webhook_job(n, url))) for n in range(5)]
        held_here = await _held_until_steady(receiver, 3)
        await pool.start()
        assert set(pool.pids()) == {"webhook-worker-0", "webhook-worker-1"}
        # Workers live now, but three attempts to that host are still in flight here: the next ones wait.
        later = [asyncio.ensure_future(pool.send(webhook_job(n, url))) for n in range(5, 10)]
        held_after_start = await _held_until_steady(receiver, 3)
        receiver.release.set()
        outcomes = await asyncio.gather(*here, *later)
    assert (held_here, held_after_start) == (3, 3)
    assert all(o.ok for o in outcomes) and receiver.received == 10
    assert pool.sent_in_process == 5


async def test_an_attempt_waiting_for_those_in_flight_here_goes_out_here_once_no_worker_is_live() -> None:
    async with held_pool(3) as (receiver, url, pool):
        here = [asyncio.ensure_future(pool.send(webhook_job(n, url))) for n in range(3)]  # no worker live yet
        await _held_until_steady(receiver, 3)
        await pool.start()
        waiting = asyncio.ensure_future(pool.send(webhook_job(3, url)))  # waits for the three here
        await asyncio.sleep(0.2)
        assert pool.sent_in_process == 3
        pool.command = ["/nonexistent/python"]  # a restart cannot start: both stay down
        for pid in pool.pids().values():
            os.kill(pid, signal.SIGKILL)
        # No worker is live any more: the waiting attempt goes out here (behind the host's limit of 3).
        await eventually(lambda: pool.sent_in_process == 4, timeout=10, what="the waiting attempt sent here")
        receiver.release.set()
        outcomes = await asyncio.gather(*here, waiting)
    assert all(o.ok for o in outcomes) and receiver.received == 4
