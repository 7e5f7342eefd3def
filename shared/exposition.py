"""The Prometheus text exposition of a registry, produced in chunks (what /metrics serves).

``prometheus_client.generate_latest`` builds the whole text at once: a line string per sample, their join,
and its encoding, all alive together. A detector holding 100,000 EO targets exposes two gauge series per
target, and one scrape held 80 MiB more than the detector's steady size (measured: ``bench/README.md``,
"Memory at scale"). Here each metric family is rendered on its own, a large gauge family ``chunk_size``
samples at a time, with a turn of the event loop between chunks (a scrape no longer holds the loop for the
whole rendering). The bytes are exactly those of ``generate_latest``: every chunk is rendered by it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

__all__ = ["exposition"]

CHUNK_SIZE = 5_000
"""Samples of one gauge family rendered at a time."""


class _Only:
    """A collector of the given metric families, to render them with ``generate_latest``."""

    def __init__(self, *metrics: Metric) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


async def exposition(registry: CollectorRegistry, *, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
    """The bytes of ``generate_latest(registry)``, family by family and ``chunk_size`` gauge samples at a time.

    Only gauge families are split: other types render extra families after their samples (``_created``),
    which must come once; their series are few (labelled by kind and reason, never by target).
    """
    for metric in registry.collect():
        if metric.type != "gauge":
            yield generate_latest(_Only(metric))
            continue
        samples = iter(metric.samples)  # possibly produced as they are read (see services/detector/metrics.py)
        first = True
        while True:
            part = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            part.samples = list(itertools.islice(samples, chunk_size))
            text = generate_latest(_Only(part))
            if not first:
                if not part.samples:
                    break
                text = text.split(b"\n", 2)[2]  # the family's # HELP and # TYPE lines were sent with its first chunk
            yield text
            first = False
            if len(part.samples) < chunk_size:
                break
            await asyncio.sleep(0)
