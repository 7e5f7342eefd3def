"""Probe latency of the national components, rolled up per 5 minutes (pure: no I/O, no clock).

Each availability event carries the latency of the probe it reports (``latency_ms``). The procedure service
keeps, per national component and 5-minute UTC slot, how many probes were reported, their summed latency
and the largest: a few rows a day per component, whatever the number of targets, detectors and probes, from
which the response-time series of any window follows (the mean and the maximum per slot).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.events import Component

__all__ = ["SLOT", "LatencySample", "LatencySlot", "rollup", "slot_start"]

SLOT = timedelta(minutes=5)
"""The width of one roll-up slot."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class LatencySample:
    """One probe's latency as a detector reported it."""

    component: Component
    observed_at: datetime
    latency_ms: float


@dataclass(frozen=True)
class LatencySlot:
    """The probes of one component in one slot: count, summed and largest latency (milliseconds)."""

    component: Component
    slot_start: datetime
    samples: int
    total_ms: float
    max_ms: float

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.samples if self.samples else 0.0

    def merged(self, other: LatencySlot) -> LatencySlot:
        """This slot and ``other`` (same component and slot) counted together."""
        return LatencySlot(component=self.component, slot_start=self.slot_start,
                           samples=self.samples + other.samples, total_ms=self.total_ms + other.total_ms,
                           max_ms=max(self.max_ms, other.max_ms))


def slot_start(moment: datetime) -> datetime:
    """The start of the UTC 5-minute slot ``moment`` falls in."""
    moment = moment.astimezone(UTC)
    return moment - (moment - _EPOCH) % SLOT


def rollup(samples: Iterable[LatencySample]) -> list[LatencySlot]:
    """The samples summed per component and slot, ordered by component then slot."""
    slots: dict[tuple[Component, datetime], LatencySlot] = {}
    for sample in samples:
        key = (sample.component, slot_start(sample.observed_at))
        one = LatencySlot(component=sample.component, slot_start=key[1], samples=1, total_ms=sample.latency_ms,
                          max_ms=sample.latency_ms)
        slots[key] = slots[key].merged(one) if key in slots else one
    return [slots[k] for k in sorted(slots, key=lambda k: (k[0].value, k[1]))]
