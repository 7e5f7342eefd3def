"""Kafka plumbing shared by the services: topic creation, a publisher, and a dead-lettering consumer.

Offsets are committed only after the handler has returned, so a handler must make its effect durable
before it returns and be idempotent: a crash between the effect and the commit redelivers the message.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from shared.config import KafkaSettings
from shared.events import CloudEvent, DataT, DeadLetterData, EventType, InvalidEvent, parse_event

log = logging.getLogger(__name__)

CONTRACT_TOPICS = ("availability", "procedures", "advisories", "eos", "deliveries", "deadletter")
_COMPACTED = {"eos"}


async def ensure_topics(settings: KafkaSettings, *, timeout_s: float = 60.0) -> list[str]:
    """Create the contract topics that do not exist yet (never relying on auto-creation).

    Waits for the broker up to ``timeout_s`` so that services may start before it answers.
    Returns the names of the topics it created.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=10_000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = [
                NewTopic(
                    name=settings.topic(name),
                    num_partitions=1 if name in _COMPACTED else settings.partitions,
                    replication_factor=1,
                    topic_configs={"cleanup.policy": "compact"} if name in _COMPACTED else {},
                )
                for name in CONTRACT_TOPICS
                if settings.topic(name) not in existing
            ]
            created: list[str] = []
            for topic in wanted:  # one at a time: a racing service creating the same topic is fine
                try:
                    await admin.create_topics([topic])
                    created.append(topic.name)
                except TopicAlreadyExistsError:
                    pass
            if created:
                log.info("created topics %s", ", ".join(created))
            return created
        except (KafkaConnectionError, KafkaError, OSError) as exc:
            if time.monotonic() >= deadline:
                raise ConnectionError(
                    f"Kafka at {settings.bootstrap_servers} did not answer within {timeout_s:.0f}s: {exc}"
                ) from exc
            log.warning("Kafka not reachable yet (%s); retrying", exc)
            await asyncio.sleep(1.0)
        finally:
            await admin.close()


class Publisher:
    """Publishes CloudEvents, waiting for the broker's acknowledgement (acks=all)."""

    def __init__(self, settings: KafkaSettings, *, client_id: str) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=15_000,
        )
        self.started = False

    async def start(self) -> None:
        await self._producer.start()
        self.started = True

    async def stop(self) -> None:
        if self.started:
            await self._producer.stop()
            self.started = False

    async def publish(self, topic: str, event: CloudEvent[Any], *, key: str | None) -> None:
        await self.publish_raw(topic, event.to_bytes(), key=key)

    async def publish_raw(self, topic: str, value: bytes | None, *, key: str | None) -> None:
        await self._producer.send_and_wait(topic, value=value, key=key.encode() if key is not None else None)


Handler = Callable[[CloudEvent[DataT] | None, ConsumerRecord[bytes, bytes]], Awaitable[None]]


@dataclass
class ConsumerStats:
    processed: int = 0
    dead_lettered: int = 0
    last_error: str | None = None
    assigned: bool = False
    lag_by_partition: dict[int, int] = field(default_factory=dict)


class EventConsumer(Generic[DataT]):
    """Consumes one contract topic, validates each message and hands it to ``handler``.

    A message that cannot be parsed or validated, or that the handler keeps failing on after
    ``handler_attempts`` tries, goes to the dead-letter topic with the reason and its original bytes;
    the consumer then carries on with the next message. Tombstones (null values) reach the handler as
    ``None`` when ``allow_tombstones`` is set, and are dead-lettered otherwise.
    """

    def __init__(
        self,
        *,
        settings: KafkaSettings,
        topic: str,
        group_id: str,
        data_model: type[DataT],
        handler: Handler[DataT],
        publisher: Publisher,
        allow_tombstones: bool = False,
        handler_attempts: int = 5,
        retry_delay_s: float = 0.5,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self._settings = settings
        self._data_model = data_model
        self._handler = handler
        self._publisher = publisher
        self._allow_tombstones = allow_tombstones
        self._handler_attempts = handler_attempts
        self._retry_delay_s = retry_delay_s
        self.stats = ConsumerStats()

    async def run(self) -> None:
        """Consume until cancelled."""
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self._settings.bootstrap_servers,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
        )
        await consumer.start()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=500)
                self.stats.assigned = bool(consumer.assignment())
                for partition, records in batches.items():
                    for record in records:
                        await self._process(record)
                    await self._commit(consumer, partition, records[-1].offset + 1)
        finally:
            await consumer.stop()

    async def _commit(self, consumer: AIOKafkaConsumer, partition: TopicPartition, offset: int) -> None:
        try:
            await consumer.commit({partition: offset})
        except KafkaError as exc:
            # A rebalance took the partition away: the next owner re-reads from the last commit,
            # which handlers tolerate because they are idempotent.
            log.warning("commit of %s@%d failed: %s", partition, offset, exc)

    async def _process(self, record: ConsumerRecord[bytes, bytes]) -> None:
        event: CloudEvent[DataT] | None = None
        if record.value is None:
            if not self._allow_tombstones:
                await self._dead_letter(record, "tombstone (null value) on a topic that does not allow them")
                return
        else:
            try:
                event = parse_event(record.value, self._data_model)
            except InvalidEvent as exc:
                await self._dead_letter(record, str(exc))
                return
        for attempt in range(1, self._handler_attempts + 1):
            try:
                await self._handler(event, record)
                self.stats.processed += 1
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.exception(
                    "handler failed on %s[%d]@%d (attempt %d/%d)",
                    record.topic, record.partition, record.offset, attempt, self._handler_attempts,
                )
                if attempt == self._handler_attempts:
                    await self._dead_letter(record, f"handler failed {attempt} times: {self.stats.last_error}")
                    return
                await asyncio.sleep(self._retry_delay_s * 2 ** (attempt - 1))

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        log.warning("dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)
        letter = CloudEvent[DeadLetterData](
            source=f"/luccs-fallback/{self.group_id}",
            type=EventType.DEADLETTER_RECORDED,
            subject=f"{record.topic}/{record.partition}/{record.offset}",
            data=DeadLetterData(
                source_topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                consumer_group=self.group_id,
                key=_b64(record.key),
                value=_b64(record.value),
                reason=reason,
            ),
        )
        await self._publisher.publish(self._settings.deadletter_topic, letter, key=record.topic)
        self.stats.dead_lettered += 1


def _b64(raw: bytes | None) -> str | None:
    return base64.b64encode(raw).decode() if raw is not None else None
