"""Publishing many small messages: ``Publisher.publish_many`` against one ``send`` per message.

A national fan-out publishes one delivery event per outcome (100,000 of about 650 bytes) on the deliveries
topic, in chunks of 500 (``services/notifier/dispatch.py``, ``FEED_CHUNK``); the outboxes publish the same way.
This sends ``--messages`` such messages, keyed by one of three procedure ids, both ways in turn on a topic of
its own, and prints the wall clock and the process's CPU of each (the CPU is the figure a loaded machine
leaves readable).

    .venv/bin/python -m bench.publish_bench --kafka 127.0.0.1:29092
    .venv/bin/python -m bench.publish_bench --kafka 127.0.0.1:29092 --messages 100000 --size 650 --chunk 500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

from shared.config import KafkaSettings
from shared.kafka import Publisher, ensure_topics


async def _one_send_per_message(publisher: Publisher, messages: list[tuple[str, str | None, bytes | None]]) -> None:
    producer = publisher._producer  # the producer's own path, as publish_many took it before
    pending = [await producer.send(topic, value=value, key=key.encode() if key else None)
               for topic, key, value in messages]
    await asyncio.gather(*pending)


async def _run(args: argparse.Namespace) -> None:
    settings = KafkaSettings(bootstrap_servers=args.kafka, topic_prefix=f"bench-publish-{uuid.uuid4().hex[:8]}")
    await ensure_topics(settings)
    topic = settings.deliveries_topic
    publisher = Publisher(settings, client_id="bench-publish")
    await publisher.start()
    try:
        messages: list[tuple[str, str | None, bytes | None]] = [
            (topic, f"procedure-{n % 3}", os.urandom(args.size // 2).hex().encode()) for n in range(args.messages)
        ]
        await publisher.publish_many(messages[:100])  # metadata and connections warm
        print(f"publish bench: {args.messages:,} messages of {args.size} bytes, chunks of {args.chunk}, "
              f"broker {args.kafka}")
        for name, publish in (("one send per message", _one_send_per_message),
                              ("publish_many", lambda p, m: p.publish_many(m))):
            started, cpu = time.perf_counter(), time.process_time()
            for start in range(0, len(messages), args.chunk):
                await publish(publisher, messages[start:start + args.chunk])
            wall, used = time.perf_counter() - started, time.process_time() - cpu
            print(f"  {name:22} {wall:6.2f} s, CPU {used:5.2f} s ({used / args.messages * 1e6:.1f} us per message)")
    finally:
        await publisher.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kafka", default=os.environ.get("LUCCS_BENCH_KAFKA")
                        or os.environ.get("LUCCS_TEST_KAFKA", "127.0.0.1:19092"))
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=650, help="bytes per message")
    parser.add_argument("--chunk", type=int, default=500, help="messages per call")
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
