"""The detector's Kafka producer: every send either succeeds or gives up within ``timeout_s``.

Not :class:`shared.kafka.Publisher`: that one is idempotent, and aiokafka never expires the batches of
an idempotent producer; while the broker is away it retries them until it returns and then delivers
them, outdated, ahead of anything newer. For the detector that would turn an outage that began and
ended while the broker was away into a late "down" then "up" (a procedure opened and closed after the
fact). Here a send that the broker did not acknowledge in time fails, the latest-state buffer keeps the target's
latest state, and only that is published once the broker is back. A send retried after a lost
acknowledgement may reach the broker twice; consumers ignore an observation they already have.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer

from shared.config import KafkaSettings
from shared.events import CloudEvent
from shared.kafka import connection_options, start_client


class Producer:
    """Publishes CloudEvents with acks=all; raises when the broker does not acknowledge in time."""

    def __init__(self, settings: KafkaSettings, *, client_id: str, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._settings = settings
        self._producer = AIOKafkaProducer(
            **connection_options(settings),
            client_id=client_id,
            acks="all",
            enable_idempotence=False,
            linger_ms=0,  # a state change goes out at once; heartbeats come in batches from the latest-state buffer
            request_timeout_ms=int(timeout_s * 1000),
        )
        self.started = False

    async def start(self) -> None:
        try:
            await start_client(self._producer, self._settings)
        except BaseException:
            await self._producer.stop()  # nothing to flush; closes what the failed start opened
            raise
        self.started = True

    async def stop(self) -> None:
        if self.started:
            # Unacknowledged batches expire after the timeout, so stopping never waits for the broker longer.
            await self._producer.stop()
            self.started = False

    async def publish(self, topic: str, event: CloudEvent[Any], *, key: str | None) -> None:
        async with asyncio.timeout(self._timeout_s * 2):  # the batch expires first; this is a backstop
            await self._producer.send_and_wait(
                topic, value=event.to_bytes(), key=key.encode() if key is not None else None
            )

    async def partitions_for(self, topic: str) -> set[int]:
        partitions: set[int] = await self._producer.partitions_for(topic)
        return partitions
