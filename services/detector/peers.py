"""Which detector instances are alive, from their heartbeats on the availability topic (``vantage_points``).

Every instance probes every configured (national) target and re-publishes each one's state every
``heartbeat_s``, its ``detector_instance`` in the event: that is how an instance announces itself, and no
other message is needed. This follower reads the availability topic without a consumer group (every
partition, offsets never committed), starting ``vantage_timeout_s`` back in time so that the instances alive
now are known after one pass; records keyed by an EO target (``eo:...``) are skipped without being parsed.
Once it has read up to where the topic ended at its start, and then whenever the live set changes (an
instance seen for the first time, or not heard from for ``vantage_timeout_s``), it hands the live set over.

Not :class:`shared.kafka.EventConsumer`: that one validates every record and dead-letters what it cannot read,
which on this topic is the procedure service's job (a poison message would be dead-lettered twice), and it
starts at the beginning of the topic. Messages this follower cannot read are left to the procedure service.
While the broker is unreachable no heartbeat arrives: the other instances time out and this one takes over
their share, which errs on the side of probing more.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from services.detector.targets import EO_TARGET_PREFIX
from services.detector.vantage import Membership
from shared.config import KafkaSettings
from shared.kafka import connection_options, start_client

log = logging.getLogger(__name__)

_EO_KEY = EO_TARGET_PREFIX.encode()


def heartbeat_instance(record: ConsumerRecord[bytes, bytes]) -> str | None:
    """The detector instance a national target's availability record comes from, else None."""
    if record.key is None or record.key.startswith(_EO_KEY) or record.value is None:
        return None
    try:
        instance = json.loads(record.value)["data"]["detector_instance"]
    except (ValueError, TypeError, KeyError):
        return None
    return instance if isinstance(instance, str) and instance else None


class PeerWatch:
    """Follows the detector instances' heartbeats and reports the live set (see the module docstring)."""

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        membership: Membership,
        on_members: Callable[[frozenset[str]], object],
        clock: Callable[[], float] = time.time,
        retry_s: float = 2.0,
    ) -> None:
        self.topic = kafka.availability_topic
        self._kafka = kafka
        self._membership = membership
        self._on_members = on_members
        self._clock = clock
        self._retry_s = retry_s
        self._reported: frozenset[str] | None = None
        self.caught_up = False
        self.last_error: str | None = None

    async def run(self) -> None:
        """Follow the topic until cancelled; after a failure, start again (from the lookback) after a pause."""
        while True:
            try:
                await self._follow()
            except (KafkaError, OSError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("detector heartbeats on %s: %s; again in %.0fs", self.topic, self.last_error,
                            self._retry_s)
                self._report()  # the others time out meanwhile: take over their share
                await asyncio.sleep(self._retry_s)

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(
            self.topic,
            **connection_options(self._kafka),
            client_id=f"{self._kafka.topic_prefix}.detector.{self._membership.self_id}.peers",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
        )
        try:
            await start_client(consumer, self._kafka)
            while not consumer.assignment():
                self._apply(await consumer.getmany(timeout_ms=200, max_records=1000))
            partitions = list(consumer.assignment())
            since_ms = int((self._clock() - self._membership.timeout_s) * 1000)
            found = await consumer.offsets_for_times({tp: since_ms for tp in partitions})
            ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
            for tp in partitions:
                offset = found.get(tp)
                consumer.seek(tp, offset.offset if offset is not None else ends[tp])
            while True:
                self._apply(await consumer.getmany(timeout_ms=500, max_records=5000))
                if not self.caught_up and await _reached(consumer, ends):
                    self.caught_up = True
                    self.last_error = None
                if self.caught_up:
                    self._report()
        finally:
            await consumer.stop()

    def _apply(self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        for records in batches.values():
            for record in records:
                instance = heartbeat_instance(record)
                if instance is not None:
                    self._membership.seen(instance, record.timestamp / 1000)

    def _report(self) -> None:
        live = self._membership.live(self._clock())
        if live != self._reported:
            self._reported = live
            self._on_members(live)


async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for partition, end in ends.items():
        if await consumer.position(partition) < end:
            return False
    return True
