"""The detector's per-probe series, counted through their cached labelled children."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from services.detector.metrics import DetectorMetrics


def test_probe_done_counts_each_label_set_in_its_own_series_however_often_it_is_called() -> None:
    registry = CollectorRegistry()
    metrics = DetectorMetrics.create(registry)
    for _ in range(3):
        metrics.probe_done(probe="as4", component="ada_b2g", reason="ok", seconds=0.02)
    metrics.probe_done(probe="as4", component="ada_b2g", reason="timeout", seconds=2.0)
    metrics.probe_done(probe="http", component="ntp", reason="ok", seconds=0.004)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("luccs_detector_probe_results_total", probe="as4", component="ada_b2g", reason="ok") == 3
    assert value("luccs_detector_probe_results_total", probe="as4", component="ada_b2g", reason="timeout") == 1
    assert value("luccs_detector_probe_results_total", probe="http", component="ntp", reason="ok") == 1
    assert value("luccs_detector_probe_duration_seconds_count", probe="as4", component="ada_b2g") == 4
    assert value("luccs_detector_probe_duration_seconds_sum", probe="as4", component="ada_b2g") == 2.06
    assert value("luccs_detector_probe_duration_seconds_bucket", probe="http", component="ntp", le="0.005") == 1
