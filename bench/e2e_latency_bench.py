"""End-to-end latency: from an outage injected at the simulator to the first EO webhook.

Starts the simulator and the three services as processes (one each, as a user would) against a real
broker, registers one EO whose webhook points at a receiver in this process, then repeats: make the
simulated ADA AS4 endpoint refuse connections, wait for the EO's ``opened`` notice, put it back, wait for
``closed``. For each run it reports the pipeline overhead (injection to webhook, minus the detection
time interval + (failure_threshold - 1) x retry interval: the first failed probe comes within an interval,
the others at the retry pace) and the split per hop, from the events' own timestamps:

    probe that confirmed the outage (availability observed_at) -> availability event on Kafka
    -> decision (procedure event time) -> procedure event on Kafka -> webhook received

    python -m bench.e2e_latency_bench --bootstrap 127.0.0.1:9092 [--runs 20] [--interval 1] [--retry-interval 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import time
import uuid
from dataclasses import dataclass, field

import httpx
from aiokafka import AIOKafkaConsumer

from bench.launcher import running_pipeline, wait_for, wait_status
from shared.config import KafkaSettings
from shared.events import AvailabilityData, CloudEvent, EventType, ProcedureData, parse_event
from shared.kafka import ensure_topics
from tests.support import WebhookReceiver

EORI = "LU99999999999"


@dataclass
class Seen:
    """Availability changes and suspicions, and procedure events, each with the time Kafka stamped it."""

    availability: list[tuple[float, CloudEvent[AvailabilityData]]] = field(default_factory=list)
    procedures: list[tuple[float, CloudEvent[ProcedureData]]] = field(default_factory=list)


@dataclass
class Run:
    injected: float
    first_failure: float  # the first failed probe finished (its suspect event's observed_at)
    detected: float  # the probe that made the target down finished
    availability_published: float
    decided: float
    procedure_published: float
    webhook: float


def _retry_interval(args: argparse.Namespace) -> float:
    retry: float = args.retry_interval if args.retry_interval is not None else args.interval / 5  # the default
    return retry


async def _collect(settings: KafkaSettings, sink: Seen, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(settings.availability_topic, settings.procedures_topic,
                                bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest",
                                fetch_max_wait_ms=20)
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for r in records:
                    if r.value is None:
                        continue
                    if r.topic == settings.availability_topic:
                        availability = parse_event(r.value, AvailabilityData)
                        if availability.type == EventType.AVAILABILITY_CHANGED or availability.data.suspect:
                            sink.availability.append((r.timestamp / 1000, availability))
                    else:
                        sink.procedures.append((r.timestamp / 1000, parse_event(r.value, ProcedureData)))
    finally:
        await consumer.stop()


async def main(args: argparse.Namespace) -> None:
    prefix = f"e2e-bench-{uuid.uuid4().hex[:8]}"
    settings = KafkaSettings(bootstrap_servers=args.bootstrap, topic_prefix=prefix)
    await ensure_topics(settings)
    sink = Seen()
    stop = asyncio.Event()
    collector = asyncio.create_task(_collect(settings, sink, stop))
    runs: list[Run] = []
    detection = {"interval_s": args.interval, "timeout_s": min(0.8, args.interval * 0.8),
                 "failure_threshold": args.failure_threshold, "retry_interval_s": _retry_interval(args),
                 "success_threshold": 2, "heartbeat_s": 5}
    try:
        async with running_pipeline(bootstrap=args.bootstrap, prefix=prefix, detector_settings=detection,
                                    procedure_settings={"stale_after_s": 60}, procedure_reads_notifier=True,
                                    client_timeout_s=5) as pipeline:
            client, receiver = pipeline.client, pipeline.receiver
            await pipeline.register_eo(EORI, name="Bench EO", path="/bench")
            await wait_status(client, pipeline.status_url, {"ada_b2g": "up", "ntp": "up"})
            await asyncio.sleep(2)  # the notifier has read the EO by now
            print(f"e2e latency: {args.runs} runs, interval {args.interval}s, retry interval "
                  f"{_retry_interval(args)}s, failure_threshold {args.failure_threshold}", flush=True)
            for n in range(args.runs):
                runs.append(await _one_run(client, pipeline.control, receiver, sink, n))
                await client.post(f"{pipeline.control}/ada-as4/ok")
                await wait_for(functools.partial(_more_than, receiver, "luccs.procedure.closed", n), 60,
                               "closed webhook")
                await wait_status(client, pipeline.status_url, {"ada_b2g": "up", "ntp": "up"})
    finally:
        stop.set()
        await collector
    _report(runs, args)


def _more_than(receiver: WebhookReceiver, event_type: str, count: int) -> bool:
    return len(receiver.of_type(event_type)) > count


async def _one_run(client: httpx.AsyncClient, control: str, receiver: WebhookReceiver,
                   sink: Seen, n: int) -> Run:
    injected = time.time()
    await client.post(f"{control}/ada-as4/refuse")
    await wait_for(lambda: len(receiver.of_type("luccs.procedure.opened")) > n, 60, "opened webhook")
    webhook = time.time()
    hook = receiver.of_type("luccs.procedure.opened")[n]
    procedure_id = hook.event["data"]["procedure_id"]
    def opened_event() -> tuple[float, CloudEvent[ProcedureData]] | None:
        return next(((t, e) for t, e in sink.procedures
                     if e.type == EventType.PROCEDURE_OPENED and e.data.procedure_id == procedure_id), None)

    await wait_for(lambda: opened_event() is not None, 10, "procedure event on Kafka")
    published, opened = opened_event() or (0.0, None)
    assert opened is not None
    down_at, down = next((t, e) for t, e in reversed(sink.availability)
                         if e.data.target_id == "ada-as4" and e.data.state == "down"
                         and e.type == EventType.AVAILABILITY_CHANGED)
    # The first failure published as suspect (streak 1); with failure_threshold 1 there is none: the change.
    first_failure = next((e.data.observed_at.timestamp() for _, e in sink.availability
                          if e.data.target_id == "ada-as4" and e.data.suspect and e.data.streak == 1
                          and e.data.state == "up" and e.data.observed_at.timestamp() >= injected),
                         down.data.observed_at.timestamp())
    return Run(injected=injected, first_failure=first_failure, detected=down.data.observed_at.timestamp(),
               availability_published=down_at,
               decided=opened.time.timestamp(), procedure_published=published, webhook=webhook)


def _report(runs: list[Run], args: argparse.Namespace) -> None:
    threshold_ms = (args.interval + (args.failure_threshold - 1) * _retry_interval(args)) * 1000

    def line(name: str, values: list[float]) -> None:
        cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
        print(f"  {name:<52} p50 {statistics.median(values):7.1f}  p99 {cuts[98]:7.1f}  max {max(values):7.1f}")

    print(f"{len(runs)} runs (ms):")
    line("injected -> first EO webhook", [(r.webhook - r.injected) * 1000 for r in runs])
    line(f"  minus detection time ({threshold_ms:.0f} ms)",
         [(r.webhook - r.injected) * 1000 - threshold_ms for r in runs])
    line("first failed probe done -> confirming probe done", [(r.detected - r.first_failure) * 1000 for r in runs])
    line("pipeline: confirming probe done -> webhook", [(r.webhook - r.detected) * 1000 for r in runs])
    line("  probe done -> availability event on Kafka", [(r.availability_published - r.detected) * 1000 for r in runs])
    line("  availability event -> decision", [(r.decided - r.availability_published) * 1000 for r in runs])
    line("  decision -> procedure event on Kafka", [(r.procedure_published - r.decided) * 1000 for r in runs])
    line("  procedure event -> webhook received", [(r.webhook - r.procedure_published) * 1000 for r in runs])
    print("  (goal: pipeline overhead p99 under 250 ms with interval 1 s)")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=os.environ.get("LUCCS_BENCH_KAFKA", "127.0.0.1:9092"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--failure-threshold", type=int, default=3)
    parser.add_argument("--retry-interval", type=float, default=None, help="default: interval / 5 (the detector's)")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
