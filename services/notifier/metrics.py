"""The notifier's Prometheus metrics, registered on the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["NotifierMetrics"]


class NotifierMetrics:
    """Deliveries by outcome, attempts and their duration, fan-out duration, queue depth, registry size, and
    how many EOs each active procedure has not reached yet."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter(
            "luccs_notifier_delivery_outcomes_total",
            "Delivery attempts by channel and what they ended in (delivered, retrying, dead).",
            ["channel", "outcome"], registry=registry,
        )
        self.attempt_seconds = Histogram(
            "luccs_notifier_delivery_attempt_seconds", "Duration of one delivery attempt.", ["channel"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=registry,
        )
        self.planned = Counter(
            "luccs_notifier_deliveries_planned_total", "Deliveries planned, by audience and channel.",
            ["audience", "channel"], registry=registry,
        )
        self.fanout_seconds = Histogram(
            "luccs_notifier_fanout_seconds",
            "From an event's planning to the settling (delivered or dead) of its last delivery.",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400), registry=registry,
        )
        self.queue_depth = Gauge(
            "luccs_notifier_queue_depth", "Deliveries not settled yet (pending or retrying), by channel.",
            ["channel"], registry=registry,
        )
        self.registered_eos = Gauge(
            "luccs_notifier_registered_eos", "EOs in the notifier's copy of the registry.", registry=registry
        )
        self.unreachable_eos = Counter(
            "luccs_notifier_unreachable_eos_total",
            "EOs an event concerned that have neither webhook nor e-mail registered.", registry=registry,
        )
        self.unreached_eos = Gauge(
            "luccs_notifier_unreached_eos",
            "EOs an open procedure concerns that no notice of it has reached yet (the series goes when it closes).",
            ["procedure_id"], registry=registry,
        )
        self.escalations = Counter(
            "luccs_notifier_escalations_total",
            "EO notices e-mailed because a webhook notice was not delivered within notifier.escalate_after_s.",
            registry=registry,
        )
        self.digests = Counter(
            "luccs_notifier_unreached_digests_total",
            "Digests of the EOs a fan-out has not reached, sent to the Servicedesk.", registry=registry,
        )
