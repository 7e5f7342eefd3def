"""Webhook delivery against real loopback receivers, the delivery log in real SQLite and PostgreSQL databases,
outcomes on the real broker.

The notifier is wired by its own composition root (``build_notifier``); events reach its planner the way
the consumers hand them over. ``running_notifier`` is reused by the other notifier integration tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy import event as sa_event
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.notifier import planning
from services.notifier.app import NotifierParts, build_notifier
from services.notifier.domain import idempotency_key
from services.notifier.migrate import upgrade
from services.notifier.models import AttemptRow, DeliveryRow
from shared.auth import authorize, build_guard, install_guard
from shared.config import ApiSettings, KafkaSettings, NotifierSettings, Settings, SmtpSettings
from shared.db import make_engine
from shared.events import (
    CloudEvent,
    Component,
    ComponentState,
    DeliveryChannel,
    DeliveryData,
    EoData,
    EventType,
    Language,
    Origin,
    ProcedureData,
    ProcedureState,
    Scenario,
    Scope,
    parse_event,
)
from shared.kafka import Publisher, ensure_topics
from shared.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify
from tests.support import BUREAU, BUREAU_TOKEN, WebhookReceiver, eventually, free_port, pg_database

pytestmark = pytest.mark.integration

RECORD: ConsumerRecord[bytes, bytes] = ConsumerRecord(
    topic="t", partition=0, offset=0, timestamp=0, timestamp_type=0, key=None, value=None, checksum=None,
    serialized_key_size=0, serialized_value_size=0, headers=(),
)


# --- harness ------------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with notifier_database(request, tmp_path) as url:
        yield url


@contextlib.asynccontextmanager
async def notifier_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh notifier database: a SQLite file, or a PostgreSQL database of its own, dropped afterwards
    (one per test: a database shared by name would be emptied under a test running elsewhere at once)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'notifier.db'}"
        return
    async with pg_database(request.getfixturevalue("postgres_url"), "luccs_notifier") as url:
        yield url


@contextlib.asynccontextmanager
async def migrated_notifier_engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh notifier database (:func:`notifier_database`) at the head revision."""
    async with notifier_database(request, tmp_path) as url:
        engine = make_engine(url)
        try:
            await upgrade(engine)
            yield engine
        finally:
            await engine.dispose()


def notifier_settings(kafka_bootstrap: str, prefix: str, database_url: str, **notifier: Any) -> Settings:
    smtp = notifier.pop("smtp", None)
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix),
        api=ApiSettings(bureau_tokens=[SecretStr(BUREAU_TOKEN)]),
        notifier=NotifierSettings(**{
            "database_url": database_url, "allow_insecure_webhooks": True, "allow_private_webhooks": True,
            "backoff_base_s": 0.05, "backoff_max_s": 0.2, "webhook_timeout_s": 5, "instance_id": "test-notifier",
            **notifier,
        }),
        smtp=smtp or SmtpSettings(),
    )


class _TopOfTheWindow(random.Random):
    """A random source that always draws the top of the range: a retry's full jitter waits the whole pause."""

    def uniform(self, a: float, b: float) -> float:
        return b


TOP_OF_THE_WINDOW = _TopOfTheWindow()


@contextlib.asynccontextmanager
async def running_notifier(
    settings: Settings, *, publish: bool = True, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    rng: random.Random | None = None,
) -> AsyncIterator[NotifierParts]:
    """The notifier's parts with its dispatcher and reach keeper running (publishing outcomes on the real broker)."""
    publisher: Publisher | None = None
    if publish:
        await ensure_topics(settings.kafka)
        publisher = Publisher(settings.kafka, client_id="test-notifier")
        await publisher.start()
    parts = build_notifier(settings, registry=CollectorRegistry(), publisher=publisher, poll_s=0.05, clock=clock,
                           rng=rng)
    await upgrade(parts.engine)
    await parts.start()
    loops = [asyncio.create_task(parts.dispatcher.run()), asyncio.create_task(parts.reach.run())]
    try:
        yield parts
    finally:
        for loop in loops:
            loop.cancel()
        for loop in loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        await parts.aclose()
        if publisher is not None:
            await publisher.stop()


