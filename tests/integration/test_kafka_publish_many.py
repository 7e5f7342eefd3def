"""``Publisher.publish_many`` packs its own record batches: every message arrives once, on the partition the
producer would have picked for its key (``publish_raw``), in order per partition."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError

from shared.config import KafkaSettings
from shared.kafka import PUBLISH_BATCH_BYTES, PUBLISH_MESSAGE_BYTES, Publisher, ensure_topics

pytestmark = pytest.mark.integration


async def _read_all(settings: KafkaSettings, topic: str, count: int) -> list[tuple[int, bytes | None, bytes]]:
    """(partition, key, value) of the first ``count`` messages of ``topic``, in each partition's order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        read: list[tuple[int, bytes | None, bytes]] = []
        async with asyncio.timeout(60):
            while len(read) < count:
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    read.extend((tp.partition, record.key, record.value or b"") for record in records)
        return read
    finally:
        await consumer.stop()


@pytest.mark.timeout(120)
async def test_publish_many_sends_every_message_once_on_its_keys_partition_in_order(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix, partitions=3)
    await ensure_topics(settings)
    topic, other = settings.deliveries_topic, settings.deadletter_topic
    publisher = Publisher(settings, client_id="test-publish-many")
    await publisher.start()
    try:
        keys = [f"procedure-{n}" for n in range(12)]
        # One message per key through the producer's own send: where each key belongs.
        for key in keys:
            await publisher.publish_raw(topic, b"probe", key=key)
        # Then many more than a batch holds (value sizes vary), two topics mixed, and keyless messages.
        value = b"x" * 1000
        messages: list[tuple[str, str | None, bytes | None]] = [
            (topic, keys[n % len(keys)], b"%d:" % n + value) for n in range(3 * PUBLISH_BATCH_BYTES // 1000)
        ]
        messages += [(other, None, b"keyless %d" % n) for n in range(20)]
        await publisher.publish_many(messages)
    finally:
        await publisher.stop()

    read = await _read_all(settings, topic, len(keys) + len(messages) - 20)
    home = {key: partition for partition, key, value in read if value == b"probe"}
    assert len(home) == len(keys) and len(set(home.values())) > 1  # the keys spread over the partitions
    sent = [(partition, key, value) for partition, key, value in read if value != b"probe"]
    assert sorted(value for _, _, value in sent) == sorted(value or b"" for _, _, value in messages[:-20])  # once each
    per_key: dict[bytes | None, list[int]] = defaultdict(list)
    for partition, record_key, value in sent:
        assert partition == home[record_key], (record_key, partition)
        per_key[record_key].append(int(value.split(b":")[0]))
    assert all(numbers == sorted(numbers) for numbers in per_key.values())  # in the order given
    assert len(await _read_all(settings, other, 20)) == 20


@pytest.mark.timeout(120)
async def test_a_message_too_large_is_refused_before_anything_is_sent_and_the_publisher_goes_on(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Refused by the broker instead, its batch would cost the idempotent producer its sequence numbers on that
    partition: every later message there would fail until a restart."""
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix, partitions=1)
    await ensure_topics(settings)
    topic = settings.deliveries_topic
    publisher = Publisher(settings, client_id="test-publish-too-large")
    await publisher.start()
    try:
        with pytest.raises(MessageSizeTooLargeError):
            await publisher.publish_many([(topic, "k", b"first"), (topic, "k", b"x" * PUBLISH_MESSAGE_BYTES)])
        await publisher.publish_many([(topic, "k", b"after")])
        await publisher.publish_raw(topic, b"and after", key="k")
    finally:
        await publisher.stop()
    assert [value for _, _, value in await _read_all(settings, topic, 2)] == [b"after", b"and after"]
