"""Use cases of the notifier: follow the EO registry, plan the notices of a procedure event, deliver them.

A procedure event's fan-out is written to the delivery log before its Kafka offset is committed, so a
restart resumes the pending deliveries instead of losing or redoing the whole fan-out. Each delivery runs
on its own task under a global concurrency bound: a slow EO endpoint holds one slot, not the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from datetime import UTC, datetime

import httpx
from aiokafka import ConsumerRecord
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifier.domain import Recipient, next_attempt_at, recipients, render, webhook_url_problem
from services.notifier.models import AttemptRow, DeliveryRow, EoRow
from shared.config import Settings
from shared.events import (
    CloudEvent,
    DeliveryChannel,
    DeliveryData,
    DeliveryStatus,
    EoData,
    EventType,
    Language,
    ProcedureData,
)
from shared.kafka import Publisher
from shared.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

SOURCE = "/luccs-fallback/notifier"
WEBHOOK_CONTENT_TYPE = "application/cloudevents+json"
_DUE_STATES = (DeliveryStatus.PENDING.value, DeliveryStatus.RETRYING.value)


def idempotency_key(event_id: str, eori: str | None, channel: DeliveryChannel) -> str:
    """Stable per (event, recipient, channel): a re-sent notice carries the same key."""
    return f"{event_id}:{eori or '-'}:{channel.value}"


class Notifier:
    def __init__(
        self,
        *,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        client: httpx.AsyncClient,
        publisher: Publisher,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._client = client
        self._publisher = publisher
        self._rng = rng or random.Random()
        self._due = asyncio.Event()
        self._in_flight: set[str] = set()
        self._slots = asyncio.Semaphore(settings.notifier.concurrency)

    async def on_eo(self, event: CloudEvent[EoData] | None, record: ConsumerRecord[bytes, bytes]) -> None:
        """Follow the compacted EO topic: an upsert replaces the entry, a tombstone removes it."""
        now = datetime.now(UTC)
        async with self._sessions.begin() as session:
            if event is None:
                if record.key is None:
                    raise ValueError("tombstone without a key: cannot tell which EO to remove")
                await session.execute(delete(EoRow).where(EoRow.eori == record.key.decode()))
                return
            eo = event.data
            row = await session.get(EoRow, eo.eori) or EoRow(eori=eo.eori)
            row.name = eo.name
            row.language = eo.language.value
            row.email = eo.email
            row.webhook_url = eo.webhook_url
            row.webhook_secret = eo.webhook_secret.get_secret_value() if eo.webhook_secret else None
            row.updated_at = now
            session.add(row)

    async def on_procedure(
        self, event: CloudEvent[ProcedureData] | None, _record: ConsumerRecord[bytes, bytes]
    ) -> None:
        """Plan one webhook delivery per EO to notify; already planned ones (a redelivery) are kept as they are."""
        assert event is not None  # tombstones on this topic are dead-lettered by the consumer
        now = datetime.now(UTC)
        async with self._sessions.begin() as session:
            eos = {row.eori: row for row in (await session.scalars(select(EoRow))).all()}
            targets = recipients(
                event.type,
                event.data,
                (Recipient(r.eori, Language(r.language), r.webhook_url) for r in eos.values()),
            )
            planned = set(
                (await session.scalars(select(DeliveryRow.eori).where(DeliveryRow.event_id == event.id))).all()
            )
            for target in targets:
                if target.webhook_url is None or target.eori in planned:
                    continue
                notice = render(event.type, event.data, target.language)
                body = event.model_dump(mode="json")
                body["data"] |= {"language": target.language.value, "subject": notice.subject,
                                 "message": notice.message}
                session.add(
                    DeliveryRow(
                        id=str(uuid.uuid4()),
                        event_id=event.id,
                        event_type=event.type,
                        procedure_id=event.data.procedure_id,
                        eori=target.eori,
                        channel=DeliveryChannel.WEBHOOK.value,
                        recipient=target.webhook_url,
                        body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
                        status=DeliveryStatus.PENDING.value,
                        attempts=0,
                        next_attempt_at=now,
                        created_at=now,
                    )
                )
        log.info("planned notices of %s for %s (%d EOs)", event.type, event.data.procedure_id, len(targets))
        self._due.set()

    async def dispatch_loop(self, *, poll_s: float = 1.0) -> None:
        """Start a delivery task for every due delivery, forever, within the concurrency bound."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), timeout=poll_s)
            self._due.clear()
            try:
                await self._dispatch_due()
            except Exception:
                log.exception("dispatching deliveries failed; retrying")
                await asyncio.sleep(poll_s)

    async def _dispatch_due(self) -> None:
        now = datetime.now(UTC)
        async with self._sessions() as session:
            due = (
                await session.scalars(
                    select(DeliveryRow)
                    .where(DeliveryRow.status.in_(_DUE_STATES), DeliveryRow.next_attempt_at <= now)
                    .order_by(DeliveryRow.next_attempt_at)
                    .limit(self._settings.notifier.concurrency * 4)
                )
            ).all()
        for row in due:
            if row.id in self._in_flight:
                continue
            await self._slots.acquire()
            self._in_flight.add(row.id)
            asyncio.create_task(self._deliver(row), name=f"deliver:{row.id}")  # noqa: RUF006 - tracked in _in_flight

    async def _deliver(self, row: DeliveryRow) -> None:
        try:
            await self._attempt_webhook(row)
        except Exception:
            log.exception("delivery %s crashed", row.id)
        finally:
            self._in_flight.discard(row.id)
            self._slots.release()
            self._due.set()

    async def _attempt_webhook(self, row: DeliveryRow) -> None:
        cfg = self._settings.notifier
        attempt = row.attempts + 1
        started = time.perf_counter()
        http_status: int | None = None
        error = webhook_url_problem(
            row.recipient, allow_insecure=cfg.allow_insecure_webhooks, allow_private=cfg.allow_private_webhooks
        )
        permanent = error is not None
        if error is None:
            secret = await self._secret(row.eori)
            if secret is None:
                error, permanent = "EO has no webhook secret: notices cannot be signed", True
            else:
                headers = {
                    "Content-Type": WEBHOOK_CONTENT_TYPE,
                    IDEMPOTENCY_HEADER: idempotency_key(row.event_id, row.eori, DeliveryChannel.WEBHOOK),
                    SIGNATURE_HEADER: sign(secret, row.body, int(time.time())),
                    "User-Agent": "luccs-fallback-notifier/1",
                }
                try:
                    response = await self._client.post(
                        row.recipient, content=row.body, headers=headers, timeout=cfg.webhook_timeout_s
                    )
                    http_status = response.status_code
                    if not 200 <= http_status < 300:
                        error = f"HTTP {http_status}"
                except httpx.TimeoutException:
                    error = f"no answer within {cfg.webhook_timeout_s}s"
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
        await self._record(row, attempt=attempt, http_status=http_status, error=error, permanent=permanent,
                           duration_ms=(time.perf_counter() - started) * 1000)

    async def _secret(self, eori: str | None) -> str | None:
        async with self._sessions() as session:
            eo = await session.get(EoRow, eori) if eori else None
            return eo.webhook_secret if eo else None

    async def _record(
        self, row: DeliveryRow, *, attempt: int, http_status: int | None, error: str | None, permanent: bool,
        duration_ms: float,
    ) -> None:
        cfg = self._settings.notifier
        now = datetime.now(UTC)
        if error is None:
            status, retry_at = DeliveryStatus.DELIVERED, None
        else:
            retry_at = None if permanent else next_attempt_at(
                attempt, now=now, max_attempts=cfg.max_attempts, base_s=cfg.backoff_base_s,
                max_s=cfg.backoff_max_s, rng=self._rng,
            )
            status = DeliveryStatus.RETRYING if retry_at else DeliveryStatus.DEAD
        async with self._sessions.begin() as session:
            stored = await session.get(DeliveryRow, row.id)
            assert stored is not None
            stored.attempts = attempt
            stored.status = status.value
            stored.next_attempt_at = retry_at
            stored.last_error = error
            stored.last_http_status = http_status
            stored.delivered_at = now if status == DeliveryStatus.DELIVERED else None
            session.add(AttemptRow(delivery_id=row.id, attempt=attempt, at=now, outcome=status.value,
                                   http_status=http_status, error=error, duration_ms=round(duration_ms, 3)))
        if status == DeliveryStatus.DEAD:
            log.warning("delivery %s to %s dead after %d attempts: %s", row.id, row.eori, attempt, error)
        outcome = CloudEvent[DeliveryData](
            source=SOURCE,
            type=EventType.DELIVERY_RECORDED,
            subject=row.procedure_id,
            data=DeliveryData(
                delivery_id=row.id, event_id=row.event_id, procedure_id=row.procedure_id, eori=row.eori,
                channel=DeliveryChannel(row.channel), recipient=row.recipient, attempt=attempt, status=status,
                http_status=http_status, error=error, at=now,
            ),
        )
        try:
            await self._publisher.publish(self._settings.kafka.deliveries_topic, outcome, key=row.procedure_id)
        except Exception as exc:  # the delivery log is the record; the topic is a feed for others
            log.warning("could not publish delivery outcome %s: %s", row.id, exc)