async def register(
    parts: NotifierParts, eori: str, url: str | None, language: Language = Language.EN, *, email: str | None = None,
    secret: str | None = None,
) -> None:
    event = CloudEvent[EoData](
        source="/tests", type=EventType.EO_UPSERTED, subject=eori,
        data=EoData(eori=eori, name=f"EO {eori}", language=language, email=email, webhook_url=url,
                    webhook_secret=SecretStr(secret or f"secret-{eori}"), as4_endpoint=None),
    )
    await parts.planner.on_eo(event, RECORD)


def procedure_event(
    event_type: EventType = EventType.PROCEDURE_OPENED,
    scenario: Scenario = Scenario.ADA_B2G_UNAVAILABLE,
    *,
    procedure_id: str | None = None,
    eori: str | None = None,
    previous: Scenario | None = None,
    origin: Origin = Origin.DETECTED,
) -> CloudEvent[ProcedureData]:
    now = datetime.now(UTC)
    closed = event_type == EventType.PROCEDURE_CLOSED
    state = {EventType.PROCEDURE_PROPOSED: ProcedureState.PROPOSED, EventType.PROCEDURE_CLOSED: ProcedureState.CLOSED}
    procedure_id = procedure_id or f"p-{uuid.uuid4().hex[:8]}"
    return CloudEvent[ProcedureData](
        source="/tests", type=event_type, subject=procedure_id,
        data=ProcedureData(
            procedure_id=procedure_id, scenario=scenario, previous_scenario=previous,
            scope=Scope.EO if scenario == Scenario.EO_B2G_UNAVAILABLE else Scope.NATIONAL, eori=eori,
            state=state.get(event_type, ProcedureState.OPEN), reason="test", opened_at=now,
            closed_at=now if closed else None, origin=origin, components=_components(scenario, closed=closed),
        ),
    )


def _components(scenario: Scenario, *, closed: bool) -> dict[Component, ComponentState]:
    """The national component states the procedure service puts on an event of the scenario."""
    up, down = ComponentState.UP, ComponentState.DOWN
    if closed or scenario == Scenario.EO_B2G_UNAVAILABLE:
        return {Component.ADA_B2G: up, Component.NTP: up}
    return {Component.ADA_B2G: down, Component.NTP: up if scenario == Scenario.ADA_B2G_UNAVAILABLE else down}


async def deliveries(parts: NotifierParts) -> list[DeliveryRow]:
    async with parts.sessions() as session:
        return list((await session.scalars(
            select(DeliveryRow).order_by(DeliveryRow.recipient_key, DeliveryRow.channel)
        )).all())


async def attempts_of(parts: NotifierParts, delivery_id: str) -> list[AttemptRow]:
    async with parts.sessions() as session:
        return list((await session.scalars(
            select(AttemptRow).where(AttemptRow.delivery_id == delivery_id).order_by(AttemptRow.id)
        )).all())




async def settled(parts: NotifierParts) -> bool:
    rows = await deliveries(parts)
    return bool(rows) and all(r.status in ("delivered", "dead") for r in rows)


