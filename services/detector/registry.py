"""Following the EO registry topic (``<prefix>.eos.v1``, compacted, key = EORI) to probe each EO's AS4 endpoint.

Why not :class:`shared.kafka.EventConsumer`: it commits offsets to a consumer group, so after a restart
it resumes after the last commit. The detector keeps its targets in memory only; resuming would make it
forget every EO registered before the restart. It must instead read the whole compacted topic from the
beginning on every start, which is what this follower does: every partition assigned by hand, no group
(every instance reads everything, and no consumer group is left behind on the broker), offsets never
committed. Parsing and dead-lettering follow the same contract as EventConsumer.

After each full replay the detector drops EO targets the registry no longer holds (a tombstone may have
been compacted away while the follower was reconnecting).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from shared.config import KafkaSettings
from shared.events import CloudEvent, DeadLetterData, EoData, InvalidEvent, parse_event
from shared.kafka import connection_options, dead_letter, start_client

log = logging.getLogger(__name__)

DeadLetter = Callable[[CloudEvent[DeadLetterData]], Awaitable[None]]


class RegistryFollower:
    """Reads the EO registry from the beginning and keeps following it, until cancelled."""

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        name: str,
        on_upsert: Callable[[EoData], str],
        on_remove: Callable[[str], str],
        on_replayed: Callable[[set[str]], None],
        dead_letter: DeadLetter,
        on_outcome: Callable[[str], None] | None = None,
        retry_s: float = 2.0,
    ) -> None:
        self.topic = kafka.eos_topic
        self.name = name
        self._kafka = kafka
        self._on_upsert = on_upsert
        self._on_remove = on_remove
        self._on_replayed = on_replayed
        self._dead_letter = dead_letter
        self._on_outcome = on_outcome
        self._retry_s = retry_s
        self.caught_up = False
        self.records = 0
        self.last_error: str | None = None

    async def run(self) -> None:
        """Follow the topic; on a failure to connect, start over (a full replay) after a pause."""
        while True:
            try:
                await self._follow()
            except (KafkaError, OSError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("EO registry %s: %s; replaying it in %.0fs", self.topic, self.last_error, self._retry_s)
                await asyncio.sleep(self._retry_s)

    async def _follow(self) -> None:
        # Without a group, the consumer is given every partition of the topic and, having no committed
        # offset anywhere, starts from the earliest one.
        consumer = AIOKafkaConsumer(
            self.topic,
            **connection_options(self._kafka),
            client_id=self.name,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            await start_client(consumer, self._kafka)
            seen: set[str] = set()
            pending: list[ConsumerRecord[bytes, bytes]] = []
            while not consumer.assignment():
                batches = await consumer.getmany(timeout_ms=200, max_records=1000)
                pending.extend(r for records in batches.values() for r in records)
            ends: dict[TopicPartition, int] = await consumer.end_offsets(list(consumer.assignment()))
            for record in pending:
                self._note(seen, record, await self._apply(record))
            replaying = True
            while True:
                if replaying and await self._replayed(consumer, ends):
                    replaying = False
                    self._on_replayed(seen)
                    self.caught_up = True
                    self.last_error = None
                    log.info("EO registry replayed: %d EOs", len(seen))
                batches = await consumer.getmany(timeout_ms=500, max_records=1000)
                for records in batches.values():
                    for record in records:
                        self._note(seen, record, await self._apply(record))
        finally:
            await consumer.stop()

    @staticmethod
    def _note(seen: set[str], record: ConsumerRecord[bytes, bytes], eori: str | None) -> None:
        if eori is None:
            return
        if record.value is None:
            seen.discard(eori)
        else:
            seen.add(eori)

    @staticmethod
    async def _replayed(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
        for partition, end in ends.items():
            if await consumer.position(partition) < end:
                return False
        return True

    async def _apply(self, record: ConsumerRecord[bytes, bytes]) -> str | None:
        """Apply one record; return the EORI it concerned, or None if it was dead-lettered."""
        self.records += 1
        if record.value is None:
            if record.key is None:
                await self._reject(record, "tombstone without a key: cannot tell which EO to remove")
                return None
            removed = str(record.key.decode("utf-8", errors="replace"))
            self._outcome(self._on_remove(removed))
            return removed
        try:
            event = parse_event(record.value, EoData)
        except InvalidEvent as exc:
            await self._reject(record, str(exc))
            return None
        self._outcome(self._on_upsert(event.data))
        return event.data.eori

    def _outcome(self, outcome: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    async def _reject(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        self._outcome("dead_lettered")
        log.warning("EO registry %s[%d]@%d dead-lettered: %s", record.topic, record.partition, record.offset, reason)
        letter = dead_letter(record, consumer=self.name, reason=reason)
        try:
            await self._dead_letter(letter)
        except Exception as exc:  # the registry must keep flowing even when the dead-letter topic does not
            log.error("could not dead-letter %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)

