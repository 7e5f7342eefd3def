"""Kafka plumbing shared by the services: topic creation, a publisher, and a dead-lettering consumer.

Offsets are committed only after the handler has returned, so a handler must make its effect durable
before it returns and be idempotent: a crash between the effect and the commit redelivers the message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeAlias, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.partitioner import DefaultPartitioner

from shared._kafka_connection import (
    KafkaAccessDenied,
    access_denied,
    connection_failure,
    connection_options,
    start_client,
)
from shared.config import KafkaSettings
from shared.events import (
    CloudEvent,
    DataT,
    DeadLetterData,
    EventType,
    ForeignEvent,
    InvalidEvent,
    claims,
    parse_event,
)
from shared.retry import Backoff, RetryPolicy, retrying

__all__ = [
    "CONTRACT_TOPICS",
    "BatchHandler",
    "ClusterTooSmall",
    "ConsumerStats",
    "EventConsumer",
    "EventSink",
    "Handler",
    "Item",
    "KafkaAccessDenied",
    "Publisher",
    "access_denied",
    "connection_failure",
    "connection_options",
    "dead_letter",
    "ensure_topics",
    "start_client",
]

log = logging.getLogger(__name__)

CONTRACT_TOPICS = ("availability", "procedures", "advisories", "eos", "deliveries", "deadletter")
_COMPACTED = {"eos"}


class ClusterTooSmall(ValueError):
    """``kafka.replication_factor`` exceeds the brokers of the cluster: the topics cannot be created."""


def _replication_problem(settings: KafkaSettings, brokers: int) -> str | None:
    if settings.replication_factor <= brokers:
        return None
    return (f"kafka.replication_factor = {settings.replication_factor} but the cluster at "
            f"{settings.bootstrap_servers} has {brokers} broker{'s' if brokers != 1 else ''} answering: lower "
            "kafka.replication_factor (and kafka.min_insync_replicas) or add brokers")


async def ensure_topics(
    settings: KafkaSettings, *, timeout_s: float = 60.0, sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[str]:
    """Create the contract topics that do not exist yet (never relying on auto-creation), with
    ``replication_factor`` replicas and ``min_insync_replicas`` (topics that exist are left as they are).

    Waits for the broker up to ``timeout_s`` so that services may start before it answers. Raises
    :class:`ClusterTooSmall` when topics are to be created and fewer brokers than ``replication_factor``
    answer (when they all exist, that is only a warning: a broker may be restarting). Returns the names of
    the topics it created.
    """
    async def attempt() -> list[str]:
        admin = AIOKafkaAdminClient(**connection_options(settings), request_timeout_ms=10_000)
        try:
            await start_client(admin, settings)
            existing = set(await admin.list_topics())
            wanted = [
                NewTopic(
                    name=settings.topic(name),
                    num_partitions=1 if name in _COMPACTED else settings.partitions,
                    replication_factor=settings.replication_factor,
                    topic_configs={"min.insync.replicas": str(settings.min_insync_replicas)}
                    | ({"cleanup.policy": "compact"} if name in _COMPACTED else {}),
                )
                for name in CONTRACT_TOPICS
                if settings.topic(name) not in existing
            ]
            problem = _replication_problem(settings, len((await admin.describe_cluster())["brokers"]))
            if problem and wanted:
                raise ClusterTooSmall(problem)
            if problem:
                log.warning("%s (the topics exist: carrying on)", problem)
            created: list[str] = []
            if wanted:
                # Errors come back per topic in the response, not as exceptions.
                response = await admin.create_topics(wanted, timeout_ms=15_000)
                for name, code, *rest in response.topic_errors:
                    if code == 0:
                        created.append(name)
                    elif code != TopicAlreadyExistsError.errno:  # a racing service created it: fine
                        raise for_code(code)(f"cannot create topic {name}: {rest[0] if rest else code}")
            if created:
                log.info("created topics %s", ", ".join(created))
            return created
        finally:
            await admin.close()

    def failed(_attempt: int, exc: Exception, delay_s: float | None) -> None:
        if delay_s is not None:
            log.warning("Kafka not reachable yet (%s); retrying", exc)

    try:
        return await retrying(attempt, policy=RetryPolicy(Backoff(first_s=1.0, factor=1.0), max_elapsed_s=timeout_s),
                              retry_if=_transient, on_failure=failed, sleep=sleep, clock=clock)
    except (KafkaError, OSError) as exc:
        if not _transient(exc):
            raise
        raise ConnectionError(
            f"Kafka at {settings.bootstrap_servers} did not answer within {timeout_s:.0f}s: {exc}"
        ) from exc


def _transient(exc: Exception) -> bool:
    """A failure to reach the broker that waiting may cure (not a refusal of our credentials)."""
    if isinstance(exc, KafkaAccessDenied):
        return False
    return isinstance(exc, OSError | KafkaConnectionError) or (
        isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False)))


PUBLISH_BATCH_BYTES = 512 * 1024
"""A record batch's size at most (the producer's ``max_batch_size``): half of what a broker takes by default
(``message.max.bytes``, 1 MiB), about 800 delivery events of a fan-out in one batch instead of 25. A topic
whose ``max.message.bytes`` is set lower than this refuses the batches of ``publish_many``."""
PUBLISH_MESSAGE_BYTES = 1024 * 1024
"""One message at most (key, value and the record's overhead): the producer's ``max_request_size``."""
_RECORD_OVERHEAD = 128


class Publisher:
    """Publishes CloudEvents, waiting for the broker's acknowledgement (acks=all).

    By default idempotent: what the broker has not acknowledged is retried until it returns, then delivered
    in order (the outboxes and the delivery log hold it meanwhile). With ``expire_after_s``, for messages
    that go stale: a send not acknowledged within that time fails instead. aiokafka never expires an
    idempotent producer's batches, so that mode is not idempotent; a send retried after a lost
    acknowledgement may then reach the broker twice (the detector's consumers ignore an observation they
    already have). The detector needs it: a "down" held back while the broker was away and delivered after
    the "up" that followed would open and close a procedure after the fact; its latest-state buffer
    publishes only the latest state once the broker is back.
    """

    def __init__(self, settings: KafkaSettings, *, client_id: str, expire_after_s: float | None = None) -> None:
        self._settings = settings
        self._expire_after_s = expire_after_s
        self._producer = AIOKafkaProducer(
            **connection_options(settings),
            client_id=client_id,
            acks="all",
            enable_idempotence=expire_after_s is None,
            linger_ms=0,  # latency first: publish_many already hands over whole batches
            max_batch_size=PUBLISH_BATCH_BYTES,
            max_request_size=PUBLISH_MESSAGE_BYTES,
            request_timeout_ms=15_000 if expire_after_s is None else int(expire_after_s * 1000),
        )
        self._partitioner = DefaultPartitioner()
        self.started = False

    async def start(self) -> None:
        try:
            await start_client(self._producer, self._settings)
        except BaseException:
            await self._producer.stop()  # nothing to flush; closes what the failed start opened
            raise
        self.started = True

    async def stop(self, *, timeout_s: float = 10.0) -> None:
        """Flush and close; give up after ``timeout_s`` (an idempotent producer would wait forever for a
        broker that is gone, and the outbox or delivery log still holds what was not acknowledged). With
        ``expire_after_s`` the flush ends by itself (what is unacknowledged expires), so it is awaited whole:
        cut short, it would leave its broker connections open."""
        if not self.started or self._expire_after_s is not None:
            self.started = False
            await self._producer.stop()  # never started (a start-up that failed first): only release it
            return
        self.started = False
        try:
            await asyncio.wait_for(self._producer.stop(), timeout=timeout_s)
        except TimeoutError:
            log.warning("Kafka producer did not flush within %.0fs; stopping without it", timeout_s)

    async def partitions_for(self, topic: str) -> set[int]:
        """The partition numbers of ``topic`` (from the cluster's metadata)."""
        return set(await self._producer.partitions_for(topic))

    async def publish(self, topic: str, event: CloudEvent[Any], *, key: str | None) -> None:
        await self.publish_raw(topic, event.to_bytes(), key=key)

    async def publish_raw(self, topic: str, value: bytes | None, *, key: str | None) -> None:
        async with self._backstop():
            await self._producer.send_and_wait(topic, value=value, key=key.encode() if key is not None else None)

    def _backstop(self) -> asyncio.Timeout:
        """With ``expire_after_s``: the batch expires first; this bounds the wait if it somehow does not."""
        return asyncio.timeout(None if self._expire_after_s is None else self._expire_after_s * 2)

    async def publish_many(self, messages: Sequence[tuple[str, str | None, bytes | None]]) -> None:
        """Send (topic, key, value) messages in order and wait until the broker has acknowledged them all.

        Packed into record batches here, each partition's messages in their order, on the partition the
        producer itself would pick for the key (its default partitioner), and handed over a batch at a time:
        ``send`` per message costs the producer an await, a future and its own packing each, three times the
        CPU (22 against 7.5 us per message of 650 bytes, 100,000 of them: a national fan-out's deliveries feed)."""
        async with self._backstop():
            pending = []
            for (topic, partition), items in (await self._by_partition(messages)).items():
                batch = self._producer.create_batch()
                for key, value in items:
                    if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start the next
                        pending.append(await self._send_batch(batch, topic, partition))
                        batch = self._producer.create_batch()
                        batch.append(key=key, value=value, timestamp=None)  # an empty batch takes any message
                pending.append(await self._send_batch(batch, topic, partition))
            await asyncio.gather(*pending)

    async def _by_partition(
        self, messages: Sequence[tuple[str, str | None, bytes | None]]
    ) -> dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]]:
        partitions: dict[str, list[int]] = {}
        grouped: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = {}
        # A key's partition worked out once per call: the partitioner hashes in Python (murmur2, a few us), and a
        # fan-out's outcomes share one key (the procedure).
        picked: dict[tuple[str, bytes | None], int] = {}
        for topic, key, value in messages:
            # Refused here, before anything is sent, as the producer's send refuses it: a batch the broker
            # refuses as too large would cost the idempotent producer its sequence numbers on that partition,
            # and every later message there would fail until a restart.
            key_bytes = key.encode() if key is not None else None
            size = len(key_bytes or b"") + len(value or b"") + _RECORD_OVERHEAD
            if size > PUBLISH_MESSAGE_BYTES:
                raise MessageSizeTooLargeError(f"a message of about {size} bytes for {topic} is larger than "
                                               f"{PUBLISH_MESSAGE_BYTES} bytes: not published")
            numbers = partitions.get(topic)
            if numbers is None:
                numbers = partitions[topic] = sorted(await self._producer.partitions_for(topic))
            partition = picked.get((topic, key_bytes)) if key_bytes is not None else None
            if partition is None:
                partition = self._partitioner(key_bytes, numbers, numbers)
                if key_bytes is not None:
                    picked[(topic, key_bytes)] = partition
            grouped.setdefault((topic, partition), []).append((key_bytes, value))
        return grouped

    async def _send_batch(self, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        batch.close()  # this batch is ours alone: a send() meanwhile starts a batch of its own
        return cast(asyncio.Future[Any], await self._producer.send_batch(batch, topic, partition=partition))


Handler = Callable[[CloudEvent[DataT] | None, ConsumerRecord[bytes, bytes]], Awaitable[None]]
# Quoted: a parametrised pydantic model is not generic at runtime, so these exist for type checkers only.
Item: TypeAlias = "tuple[CloudEvent[DataT] | None, ConsumerRecord[bytes, bytes]]"
BatchHandler: TypeAlias = "Callable[[Sequence[Item[DataT]]], Awaitable[None]]"


class EventSink(Protocol):
    """Where a consumer sends its dead letters (and learns a topic's partitions): a :class:`Publisher`, or a
    service's own producer."""

    async def publish(self, topic: str, event: CloudEvent[Any], *, key: str | None) -> None: ...

    async def partitions_for(self, topic: str) -> set[int]: ...


@dataclass
class ConsumerStats:
    processed: int = 0
    dead_lettered: int = 0
    last_error: str | None = None
    assigned: bool = False
    lag: int = 0
    """Messages on the assigned partitions not handled yet, as of the last poll (highwater - next offset)."""


class EventConsumer(Generic[DataT]):
    """Consumes one contract topic, validates each message and hands it to a handler.

    Give either ``handler`` (one message at a time) or ``batch_handler`` (every valid message of a poll at
    once, in partition order: one transaction for many messages). Offsets are committed after the handler
    returns. A message that cannot be parsed or validated, or that the handler keeps failing on after
    ``handler_attempts`` tries, goes to the dead-letter topic with the reason and its original bytes; the
    consumer then carries on. A failing batch is retried, then handled message by message so that only the
    culprit is dead-lettered. Tombstones (null values) reach the handler as ``None`` when
    ``allow_tombstones`` is set, and are dead-lettered otherwise.

    With ``assign_all`` the consumer reads every partition of the topic without joining the group (offsets
    are still committed under ``group_id``): for a service of which one instance at a time consumes, the
    leader starts reading at once instead of waiting for a dead member's session to expire. Exceptions of
    ``stop_on`` raised by the handler are not retried: they end :meth:`run` (the poll under way uncommitted).

    With ``group_id`` None (and ``assign_all``) it reads the whole topic from the beginning at every
    :meth:`run` and commits nothing (its dead letters name it ``name``); ``on_caught_up`` is called once it has
    read up to where the topic ended when it started (a compacted registry replayed).
    """

    def __init__(
        self,
        *,
        settings: KafkaSettings,
        topic: str,
        group_id: str | None,
        data_model: type[DataT],
        publisher: EventSink,
        handler: Handler[DataT] | None = None,
        batch_handler: BatchHandler[DataT] | None = None,
        allow_tombstones: bool = False,
        handler_attempts: int = 5,
        retry_delay_s: float = 0.5,
        max_batch: int = 500,
        assign_all: bool = False,
        stop_on: tuple[type[Exception], ...] = (),
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        name: str | None = None,
        on_caught_up: Callable[[], None] | None = None,
    ) -> None:
        if (handler is None) == (batch_handler is None):
            raise ValueError("give exactly one of handler and batch_handler")
        if (group_id is None or on_caught_up is not None) and not assign_all:
            raise ValueError("reading without a group, or until caught up, needs assign_all")
        self.topic = topic
        self.group_id = group_id
        self.name = name or group_id or topic
        self._on_caught_up = on_caught_up
        self._settings = settings
        self._data_model = data_model
        self._handler = handler
        self._batch_handler = batch_handler
        self._publisher = publisher
        self._allow_tombstones = allow_tombstones
        self._handler_attempts = handler_attempts
        self._backoff = Backoff(first_s=retry_delay_s)  # doubling, no cap: the attempts bound it
        self._sleep = sleep
        self._max_batch = max_batch
        self._assign_all = assign_all
        self._stop_on = stop_on
        self.stats = ConsumerStats()

    async def run(self) -> None:
        """Consume until cancelled."""
        consumer = AIOKafkaConsumer(
            *(() if self._assign_all else (self.topic,)),
            **connection_options(self._settings),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
        )
        # A poll's offsets are committed while the next poll is handled (one commit at a time, in order):
        # a broker round trip less between a message's arrival and its handling. On stop, what was handled
        # of the poll under way is committed, so that a restart does not hand it out again.
        handled: dict[TopicPartition, int] = {}  # of this poll: per partition, the offset after the last handled
        committing: asyncio.Task[None] | None = None
        positions: dict[TopicPartition, int] = {}  # per partition, the offset after the last handled (for lag)
        try:
            # inside the try: a cancel while joining the group must still close it
            await start_client(consumer, self._settings)
            caught_up, ends = self._on_caught_up, None
            if self._assign_all:
                partitions = await self._publisher.partitions_for(self.topic)
                consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
                if caught_up is not None:
                    ends = await consumer.end_offsets(list(consumer.assignment()))
            while True:
                if caught_up is not None and ends is not None and await _reached(consumer, ends):
                    caught_up()
                    caught_up = None
                batches = await consumer.getmany(timeout_ms=500, max_records=self._max_batch)
                self.stats.assigned = bool(consumer.assignment())
                if not batches:
                    self.stats.lag = _lag(consumer, positions)
                    continue
                records = [record for partition_records in batches.values() for record in partition_records]
                handled = {}
                if self._batch_handler is not None:
                    await self._process_batch(self._batch_handler, records)
                    handled.update({tp: rs[-1].offset + 1 for tp, rs in batches.items() if rs})
                else:
                    for record in records:
                        await self._process(record)
                        handled[TopicPartition(record.topic, record.partition)] = record.offset + 1
                if committing is not None:
                    await asyncio.shield(committing)  # a stop while waiting must not cancel the commit itself
                committing = asyncio.create_task(self._commit(consumer, handled), name=f"commit {self.topic}")
                positions.update({tp: rs[-1].offset + 1 for tp, rs in batches.items() if rs})
                self.stats.lag = _lag(consumer, positions)
                handled = {}
        finally:
            await self._commit_on_stop(consumer, committing, handled)
            await consumer.stop()

    async def _commit_on_stop(
        self, consumer: AIOKafkaConsumer, committing: asyncio.Task[None] | None,
        handled: dict[TopicPartition, int],
    ) -> None:
        """Let the commit under way finish, then commit what was handled since (bounded: the broker may be gone)."""
        try:
            async with asyncio.timeout(5):
                if committing is not None:
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await asyncio.shield(committing)
                if handled:
                    await self._commit(consumer, handled)
        except TimeoutError:
            log.warning("the last offsets of %s were not committed on stop: they will be handled again", self.topic)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        if self.group_id is None:
            return  # no group: nothing to commit to
        # A rebalance may have taken partitions away while the poll was handled: their next owner re-reads
        # from the last commit (handlers are idempotent), and committing them would fail the whole request.
        owned = consumer.assignment()
        offsets = {tp: offset for tp, offset in offsets.items() if tp in owned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("commit of %s failed: %s", offsets, exc)

    async def _parse(self, record: ConsumerRecord[bytes, bytes]) -> Item[DataT] | None:
        """The (event, record) item, the event being None for an allowed tombstone; None if dead-lettered."""
        if record.value is None:
            if self._allow_tombstones:
                return None, record
            if claims(self._data_model, None):  # a guest on the topic leaves it to the topic's own consumers
                await self._dead_letter(record, "tombstone (null value) on a topic that does not allow them")
            return None
        try:
            return parse_event(record.value, self._data_model), record
        except ForeignEvent:
            return None  # another consumer's kind of event on a shared topic
        except InvalidEvent as exc:
            await self._dead_letter(record, str(exc))
            return None

    async def _process(self, record: ConsumerRecord[bytes, bytes]) -> None:
        item = await self._parse(record)
        handler = self._handler
        assert handler is not None
        if item is not None and await self._with_retries(lambda: handler(*item), [record]):
            self.stats.processed += 1

    async def _process_batch(self, handler: BatchHandler[DataT], records: list[ConsumerRecord[bytes, bytes]]) -> None:
        items = [item for item in [await self._parse(r) for r in records] if item is not None]
        if not items:
            return
        if await self._with_retries(lambda: handler(items), []):
            self.stats.processed += len(items)
            return
        for item in items:  # find the culprit: only it is dead-lettered

            async def one(item: Item[DataT] = item) -> None:
                await handler([item])

            if await self._with_retries(one, [item[1]], attempts=1):
                self.stats.processed += 1

    async def _with_retries(
        self,
        call: Callable[[], Awaitable[None]],
        dead_letter_on_failure: list[ConsumerRecord[bytes, bytes]],
        attempts: int | None = None,
    ) -> bool:
        attempts = attempts or self._handler_attempts

        def failed(attempt: int, exc: Exception, _delay_s: float | None) -> None:
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("handler failed on %s (attempt %d/%d)", self.topic, attempt, attempts)

        try:
            await retrying(call, policy=RetryPolicy(self._backoff, max_attempts=attempts), on_failure=failed,
                           retry_if=lambda exc: not isinstance(exc, self._stop_on), sleep=self._sleep)
        except self._stop_on:
            raise
        except Exception:  # given up, every failure logged by failed()
            for record in dead_letter_on_failure:
                await self._dead_letter(record, f"handler failed {attempts} times: {self.stats.last_error}")
            return False
        return True

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        log.warning("dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)
        letter = dead_letter(record, consumer=self.name, reason=reason)
        await self._publisher.publish(self._settings.deadletter_topic, letter, key=record.topic)
        self.stats.dead_lettered += 1


async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for partition, end in ends.items():
        if await consumer.position(partition) < end:
            return False
    return True


def _lag(consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int]) -> int:
    """Messages behind on the assigned partitions this consumer has handled any of (the broker's highwater
    comes with each fetch)."""
    behind = 0
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is not None and tp in positions:
            behind += max(0, highwater - positions[tp])
    return behind


def dead_letter(record: ConsumerRecord[bytes, bytes], *, consumer: str, reason: str) -> CloudEvent[DeadLetterData]:
    """The dead-letter event of a message ``consumer`` could not process: why, and its original bytes."""
    return CloudEvent[DeadLetterData](
        source=f"/luccs-fallback/{consumer}",
        type=EventType.DEADLETTER_RECORDED,
        subject=f"{record.topic}/{record.partition}/{record.offset}",
        data=DeadLetterData(
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            consumer_group=consumer,
            key=_b64(record.key),
            value=_b64(record.value),
            reason=reason,
        ),
    )


def _b64(raw: bytes | None) -> str | None:
    return base64.b64encode(raw).decode() if raw is not None else None
