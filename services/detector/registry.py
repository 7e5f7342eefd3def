"""Following the EO registry topic (``<prefix>.eos.v1``, compacted, key = EORI) to probe each EO's AS4 endpoint.

Through the shared :class:`shared.kafka.EventConsumer`, without a consumer group: the detector must read the
whole compacted topic from the beginning on every start (its targets come from it; resuming after a
committed offset would forget every EO registered before), every instance reads everything, and no group is
left behind on the broker. Parsing, validation and dead-lettering are the shared consumer's; a tombstone
without a key is dead-lettered too (nothing tells which EO to remove).

After each full replay the detector drops EO targets the registry no longer holds (a tombstone may have
been compacted away while the follower was away); after a failure the follower starts over with a replay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError

from shared.config import KafkaSettings
from shared.events import CloudEvent, EoData
from shared.kafka import EventConsumer, EventSink

log = logging.getLogger(__name__)


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
        sink: EventSink,
        on_outcome: Callable[[str], None] | None = None,
        retry_s: float = 2.0,
    ) -> None:
        self.topic = kafka.eos_topic
        self.name = name
        self._kafka = kafka
        self._on_upsert = on_upsert
        self._on_remove = on_remove
        self._on_replayed = on_replayed
        self._sink = sink
        self._on_outcome = on_outcome
        self._retry_s = retry_s
        self._seen: set[str] | None = None  # the EORIs of the replay under way; None once it is over
        self.caught_up = False
        self.last_error: str | None = None

    async def run(self) -> None:
        """Follow the topic; on a failure to connect, start over (a full replay) after a pause."""
        while True:
            self._seen = set()
            consumer = EventConsumer(
                settings=self._kafka, topic=self.topic, group_id=None, name=self.name, data_model=EoData,
                publisher=self._sink, handler=self._apply, allow_tombstones=True, assign_all=True,
                handler_attempts=1,  # the handler does no I/O: a failure now is a failure on every attempt
                on_caught_up=self._replayed,
            )
            try:
                await consumer.run()
            except (KafkaError, OSError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("EO registry %s: %s; replaying it in %.0fs", self.topic, self.last_error, self._retry_s)
                await asyncio.sleep(self._retry_s)

    async def _apply(self, event: CloudEvent[EoData] | None, record: ConsumerRecord[bytes, bytes]) -> None:
        if event is None:
            if record.key is None:
                self._outcome("dead_lettered")
                raise ValueError("tombstone without a key: cannot tell which EO to remove")
            eori = record.key.decode("utf-8", errors="replace")
            self._outcome(self._on_remove(eori))
            if self._seen is not None:
                self._seen.discard(eori)
            return
        self._outcome(self._on_upsert(event.data))
        if self._seen is not None:
            self._seen.add(event.data.eori)

    def _replayed(self) -> None:
        seen, self._seen = self._seen or set(), None  # not needed until the next replay (100,000 EOs: 4 MiB)
        self._on_replayed(seen)
        self.caught_up = True
        self.last_error = None
        log.info("EO registry replayed: %d EOs", len(seen))

    def _outcome(self, outcome: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)
