"""Where the detector's memory goes at 100,000 EOs, in one process (no other service, no HTTP server).

Two measurements, each in a fresh process (``VmHWM`` is per process):

``scrape``: builds ``--eos`` EO targets through ``Detector.on_eo`` and renders ``/metrics`` once, either
whole as ``prometheus_client.generate_latest`` does (``--whole``) or in chunks as the services serve it
(``shared/exposition.py``); prints the RSS before, the peak (VmHWM) and the CPU seconds of the rendering.

``registry``: fills a registry topic of its own with ``--eos`` EO records on the broker (``--kafka``), then
reads it with the detector's own ``RegistryFollower`` into a ``Detector``, sampling the RSS every 20 ms;
prints the RSS at start, once caught up and at the peak, and the CPU seconds of the read.

    .venv/bin/python -m bench.detector_memory_bench scrape
    .venv/bin/python -m bench.detector_memory_bench scrape --whole
    .venv/bin/python -m bench.detector_memory_bench registry --kafka 127.0.0.1:9092

Memory and CPU seconds, not wall-clock: the figures hold on a loaded machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import os
import threading
import time
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from services.detector.metrics import DetectorMetrics
from services.detector.probes import Prober
from services.detector.registry import RegistryFollower
from services.detector.service import Detector
from shared.config import DetectorSettings, KafkaSettings
from shared.events import CloudEvent, EoData, EventType, Language
from shared.exposition import exposition
from shared.kafka import Publisher, ensure_topics


def _mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _eo(i: int) -> EoData:
    """An EO as memory_bench imports them (e-mail, AS4 endpoint, API key; half with a webhook)."""
    webhook = {"webhook_url": f"https://hooks.eo.example/{i}", "webhook_secret": f"bench-secret-{i:012d}"}
    return EoData.model_validate({
        "eori": f"LU{i:010d}", "name": f"Operator {i}", "language": (Language.FR, Language.EN, Language.DE)[i % 3],
        "email": f"ops{i}@eo.example", "as4_endpoint": f"http://127.0.0.1:9/msh/{i}",
        "api_key_hash": hashlib.sha256(f"key-{i}".encode()).hexdigest(), **(webhook if i % 2 == 0 else {}),
    })


def _detector(registry: CollectorRegistry) -> Detector:
    holder: list[Detector] = []
    metrics = DetectorMetrics.create(registry, statuses=lambda: holder[0].view())

    async def send(*_args: object) -> None:
        return None

    # An hour's interval: hardly a probe while measuring (the endpoints are a closed loopback port anyway).
    detector = Detector(settings=DetectorSettings(interval_s=3600), prober=Prober(), send=send, metrics=metrics)
    holder.append(detector)
    return detector


async def scrape(args: argparse.Namespace) -> None:
    registry = CollectorRegistry()
    detector = _detector(registry)
    for i in range(args.eos):
        detector.on_eo(_eo(i))
    gc.collect()
    before = _mib("VmRSS")
    started = time.process_time()
    size = 0
    if args.whole:
        size = len(generate_latest(registry))
    else:
        async for chunk in exposition(registry):
            size += len(chunk)
    cpu = time.process_time() - started
    print(f"{len(detector.targets):,} EO targets, /metrics rendered {'whole' if args.whole else 'in chunks'}: "
          f"{size / 1e6:.1f} MB; RSS before {before:.0f} MiB, peak (VmHWM) {_mib('VmHWM'):.0f} MiB; "
          f"{cpu:.2f} CPU s; load average {os.getloadavg()[0]:.2f}")


async def _fill(kafka: KafkaSettings, count: int) -> None:
    publisher = Publisher(kafka, client_id="bench-registry-fill")
    await publisher.start()
    try:
        for start in range(0, count, 5_000):
            await publisher.publish_many([
                (kafka.eos_topic, eo.eori,
                 CloudEvent[EoData](source="/bench", type=EventType.EO_UPSERTED, subject=eo.eori, data=eo).to_bytes())
                for eo in map(_eo, range(start, min(count, start + 5_000)))
            ])
    finally:
        await publisher.stop()


async def registry_read(args: argparse.Namespace) -> None:
    kafka = KafkaSettings(bootstrap_servers=args.kafka, topic_prefix=f"bench-registry-{uuid.uuid4().hex[:8]}")
    await ensure_topics(kafka)
    await _fill(kafka, args.eos)
    gc.collect()
    start = _mib("VmRSS")
    detector = _detector(CollectorRegistry())
    sink = Publisher(kafka, client_id="bench-registry-sink")
    await sink.start()
    replayed = asyncio.Event()

    def retain(eoris: set[str]) -> None:
        detector.retain_eos(eoris)
        replayed.set()

    follower = RegistryFollower(kafka=kafka, name="bench-registry", on_upsert=detector.on_eo,
                                on_remove=detector.on_eo_removed, on_replayed=retain, sink=sink)
    peak = [0.0, 0]  # MiB, EOs read then
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            rss = _mib("VmRSS")
            if rss > peak[0]:
                peak[:] = [rss, detector.eo_endpoints]

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.process_time()
    task = asyncio.create_task(follower.run())
    try:
        async with asyncio.timeout(args.timeout):
            await replayed.wait()
        cpu = time.process_time() - started
    finally:
        done.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sink.stop()
    print(f"{detector.eo_endpoints:,} EOs read from the registry topic: RSS at start {start:.0f} MiB, caught up "
          f"{_mib('VmRSS'):.0f} MiB, peak (VmHWM) {_mib('VmHWM'):.0f} MiB (sampled: {peak[0]:.0f} MiB with "
          f"{peak[1]:,} EOs read); {cpu:.1f} CPU s; load average {os.getloadavg()[0]:.2f}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["scrape", "registry"])
    parser.add_argument("--eos", type=int, default=100_000)
    parser.add_argument("--whole", action="store_true", help="scrape: render with generate_latest, all at once")
    parser.add_argument("--kafka", default=os.environ.get("LUCCS_BENCH_KAFKA")
                        or os.environ.get("LUCCS_TEST_KAFKA") or "127.0.0.1:19092")
    parser.add_argument("--timeout", type=float, default=600.0, help="registry: bound on the read, in seconds")
    args = parser.parse_args()
    asyncio.run(scrape(args) if args.what == "scrape" else registry_read(args))


if __name__ == "__main__":
    cli()