@dataclass
class Hook:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A loopback webhook receiver, optionally over TLS, answering a fixed status (and Location)."""

    def __init__(self, *, status: int = 200, location: str | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.status = status
        self.location = location
        self.port = free_port()
        self.received: list[Hook] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.received.append(Hook(self.path, dict(self.headers.items()), body))
                self.send_response(receiver.status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hooks = WebhookReceiver().start()
    yield hooks
    hooks.stop()


# --- webhooks -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plan_part", [planning.PLAN_PART, 2], ids=["one-part", "parts"])
async def test_every_eo_gets_one_signed_notice_in_its_language(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch, plan_part: int,
) -> None:
    """``parts``: the plan's deliveries built and inserted two at a time (``planning.PLAN_PART``)."""
    monkeypatch.setattr(planning, "PLAN_PART", plan_part)
    settings = notifier_settings(kafka_bootstrap, topic_prefix, database_url)
    async with running_notifier(settings) as parts:
        await register(parts, "LU0001", receiver.url("/fr"), Language.FR)
        await register(parts, "LU0002", receiver.url("/de"), Language.DE)
        await register(parts, "LU0003", receiver.url("/en"), Language.EN)
        event = procedure_event()
        await parts.planner.on_procedure(event, RECORD)
        await parts.planner.on_procedure(event, RECORD)  # redelivered: plans nothing more
        await eventually(lambda: settled(parts), what="three deliveries settled")
        rows = await deliveries(parts)
    assert [(r.eori, r.status, r.attempts) for r in rows] == [
        ("LU0001", "delivered", 1), ("LU0002", "delivered", 1), ("LU0003", "delivered", 1)
    ]
    assert sorted(w.path for w in receiver.received) == ["/de", "/en", "/fr"]
    for hook in receiver.received:
        eori = {"/fr": "LU0001", "/de": "LU0002", "/en": "LU0003"}[hook.path]
        assert verify(f"secret-{eori}", hook.body, hook.headers[SIGNATURE_HEADER], now=int(time.time()))
        assert not verify("secret-LU9999", hook.body, hook.headers[SIGNATURE_HEADER], now=int(time.time()))
        assert hook.headers[IDEMPOTENCY_HEADER] == idempotency_key(event.id, eori, DeliveryChannel.WEBHOOK)
        body = hook.event
        assert (body["specversion"], body["id"], body["type"]) == ("1.0", event.id, "luccs.procedure.opened")
        assert body["data"]["procedure_id"] == event.data.procedure_id
        assert body["data"]["language"] == hook.path.strip("/")
        assert event.data.procedure_id in body["data"]["subject"]
        assert event.data.procedure_id in body["data"]["message"]
    by_language = {w.path: w.event["data"]["message"] for w in receiver.received}
    assert "National Trader Portal (NTP), qui reste ouvert" in by_language["/fr"]
    assert "National Trader Portal (NTP) ein, das geöffnet bleibt" in by_language["/de"]
    assert "National Trader Portal (NTP), which stays open" in by_language["/en"]


def _counted(counter: Any, **labels: str) -> float:
    return float(sum(sample.value for metric in counter.collect() for sample in metric.samples
                     if sample.name.endswith("_total") and sample.labels == labels))


async def test_a_plan_counts_its_deliveries_and_the_eos_it_cannot_reach(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, receiver: WebhookReceiver,
) -> None:
    """``luccs_notifier_deliveries_planned_total`` by audience and channel, ``luccs_notifier_unreachable_eos_total``
    for the EO with neither webhook nor e-mail; a redelivered event counts nothing more."""
    async with running_notifier(notifier_settings(kafka_bootstrap, topic_prefix, database_url)) as parts:
        await register(parts, "LU0001", receiver.url("/one"))
        await register(parts, "LU0002", receiver.url("/two"), Language.FR)
        await register(parts, "LU0003", None, email="eo3@example.lu")
        await register(parts, "LU0004", None)
        event = procedure_event()
        await parts.planner.on_procedure(event, RECORD)
        await parts.planner.on_procedure(event, RECORD)
        metrics = parts.metrics
        assert _counted(metrics.planned, audience="eo", channel="webhook") == 2
        assert _counted(metrics.planned, audience="eo", channel="email") == 1
        assert _counted(metrics.unreachable_eos) == 1


