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


class _TargetCollector(Collector):
    def __init__(self, statuses: StatusView) -> None:
        self._statuses = statuses

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "luccs_detector_target_state", "Target state (1 up, 0 down, -1 unknown)", labels=["target", "component"]
        )
        degraded = GaugeMetricFamily(
            "luccs_detector_target_degraded", "1 when an up target is slower than its bound", labels=["target"]
        )
        expiry = GaugeMetricFamily(
            "luccs_detector_cert_expiry_timestamp_seconds", "Expiry of the certificate a target presented",
            labels=["target"],
        )
        as4_expiry = GaugeMetricFamily(
            "luccs_detector_as4_cert_expiry_timestamp_seconds",
            "Expiry of the certificates of signed AS4 pings: ours (signing) and the receipt signer's (partner)",
            labels=["target", "certificate"],
        )
        counts = GaugeMetricFamily(
            "luccs_detector_targets", "Targets by component and state", labels=["component", "state"]
        )
        tally: Tally[tuple[str, str]] = Tally()
        for target, status in self._statuses():
            state.add_metric([target.id, target.component.value], STATE_VALUE[status.state])
            degraded.add_metric([target.id], 1 if status.degraded else 0)
            tally[(target.component.value, status.state.value)] += 1
            expires_at = status.last.cert_expires_at if status.last is not None else None
            if expires_at is not None:
                expiry.add_metric([target.id], expires_at.timestamp())
            if status.last is not None:
                for kind, at in (("signing", status.last.signing_cert_expires_at),
                                 ("partner", status.last.partner_cert_expires_at)):
                    if at is not None:
                        as4_expiry.add_metric([target.id, kind], at.timestamp())
        for (component, state_name), count in sorted(tally.items()):
            counts.add_metric([component, state_name], count)
        yield from (state, degraded, expiry, as4_expiry, counts)

    def describe(self) -> Iterator[Metric]:
        return iter(())
