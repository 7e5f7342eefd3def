"""Webhook delivery against real loopback receivers, with the delivery log in a real SQLite database."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from aiokafka import ConsumerRecord
from pydantic import SecretStr
from sqlalchemy import select

from services.notifier.handlers import Notifier, idempotency_key
from services.notifier.models import AttemptRow, Base, DeliveryRow
from shared.config import KafkaSettings, NotifierSettings, Settings
from shared.db import make_engine, session_factory
from shared.events import (
    CloudEvent,
    DeliveryChannel,
    EoData,
    EventType,
    Language,
    ProcedureData,
    ProcedureState,
    Scenario,
    Scope,
)
from shared.kafka import Publisher, ensure_topics
from shared.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify
from tests.support import WebhookReceiver

pytestmark = pytest.mark.integration

_RECORD: ConsumerRecord[bytes, bytes] = ConsumerRecord(
    topic="t", partition=0, offset=0, timestamp=0, timestamp_type=0, key=None, value=None, checksum=None,
    serialized_key_size=0, serialized_value_size=0, headers=(),
)


@contextlib.asynccontextmanager
async def running_notifier(
    tmp_path: Path, kafka_bootstrap: str, prefix: str, **notifier: object
) -> AsyncIterator[tuple[Notifier, Callable[[], Awaitable[list[DeliveryRow]]]]]:
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix),
        notifier=NotifierSettings(**{
            "allow_insecure_webhooks": True, "allow_private_webhooks": True, "backoff_base_s": 0.05,
            "backoff_max_s": 0.2, "webhook_timeout_s": 5, **notifier,
        }),
    )
    await ensure_topics(settings.kafka)
    engine = make_engine(f"sqlite:///{tmp_path / f'notifier-{uuid.uuid4().hex[:6]}.db'}")
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    sessions = session_factory(engine)
    publisher = Publisher(settings.kafka, client_id="test")
    await publisher.start()
    async with httpx.AsyncClient() as client:
        service = Notifier(settings=settings, sessions=sessions, client=client, publisher=publisher)
        loop = asyncio.create_task(service.dispatch_loop(poll_s=0.05))

        async def rows() -> list[DeliveryRow]:
            async with sessions() as session:
                return list((await session.scalars(select(DeliveryRow).order_by(DeliveryRow.eori))).all())

        try:
            yield service, rows
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
    await publisher.stop()
    await engine.dispose()


async def _register(notifier: Notifier, eori: str, url: str, language: Language = Language.EN) -> None:
    event = CloudEvent[EoData](
        source="/tests", type=EventType.EO_UPSERTED, subject=eori,
        data=EoData(eori=eori, name=f"EO {eori}", language=language, email=None, webhook_url=url,
                    webhook_secret=SecretStr(f"secret-{eori}"), as4_endpoint=None),
    )
    await notifier.on_eo(event, _RECORD)


def _opened() -> CloudEvent[ProcedureData]:
    now = datetime.now(UTC)
    return CloudEvent[ProcedureData](
        source="/tests", type=EventType.PROCEDURE_OPENED, subject="p1",
        data=ProcedureData(procedure_id=f"p-{uuid.uuid4().hex[:8]}", scenario=Scenario.ADA_B2G_UNAVAILABLE,
                           scope=Scope.NATIONAL, state=ProcedureState.OPEN, reason="test", opened_at=now),
    )


async def _until(predicate: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_every_eo_gets_one_signed_notice_in_its_language(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    receiver = WebhookReceiver().start()
    try:
        async with running_notifier(tmp_path, kafka_bootstrap, topic_prefix) as (notifier, rows):
            await _register(notifier, "LU0001", receiver.url("/fr"), Language.FR)
            await _register(notifier, "LU0002", receiver.url("/de"), Language.DE)
            event = _opened()
            await notifier.on_procedure(event, _RECORD)
            await notifier.on_procedure(event, _RECORD)  # redelivered: plans nothing more

            async def both_delivered() -> bool:
                return [r.status for r in await rows()] == ["delivered", "delivered"]

            await _until(both_delivered)
    finally:
        receiver.stop()
    assert sorted(w.path for w in receiver.received) == ["/de", "/fr"]
    for hook in receiver.received:
        eori = "LU0001" if hook.path == "/fr" else "LU0002"
        assert verify(f"secret-{eori}", hook.body, hook.headers[SIGNATURE_HEADER], now=int(time.time()))
        assert hook.headers[IDEMPOTENCY_HEADER] == idempotency_key(event.id, eori, DeliveryChannel.WEBHOOK)
        body = hook.event
        assert body["id"] == event.id
        assert body["data"]["procedure_id"] == event.data.procedure_id
        assert body["data"]["language"] == hook.path.strip("/")
    by_lang = {w.path: w.event["data"]["message"] for w in receiver.received}
    assert "reste disponible" in by_lang["/fr"]
    assert "weiterhin verfügbar" in by_lang["/de"]


async def test_failures_are_retried_then_dead_lettered(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    flaky = WebhookReceiver(statuses=[500, 503]).start()
    broken = WebhookReceiver(statuses=[500] * 10).start()
    try:
        async with running_notifier(tmp_path, kafka_bootstrap, topic_prefix, max_attempts=3) as (notifier, rows):
            await _register(notifier, "LU0001", flaky.url())
            await _register(notifier, "LU0002", broken.url())
            await notifier.on_procedure(_opened(), _RECORD)

            async def settled() -> bool:
                return {r.status for r in await rows()} <= {"delivered", "dead"}

            await _until(settled)
            flaky_row, broken_row = await rows()
    finally:
        flaky.stop()
        broken.stop()
    assert (flaky_row.status, flaky_row.attempts) == ("delivered", 3)
    assert (broken_row.status, broken_row.attempts, broken_row.last_error) == ("dead", 3, "HTTP 500")
    assert len(flaky.received) == 3
    assert len(broken.received) == 3
    # Every retry of a notice carries the same Idempotency-Key.
    assert len({w.headers[IDEMPOTENCY_HEADER] for w in flaky.received}) == 1


async def test_a_hanging_endpoint_delays_no_other_eo(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> None:
    hanging = WebhookReceiver(delay_s=4).start()
    healthy = WebhookReceiver().start()
    try:
        async with running_notifier(tmp_path, kafka_bootstrap, topic_prefix) as (notifier, rows):
            await _register(notifier, "LU0001", hanging.url())
            await _register(notifier, "LU0002", healthy.url())
            await notifier.on_procedure(_opened(), _RECORD)

            async def healthy_delivered() -> bool:
                return any(r.eori == "LU0002" and r.status == "delivered" for r in await rows())

            await _until(healthy_delivered)
            statuses = {r.eori: r.status for r in await rows()}
            # The hanging EO's request is still in flight while the other one is already delivered.
            assert statuses == {"LU0001": "pending", "LU0002": "delivered"}
    finally:
        hanging.stop()
        healthy.stop()


async def test_private_webhook_refused_unless_allowed(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> None:
    receiver = WebhookReceiver().start()
    try:
        async with running_notifier(
            tmp_path, kafka_bootstrap, topic_prefix, allow_private_webhooks=False
        ) as (notifier, rows):
            await _register(notifier, "LU0001", receiver.url())
            await notifier.on_procedure(_opened(), _RECORD)

            async def dead() -> bool:
                return [r.status for r in await rows()] == ["dead"]

            await _until(dead)
            (row,) = await rows()
            async with notifier._sessions() as session:
                attempts = (await session.scalars(select(AttemptRow))).all()
    finally:
        receiver.stop()
    assert receiver.received == []
    assert "loopback/private" in (row.last_error or "")
    assert [a.outcome for a in attempts] == ["dead"]
