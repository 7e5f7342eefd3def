"""The detector's Prometheus metrics.

Counters and histograms are labelled by probe kind, component and reason, never by target, so that
thousands of EO targets do not make thousands of histograms. Per-target values (state, degraded,
certificate expiry) are read from the detector's statuses at scrape time by a collector.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from services.detector.domain import TargetStatus
from services.detector.targets import Target
from shared.events import ComponentState

STATE_VALUE = {ComponentState.DOWN: 0, ComponentState.UP: 1, ComponentState.UNKNOWN: -1}
_PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

StatusView = Callable[[], Iterable[tuple[Target, TargetStatus]]]


@dataclass
class DetectorMetrics:
    probe_seconds: Histogram
    results: Counter
    scheduler_lag: Histogram
    skipped: Counter
    in_flight: Gauge
    transitions: Counter
    publish_failures: Counter
    pending: Gauge
    collapsed: Counter
    registry_records: Counter
    save_seconds: Histogram
    save_failures: Counter
    # The labelled children of the per-probe series, looked up once per label set: ``labels()`` validates and
    # locks on every call, at thousands of probes a second.
    _probe_children: dict[tuple[str, str], Histogram] = field(default_factory=dict, repr=False)
    _result_children: dict[tuple[str, str, str], Counter] = field(default_factory=dict, repr=False)

    def probe_done(self, *, probe: str, component: str, reason: str, seconds: float) -> None:
        """Count one probe's result and observe its duration (``probe_seconds`` and ``results``)."""
        duration = self._probe_children.get((probe, component))
        if duration is None:
            duration = self._probe_children[(probe, component)] = self.probe_seconds.labels(probe, component)
        duration.observe(seconds)
        outcome = self._result_children.get((probe, component, reason))
        if outcome is None:
            outcome = self._result_children[(probe, component, reason)] = self.results.labels(probe, component, reason)
        outcome.inc()

    @classmethod
    def create(cls, registry: CollectorRegistry, *, statuses: StatusView | None = None) -> DetectorMetrics:
        if statuses is not None:
            registry.register(_TargetCollector(statuses))
        return cls(
            probe_seconds=Histogram(
                "luccs_detector_probe_duration_seconds", "Duration of probes (failed ones included)",
                ["probe", "component"], buckets=_PROBE_BUCKETS, registry=registry,
            ),
            results=Counter(
                "luccs_detector_probe_results_total", "Probe results by reason code",
                ["probe", "component", "reason"], registry=registry,
            ),
            scheduler_lag=Histogram(
                "luccs_detector_scheduler_lag_seconds",
                "Delay between when a probe was due and when it started (concurrency limits included)",
                buckets=_LAG_BUCKETS, registry=registry,
            ),
            skipped=Counter(
                "luccs_detector_probes_skipped_total", "Probes not started because the previous one still ran",
                registry=registry,
            ),
            in_flight=Gauge("luccs_detector_probes_in_flight", "Probes running now", registry=registry),
            transitions=Counter(
                "luccs_detector_transitions_total", "Target state changes", ["component", "state"], registry=registry
            ),
            publish_failures=Counter(
                "luccs_detector_publish_failures_total", "Failed publications to Kafka", registry=registry
            ),
            pending=Gauge(
                "luccs_detector_pending_events", "Availability events waiting for the broker (one per target at most)",
                registry=registry,
            ),
            collapsed=Counter(
                "luccs_detector_transitions_collapsed_total",
                "State changes superseded before they could be published (broker unreachable)", registry=registry,
            ),
            registry_records=Counter(
                "luccs_detector_registry_records_total", "EO registry records by outcome", ["outcome"],
                registry=registry,
            ),
            save_seconds=Histogram(
                "luccs_detector_save_duration_seconds", "Duration of one batch save of changed target states",
                buckets=_LAG_BUCKETS, registry=registry,
            ),
            save_failures=Counter(
                "luccs_detector_save_failures_total", "Failed saves of target states to the detector database",
                registry=registry,
            ),
        )


class _PerTarget(Metric):
    """A gauge family whose samples are produced from the detector's statuses each time they are read, not held:
    at 100,000 targets a list of samples (a tuple and a label dict each) held 60 MiB during a scrape."""

    def __init__(self, name: str, documentation: str, samples: Callable[[], Iterator[Sample]]) -> None:
        super().__init__(name, documentation, "gauge")
        self.samples = _Replayable(samples)  # type: ignore[assignment]  # read only by iterating it


class _Replayable:
    def __init__(self, produce: Callable[[], Iterator[Sample]]) -> None:
        self._produce = produce

    def __iter__(self) -> Iterator[Sample]:
        return self._produce()


class _TargetCollector(Collector):
    def __init__(self, statuses: StatusView) -> None:
        self._statuses = statuses

    def collect(self) -> Iterator[Metric]:
        # Each family reads the statuses again when it is rendered (see shared/exposition.py), a target
        # removed meanwhile is left out of the families rendered after that.
        statuses = self._statuses

        def state() -> Iterator[Sample]:
            name = "luccs_detector_target_state"
            for target, status in statuses():
                yield Sample(name, {"target": target.id, "component": target.component.value},
                             STATE_VALUE[status.state], None)

        def degraded() -> Iterator[Sample]:
            name = "luccs_detector_target_degraded"
            for target, status in statuses():
                yield Sample(name, {"target": target.id}, 1 if status.degraded else 0, None)

        def expiry() -> Iterator[Sample]:
            name = "luccs_detector_cert_expiry_timestamp_seconds"
            for target, status in statuses():
                expires_at = status.last.cert_expires_at if status.last is not None else None
                if expires_at is not None:
                    yield Sample(name, {"target": target.id}, expires_at.timestamp(), None)

        def as4_expiry() -> Iterator[Sample]:
            name = "luccs_detector_as4_cert_expiry_timestamp_seconds"
            for target, status in statuses():
                if status.last is None:
                    continue
                for kind, at in (("signing", status.last.signing_cert_expires_at),
                                 ("partner", status.last.partner_cert_expires_at)):
                    if at is not None:
                        yield Sample(name, {"target": target.id, "certificate": kind}, at.timestamp(), None)

        yield _PerTarget("luccs_detector_target_state", "Target state (1 up, 0 down, -1 unknown)", state)
        yield _PerTarget("luccs_detector_target_degraded", "1 when an up target is slower than its bound", degraded)
        yield _PerTarget("luccs_detector_cert_expiry_timestamp_seconds",
                         "Expiry of the certificate a target presented", expiry)
        yield _PerTarget(
            "luccs_detector_as4_cert_expiry_timestamp_seconds",
            "Expiry of the certificates of signed AS4 pings: ours (signing) and the receipt signer's (partner)",
            as4_expiry,
        )
        counts = GaugeMetricFamily(
            "luccs_detector_targets", "Targets by component and state", labels=["component", "state"]
        )
        tally: Tally[tuple[str, str]] = Tally(
            (target.component.value, status.state.value) for target, status in statuses()
        )
        for (component, state_name), count in sorted(tally.items()):
            counts.add_metric([component, state_name], count)
        yield counts

    def describe(self) -> Iterator[Metric]:
        return iter(())