async def test_a_large_plan_wakes_the_dispatcher_before_sqlite_copies_its_log(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plan of ``DEFER_CHECKPOINT_AFTER`` deliveries or more (lowered here to 2) commits on SQLite without the
    checkpoint of the write-ahead log (``shared.db.defer_checkpoint``), wakes the dispatcher, then checkpoints;
    its connection serves again with the automatic checkpoints restored. A smaller plan commits as ever; on
    PostgreSQL no such statement runs."""
    monkeypatch.setattr(planning, "DEFER_CHECKPOINT_AFTER", 2)
    seen: list[str] = []
    deferred_on: list[Any] = []

    def note(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("PRAGMA wal_"):
            seen.append(statement)
        if statement == "PRAGMA wal_autocheckpoint=0":
            deferred_on.append(conn.connection.driver_connection)

    async with running_notifier(notifier_settings(kafka_bootstrap, topic_prefix, database_url)) as parts:
        await register(parts, "LU0001", receiver.url("/one"))
        wake = parts.planner._on_planned

        def noted_wake() -> None:
            seen.append("wake")
            wake()

        parts.planner._on_planned = noted_wake
        sa_event.listen(parts.engine.sync_engine, "before_cursor_execute", note)
        try:
            await parts.planner.on_procedure(procedure_event(procedure_id="PROC-SMALL"), RECORD)
            small, seen[:] = list(seen), []
            await register(parts, "LU0002", receiver.url("/two"))
            await parts.planner.on_procedure(procedure_event(procedure_id="PROC-LARGE"), RECORD)
        finally:
            sa_event.remove(parts.engine.sync_engine, "before_cursor_execute", note)
        await eventually(lambda: settled(parts), what="every delivery settled")
        pages = None
        async with contextlib.AsyncExitStack() as held:  # the pool's connections until the plan's comes up
            for _ in range(10 if deferred_on else 0):
                connection = await held.enter_async_context(parts.engine.connect())
                if (await connection.get_raw_connection()).driver_connection is deferred_on[0]:
                    pages = (await connection.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar()
                    break
    assert small == ["wake"]
    if parts.engine.dialect.name == "sqlite":
        assert seen == ["PRAGMA wal_autocheckpoint=0", "wake", "PRAGMA wal_checkpoint(PASSIVE)"]
        assert pages == 1000
    else:
        assert seen == ["wake"] and not deferred_on


async def test_failures_are_retried_with_the_same_key_then_dead_lettered(
    database_url: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    flaky = WebhookReceiver(statuses=[500, 503]).start()
    broken = WebhookReceiver(statuses=[500] * 10).start()
    settings = notifier_settings(kafka_bootstrap, topic_prefix, database_url, max_attempts=3)
    try:
        async with running_notifier(settings) as parts:
            await register(parts, "LU0001", flaky.url())
            await register(parts, "LU0002", broken.url())
            await parts.planner.on_procedure(procedure_event(), RECORD)
            await eventually(lambda: settled(parts), what="both deliveries settled")
            flaky_row, broken_row = await deliveries(parts)
            flaky_attempts = await attempts_of(parts, flaky_row.id)
            broken_attempts = await attempts_of(parts, broken_row.id)
    finally:
        flaky.stop()
        broken.stop()
    assert (flaky_row.status, flaky_row.attempts) == ("delivered", 3)
    assert [(a.outcome, a.http_status) for a in flaky_attempts] == [
        ("retrying", 500), ("retrying", 503), ("delivered", 200)
    ]
    assert (broken_row.status, broken_row.attempts, broken_row.last_error) == ("dead", 3, "HTTP 500")
    assert [a.outcome for a in broken_attempts] == ["retrying", "retrying", "dead"]
    assert len(flaky.received) == 3
    assert len(broken.received) == 3
    # Every attempt of one notice carries the same Idempotency-Key (and a fresh, valid signature).
    assert len({w.headers[IDEMPOTENCY_HEADER] for w in flaky.received}) == 1
    assert all(verify("secret-LU0001", w.body, w.headers[SIGNATURE_HEADER], now=int(time.time()))
               for w in flaky.received)


@pytest.mark.parametrize("workers", [1, 2])  # 2: sent by webhook workers, each host's attempts handed out ahead
async def test_a_hanging_endpoint_delays_no_other_eo(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, workers: int
) -> None:
    hanging = WebhookReceiver(delay_s=20).start()
    healthy = WebhookReceiver().start()
    settings = notifier_settings(kafka_bootstrap, topic_prefix, database_url, webhook_timeout_s=15,
                                 per_host_concurrency=2, workers=workers)
    try:
        async with running_notifier(settings) as parts:
            # Several EOs behind the hanging host: more than its lane runs at once.
            for n in range(5):
                await register(parts, f"LU010{n}", hanging.url(f"/{n}"))
            for n in range(5):
                await register(parts, f"LU020{n}", healthy.url(f"/{n}"))
            await parts.planner.on_procedure(procedure_event(), RECORD)

            async def healthy_delivered() -> bool:
                rows = await deliveries(parts)
                return all(r.status == "delivered" for r in rows if (r.eori or "").startswith("LU02"))

            started = time.monotonic()
            await eventually(healthy_delivered, timeout=10, what="the healthy EOs' deliveries")
            elapsed = time.monotonic() - started
            statuses = {r.eori: r.status for r in await deliveries(parts)}
    finally:
        hanging.stop()
        healthy.stop()
    # The hanging host's notices are still in flight (or waiting in their lane) while the others are done.
    assert all(statuses[f"LU010{n}"] == "pending" for n in range(5)), statuses
    assert elapsed < 10
    # Its lane never ran more than per_host_concurrency requests at once.
    assert len(hanging.received) <= 2


async def test_a_redirect_is_not_followed(database_url: str, kafka_bootstrap: str, topic_prefix: str) -> None:
    elsewhere = WebhookReceiver().start()
    redirecting = Receiver(status=307, location=elsewhere.url("/stolen"))
    metadata = Receiver(status=302, location="http://169.254.169.254/latest/meta-data/")
    settings = notifier_settings(kafka_bootstrap, topic_prefix, database_url, max_attempts=2)
    try:
        async with running_notifier(settings) as parts:
            await register(parts, "LU0001", f"http://127.0.0.1:{redirecting.port}/hook")
            await register(parts, "LU0002", f"http://127.0.0.1:{metadata.port}/hook")
            await parts.planner.on_procedure(procedure_event(), RECORD)
            await eventually(lambda: settled(parts), what="both deliveries dead")
            first, second = await deliveries(parts)
    finally:
        elsewhere.stop()
        redirecting.stop()
        metadata.stop()
    assert elsewhere.received == []
    assert (first.status, first.last_http_status) == ("dead", 307)
    assert "redirect to http://127.0.0.1" in (first.last_error or "")
    assert "not followed" in (first.last_error or "")
    assert (second.status, second.last_http_status) == ("dead", 302)
    assert "redirect to http://169.254.169.254/latest/meta-data/ not followed" in (second.last_error or "")


async def test_private_targets_are_refused_unless_allowed(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, receiver: WebhookReceiver
) -> None:
    import socket

    # A name that is not an address literal but resolves to loopback through the system resolver.
    name = socket.gethostname()
    resolved = {str(info[4][0]) for info in socket.getaddrinfo(name, receiver.port, type=socket.SOCK_STREAM)}
    assert resolved and all(a.startswith("127.") or a == "::1" for a in resolved), (
        f"this test needs the host name {name!r} to resolve to loopback (it resolves to {resolved})"
    )
    settings = notifier_settings(kafka_bootstrap, topic_prefix, database_url, allow_private_webhooks=False)
    async with running_notifier(settings) as parts:
        await register(parts, "LU0001", receiver.url())  # literal 127.0.0.1
        await register(parts, "LU0002", f"http://{name}:{receiver.port}/hook")  # resolves to 127.0.0.1
        await register(parts, "LU0003", f"http://127.1:{receiver.port}/hook")  # shorthand for 127.0.0.1
        await parts.planner.on_procedure(procedure_event(), RECORD)
        await eventually(lambda: settled(parts), what="three deliveries dead")
        literal, named, shorthand = await deliveries(parts)
        literal_attempts = await attempts_of(parts, literal.id)
    assert receiver.received == []
    assert [r.status for r in (literal, named, shorthand)] == ["dead"] * 3
    assert [a.outcome for a in literal_attempts] == ["dead"]  # refused at once, not retried
    assert "loopback/private" in (literal.last_error or "")
    assert f"{name} resolves to 127." in (named.last_error or "")
    assert "127.0.0.1" in (shorthand.last_error or "")


async def test_https_webhooks_verify_the_certificate(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    trusted = Receiver(tls=server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    try:
        # Trusting the CA: delivered over TLS. Not trusting it: a TLS failure, retried, then dead.
        settings = notifier_settings(kafka_bootstrap, topic_prefix, database_url, allow_insecure_webhooks=False,
                                     webhook_ca_file=str(ca_file))
        async with running_notifier(settings) as parts:
            await register(parts, "LU0001", f"https://localhost:{trusted.port}/hook")
            await parts.planner.on_procedure(procedure_event(), RECORD)
            await eventually(lambda: settled(parts), what="the https delivery")
            (row,) = await deliveries(parts)
        assert row.status == "delivered"
        assert len(trusted.received) == 1
        assert verify("secret-LU0001", trusted.received[0].body, trusted.received[0].headers[SIGNATURE_HEADER],
                      now=int(time.time()))

        untrusting = notifier_settings(kafka_bootstrap, topic_prefix, database_url, allow_insecure_webhooks=False,
                                       max_attempts=2)
        async with running_notifier(untrusting, publish=False) as parts:
            await register(parts, "LU0002", f"https://localhost:{trusted.port}/hook")
            await parts.planner.on_procedure(procedure_event(), RECORD)
            await eventually(lambda: settled(parts), what="the refused https delivery")
            row = next(r for r in await deliveries(parts) if r.eori == "LU0002")
        assert row.status == "dead"
        assert "TLS" in (row.last_error or "") or "certificate" in (row.last_error or "")
        assert len(trusted.received) == 1
    finally:
        trusted.stop()


async def test_a_pending_retry_survives_a_restart(database_url: str, kafka_bootstrap: str, topic_prefix: str) -> None:
    receiver = WebhookReceiver(statuses=[503]).start()
    # A long first backoff, its jitter pinned to the top of the window (full jitter may draw ~0 s and retry
    # at once): the retry is still scheduled when the notifier stops.
    settings = notifier_settings(kafka_bootstrap, topic_prefix, database_url, backoff_base_s=3, backoff_max_s=3)
    try:
        async with running_notifier(settings, publish=False, rng=TOP_OF_THE_WINDOW) as parts:
            await register(parts, "LU0001", receiver.url())
            event = procedure_event()
            await parts.planner.on_procedure(event, RECORD)
            seen: list[DeliveryRow] = []

            async def retrying() -> bool:
                seen[:] = await deliveries(parts)
                return [r.status for r in seen] == ["retrying"]

            await eventually(retrying, what="the first attempt to fail")
            (before,) = seen
        assert before.next_attempt_at is not None
        assert len(receiver.received) == 1
        async with running_notifier(settings, publish=False, rng=TOP_OF_THE_WINDOW) as parts:
            await parts.planner.on_procedure(event, RECORD)  # the event redelivered after the restart
            await eventually(lambda: settled(parts), what="the retry after the restart")
            (after,) = await deliveries(parts)
    finally:
        receiver.stop()
    assert (after.id, after.status, after.attempts) == (before.id, "delivered", 2)
    assert len(receiver.received) == 2
    assert len({w.headers[IDEMPOTENCY_HEADER] for w in receiver.received}) == 1


async def test_outcomes_are_published_and_listed(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, receiver: WebhookReceiver
) -> None:
    settings = notifier_settings(kafka_bootstrap, topic_prefix, database_url)
    async with running_notifier(settings) as parts:
        for n in range(5):
            await register(parts, f"LU000{n}", receiver.url(f"/{n}"))
        event = procedure_event()
        await parts.planner.on_procedure(event, RECORD)
        await eventually(lambda: settled(parts), what="five deliveries")
    consumer = AIOKafkaConsumer(
        settings.kafka.deliveries_topic, bootstrap_servers=kafka_bootstrap, group_id=None,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )
    await consumer.start()
    outcomes: list[DeliveryData] = []
    try:
        async with asyncio.timeout(20):
            while len(outcomes) < 5:
                batch = await consumer.getmany(timeout_ms=500)
                outcomes += [parse_event(r.value, DeliveryData).data for rs in batch.values() for r in rs if r.value]
    finally:
        await consumer.stop()
    assert sorted(o.eori or "" for o in outcomes) == [f"LU000{n}" for n in range(5)]
    assert {(o.status, o.attempt, o.procedure_id, o.event_id) for o in outcomes} == {
        ("delivered", 1, event.data.procedure_id, event.id)
    }


async def test_deliveries_api_filters_pages_and_refuses_bad_input(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, receiver: WebhookReceiver
) -> None:
    from fastapi import Depends, FastAPI

    from services.notifier.api import router

    settings = notifier_settings(kafka_bootstrap, topic_prefix, database_url, max_attempts=1)
    async with running_notifier(settings, publish=False) as parts:
        for n in range(7):
            await register(parts, f"LU000{n}", receiver.url(f"/{n}"))
        await register(parts, "LU0009", "http://127.0.0.1:1/refused")
        event = procedure_event()
        await parts.planner.on_procedure(event, RECORD)
        await parts.planner.on_procedure(procedure_event(), RECORD)  # another procedure
        await eventually(lambda: settled(parts), what="the deliveries of both procedures")
        app = FastAPI(dependencies=[Depends(authorize)])
        app.state.sessions = parts.sessions
        app.include_router(router)
        install_guard(app, build_guard(service="notifier", api=settings.api), max_body_bytes=4096)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notifier",
                                     headers=BUREAU) as api:
            pages: list[dict[str, Any]] = []
            params: dict[str, Any] = {"procedure_id": event.data.procedure_id, "limit": 3}
            for _ in range(10):
                page = (await api.get("/api/v1/deliveries", params=params)).json()
                pages.append(page)
                if page["next"] is None:
                    break
                params["cursor"] = page["next"]
            dead = (await api.get("/api/v1/deliveries", params={"status": "dead"})).json()["items"]
            one = (await api.get("/api/v1/deliveries", params={"eori": "LU0003", "channel": "webhook"})).json()
            email = (await api.get("/api/v1/deliveries", params={"channel": "email"})).json()
            bad = {
                "status": await api.get("/api/v1/deliveries", params={"status": "lost"}),
                "channel": await api.get("/api/v1/deliveries", params={"channel": "fax"}),
                "limit": await api.get("/api/v1/deliveries", params={"limit": 0}),
                "cursor": await api.get("/api/v1/deliveries", params={"cursor": "not-a-cursor"}),
                "cursor-json": await api.get("/api/v1/deliveries", params={"cursor": "WyJ4IiwgMV0"}),
                "nul": await api.get("/api/v1/deliveries", params={"eori": "LU\x00"}),
                "long": await api.get("/api/v1/deliveries", params={"procedure_id": "p" * 5000}),
            }
    items = [item for page in pages for item in page["items"]]
    assert [len(page["items"]) for page in pages] == [3, 3, 2]
    assert len({i["delivery_id"] for i in items}) == 8
    assert {i["procedure_id"] for i in items} == {event.data.procedure_id}
    assert len(dead) == 2 and {d["eori"] for d in dead} == {"LU0009"}
    assert dead[0]["attempts"][0]["outcome"] == "dead"
    assert [i["eori"] for i in one["items"]] == ["LU0003", "LU0003"]
    assert email == {"items": [], "next": None}
    assert all("secret-LU" not in json.dumps(i) for i in items)
    for name, response in bad.items():
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
