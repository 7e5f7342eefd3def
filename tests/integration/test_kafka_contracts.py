"""Topic creation and the dead-lettering consumer, against the real broker."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared.config import KafkaSettings
from shared.events import (
    AvailabilityData,
    CloudEvent,
    Component,
    ComponentState,
    DeadLetterData,
    EventType,
    parse_event,
)
from shared.kafka import CONTRACT_TOPICS, ClusterTooSmall, EventConsumer, Publisher, ensure_topics

pytestmark = pytest.mark.integration


def _availability(target_id: str) -> CloudEvent[AvailabilityData]:
    now = datetime.now(UTC)
    return CloudEvent[AvailabilityData](
        source="/tests",
        type=EventType.AVAILABILITY_CHANGED,
        subject=target_id,
        data=AvailabilityData(
            target_id=target_id, component=Component.ADA_B2G, detector_instance="t", state=ComponentState.DOWN,
            previous_state=ComponentState.UP, since=now, observed_at=now, probe="http", ok=False, reason="refused",
        ),
    )


async def _read(settings: KafkaSettings, topic: str, count: int, timeout_s: float = 20) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest")
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(values) < count:
                batch = await consumer.getmany(timeout_ms=200)
                values.extend(r.value for records in batch.values() for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return values


async def test_ensure_topics_creates_the_contract_topics_once(kafka_bootstrap: str, topic_prefix: str) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    created = await ensure_topics(settings)
    assert sorted(created) == sorted(f"{topic_prefix}.{name}.v1" for name in CONTRACT_TOPICS)
    assert await ensure_topics(settings) == []

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, settings.eos_topic)])
        entries = {entry[0]: entry[1] for entry in configs[0].resources[0][4]}
        assert entries["cleanup.policy"] == "compact"
        assert entries["min.insync.replicas"] == "1"
    finally:
        await admin.close()


async def test_a_replication_factor_above_the_broker_count_is_one_clear_error(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix, replication_factor=3,
                             min_insync_replicas=2)
    with pytest.raises(ClusterTooSmall) as refused:
        await ensure_topics(settings, timeout_s=10)
    assert str(refused.value) == (
        f"kafka.replication_factor = 3 but the cluster at {kafka_bootstrap} has 1 broker answering: lower "
        "kafka.replication_factor (and kafka.min_insync_replicas) or add brokers"
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert not [t for t in await admin.list_topics() if t.startswith(f"{topic_prefix}.")]  # nothing half-made
    finally:
        await admin.close()


async def test_invalid_messages_are_dead_lettered_and_the_consumer_carries_on(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    await ensure_topics(settings)
    publisher = Publisher(settings, client_id="test")
    await publisher.start()
    handled: list[str] = []

    async def handler(event: CloudEvent[AvailabilityData] | None, _record: ConsumerRecord[bytes, bytes]) -> None:
        assert event is not None
        if event.data.target_id == "explodes":
            raise RuntimeError("boom")
        handled.append(event.data.target_id)

    consumer = EventConsumer(
        settings=settings, topic=settings.availability_topic, group_id=f"{topic_prefix}.test",
        data_model=AvailabilityData, handler=handler, publisher=publisher, handler_attempts=2, retry_delay_s=0.01,
    )
    garbage = b"\x00not json at all"
    schema_invalid = b'{"specversion":"1.0","id":"x","source":"/t","type":"luccs.availability.changed","data":{}}'
    try:
        # One partition key for all, so order is kept: bad ones sit between good ones.
        await publisher.publish(settings.availability_topic, _availability("first"), key="k")
        await publisher.publish_raw(settings.availability_topic, garbage, key="k")
        await publisher.publish_raw(settings.availability_topic, schema_invalid, key="k")
        await publisher.publish_raw(settings.availability_topic, None, key="k")
        await publisher.publish(settings.availability_topic, _availability("explodes"), key="k")
        await publisher.publish(settings.availability_topic, _availability("last"), key="k")

        task = asyncio.create_task(consumer.run())
        try:
            async with asyncio.timeout(30):
                while "last" not in handled:
                    await asyncio.sleep(0.1)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await publisher.stop()

    assert handled == ["first", "last"]
    letters = [parse_event(raw, DeadLetterData).data for raw in await _read(settings, settings.deadletter_topic, 4)]
    assert [base64.b64decode(letter.value) if letter.value else None for letter in letters][:3] == [
        garbage, schema_invalid, None
    ]
    assert "unparseable" in letters[0].reason or "invalid" in letters[0].reason.lower()
    assert "data.target_id" in letters[1].reason
    assert "tombstone" in letters[2].reason
    assert "handler failed 2 times" in letters[3].reason and "boom" in letters[3].reason
    assert all(letter.source_topic == settings.availability_topic for letter in letters)
    assert consumer.stats.dead_lettered == 4


async def test_a_stopped_consumer_has_committed_everything_it_handled(kafka_bootstrap: str, topic_prefix: str) -> None:
    # Offsets are committed in the background while the next poll is handled: stopping right after the last
    # handled message must still commit it, or a restart would hand it out again.
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix, partitions=1)
    await ensure_topics(settings)
    publisher = Publisher(settings, client_id="test")
    await publisher.start()
    group = f"{topic_prefix}.commits"
    handled: list[str] = []

    async def handler(event: CloudEvent[AvailabilityData] | None, _record: ConsumerRecord[bytes, bytes]) -> None:
        assert event is not None
        handled.append(event.data.target_id)

    def consumer() -> EventConsumer[AvailabilityData]:
        return EventConsumer(settings=settings, topic=settings.availability_topic, group_id=group,
                             data_model=AvailabilityData, handler=handler, publisher=publisher, max_batch=7)

    try:
        for round_ in range(2):
            names = [f"r{round_}-{n}" for n in range(30)]
            for name in names:
                await publisher.publish(settings.availability_topic, _availability(name), key="k")
            task = asyncio.create_task(consumer().run())
            try:
                async with asyncio.timeout(30):
                    while names[-1] not in handled:
                        await asyncio.sleep(0.01)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await publisher.stop()
    # The second consumer of the group starts where the first one stopped: nothing twice, nothing skipped.
    assert handled == [f"r{round_}-{n}" for round_ in range(2) for n in range(30)]


async def test_a_consumer_that_lost_a_partition_goes_on_committing_the_others(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix, partitions=2)
    await ensure_topics(settings)
    topic, group = settings.availability_topic, f"{topic_prefix}.rebalance"
    publisher = Publisher(settings, client_id="test")
    await publisher.start()
    handled: list[tuple[int, int]] = []

    async def handler(_event: CloudEvent[AvailabilityData] | None, record: ConsumerRecord[bytes, bytes]) -> None:
        handled.append((record.partition, record.offset))

    async def send(partition: int, count: int) -> None:
        for _ in range(count):
            await publisher._producer.send_and_wait(topic, value=_availability("t").to_bytes(), partition=partition)

    consumer = EventConsumer(settings=settings, topic=topic, group_id=group, data_model=AvailabilityData,
                             handler=handler, publisher=publisher)
    task = asyncio.create_task(consumer.run())
    other = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False,
                             session_timeout_ms=10_000, heartbeat_interval_ms=1_000)
    check = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    try:
        await send(0, 2)
        await send(1, 2)
        async with asyncio.timeout(30):
            while len(handled) < 4:
                await asyncio.sleep(0.05)
        await other.start()  # a second member joins the group: one partition moves to it
        async with asyncio.timeout(30):
            while not other.assignment():
                await other.getmany(timeout_ms=200)
        (taken,) = other.assignment()
        kept = 1 - taken.partition
        await send(kept, 5)
        await check.start()
        async with asyncio.timeout(30):
            while (await check.committed(TopicPartition(topic, kept)) or 0) < 7:
                await asyncio.sleep(0.1)
                await other.getmany(timeout_ms=10)  # the other member stays alive in the group
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await other.stop()
        await check.stop()
        await publisher.stop()
    assert sorted(o for p, o in handled if p == kept) == list(range(7))
