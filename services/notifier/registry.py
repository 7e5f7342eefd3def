"""Startup catch-up on the EO registry topic: no fan-out before the notifier knows the registered EOs.

A notifier that starts on an empty database (a new installation, a lost disk) would otherwise plan a
national procedure for the few EOs it has read so far. The procedure and advisory consumers wait until
the EO consumer has reached the end of the registry topic as it was at startup (or until
``notifier.registry_catchup_s`` has passed, which is logged).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from shared.config import KafkaSettings
from shared.kafka import connection_options, start_client
from shared.retry import Backoff, RetryPolicy, retrying

log = logging.getLogger(__name__)

__all__ = ["RegistryCatchUp"]


class RegistryCatchUp:
    """Knows the registry topic's end offsets at startup and which partitions the EO consumer has passed."""

    def __init__(self, *, settings: KafkaSettings, group_id: str) -> None:
        self._settings = settings
        self._group_id = group_id
        self._behind: dict[int, int] = {}
        self.done = asyncio.Event()

    async def prepare(self, *, timeout_s: float = 60.0) -> None:
        """Read the end offsets and the group's committed offsets; the partitions already passed are done.

        On a fresh broker the group coordinator appears only once the offsets topic exists: retry the
        transient errors until ``timeout_s``.
        """
        def failed(_attempt: int, exc: Exception, delay_s: float | None) -> None:
            if delay_s is not None:
                log.info("EO registry offsets not readable yet (%s); retrying", exc)

        await retrying(self._prepare, policy=RetryPolicy(Backoff(first_s=0.5, factor=1.0), max_elapsed_s=timeout_s),
                       retry_if=lambda exc: isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False)),
                       on_failure=failed)

    async def _prepare(self) -> None:
        topic = self._settings.eos_topic
        consumer = AIOKafkaConsumer(**connection_options(self._settings), group_id=None)
        admin = AIOKafkaAdminClient(**connection_options(self._settings))
        try:
            await start_client(consumer, self._settings)
            await start_client(admin, self._settings)
            described = await admin.describe_topics([topic])
            numbers = sorted(p["partition"] for d in described for p in d.get("partitions", ()))
            partitions = [TopicPartition(topic, number) for number in numbers]
            ends = await consumer.end_offsets(partitions) if partitions else {}
            committed = await admin.list_consumer_group_offsets(self._group_id, partitions=partitions)
        finally:
            await consumer.stop()
            await admin.close()
        for tp, end in ends.items():
            mark = committed.get(tp)
            position = mark.offset if mark is not None and mark.offset >= 0 else 0
            if position < end:
                self._behind[tp.partition] = end
        if not self._behind:
            self.done.set()
        else:
            log.info("reading the EO registry (%d messages at most) before fanning out",
                     sum(self._behind.values()))

    def observe(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Called for every EO record handled: a partition is done once its startup end offset is passed."""
        end = self._behind.get(record.partition)
        if end is not None and record.offset + 1 >= end:
            del self._behind[record.partition]
            if not self._behind:
                log.info("EO registry read: fan-outs may start")
                self.done.set()

    async def wait(self, timeout_s: float) -> None:
        if self.done.is_set():
            return
        try:
            await asyncio.wait_for(self.done.wait(), timeout=timeout_s)
        except TimeoutError:
            log.warning("the EO registry was not read within %.0fs; fanning out with what is known", timeout_s)
            self.done.set()
