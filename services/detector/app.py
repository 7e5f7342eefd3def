"""Detector service: probes the configured targets and publishes their availability.

A state change is published at once; every target's current state is re-published as a heartbeat
every ``heartbeat_s``. If the broker is unreachable, probing continues and the latest state of each
target is published when it comes back (one pending message per target: nothing grows without bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.detector.domain import ProbeResult, TargetStatus, Thresholds, Transition, observe
from services.detector.probes import probe_http
from shared.config import ConfigError, Settings, TargetSettings
from shared.events import AvailabilityData, CloudEvent, ComponentState, EventType
from shared.http import add_ops_routes
from shared.kafka import Publisher, ensure_topics
from shared.tasks import BackgroundTasks

log = logging.getLogger(__name__)

_STATE_VALUE = {ComponentState.DOWN: 0, ComponentState.UP: 1, ComponentState.UNKNOWN: -1}


@dataclass
class _Metrics:
    probe_seconds: Histogram
    results: Counter
    state: Gauge
    publish_failures: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> _Metrics:
        return cls(
            probe_seconds=Histogram(
                "luccs_detector_probe_duration_seconds", "Probe duration", ["target"], registry=registry
            ),
            results=Counter(
                "luccs_detector_probe_results_total", "Probe results by reason", ["target", "reason"],
                registry=registry,
            ),
            state=Gauge(
                "luccs_detector_target_state", "Target state (1 up, 0 down, -1 unknown)", ["target"],
                registry=registry,
            ),
            publish_failures=Counter(
                "luccs_detector_publish_failures_total", "Failed publications to Kafka", registry=registry
            ),
        )


class Detector:
    """Holds every target's status and runs the probe, heartbeat and publish loops."""

    def __init__(self, settings: Settings, *, publisher: Publisher, registry: CollectorRegistry) -> None:
        self._settings = settings
        self._publisher = publisher
        self._metrics = _Metrics.create(registry)
        self.targets: dict[str, TargetSettings] = {t.id: t for t in settings.detector.targets}
        self.statuses: dict[str, TargetStatus] = {t: TargetStatus() for t in self.targets}
        self._pending: dict[str, CloudEvent[AvailabilityData]] = {}
        self._wakeup = asyncio.Event()
        self.last_publish_error: str | None = None

    def _thresholds(self, target: TargetSettings) -> Thresholds:
        d = self._settings.detector
        return Thresholds(
            failure=target.failure_threshold or d.failure_threshold,
            success=target.success_threshold or d.success_threshold,
        )

    async def probe_loop(self, target: TargetSettings, client: httpx.AsyncClient, offset_s: float) -> None:
        interval = target.interval_s or self._settings.detector.interval_s
        timeout = target.timeout_s or self._settings.detector.timeout_s
        thresholds = self._thresholds(target)
        loop = asyncio.get_running_loop()
        next_at = loop.time() + offset_s
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            result = await probe_http(client, target.url, timeout_s=min(timeout, interval))
            self._metrics.probe_seconds.labels(target.id).observe((result.latency_ms or 0) / 1000)
            self._metrics.results.labels(target.id, result.reason).inc()
            status, transition = observe(self.statuses[target.id], result, thresholds)
            self.statuses[target.id] = status
            self._metrics.state.labels(target.id).set(_STATE_VALUE[status.state])
            if transition is not None:
                log.info(
                    "target %s is %s (was %s): %s", target.id, transition.current.value,
                    transition.previous.value, result.detail,
                )
                self._enqueue(target, status, result, transition)
            if next_at < loop.time():  # fell behind (probe slower than interval): do not burst to catch up
                next_at = loop.time()

    def _enqueue(
        self, target: TargetSettings, status: TargetStatus, result: ProbeResult, transition: Transition | None
    ) -> None:
        self._pending[target.id] = self._event(target, status, result, transition)
        self._wakeup.set()

    def _event(
        self, target: TargetSettings, status: TargetStatus, result: ProbeResult, transition: Transition | None
    ) -> CloudEvent[AvailabilityData]:
        instance = self._settings.detector.instance_id
        return CloudEvent[AvailabilityData](
            source=f"/luccs-fallback/detector/{instance}",
            type=EventType.AVAILABILITY_CHANGED if transition else EventType.AVAILABILITY_HEARTBEAT,
            subject=target.id,
            data=AvailabilityData(
                target_id=target.id,
                component=target.component,
                detector_instance=instance,
                state=status.state,
                previous_state=transition.previous if transition else None,
                since=status.since or result.finished_at,
                observed_at=result.finished_at,
                probe=target.probe,
                ok=result.ok,
                reason=result.reason,
                detail=result.detail,
                latency_ms=result.latency_ms,
            ),
        )

    async def heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.detector.heartbeat_s)
            for target_id, status in self.statuses.items():
                # A pending change is newer than any heartbeat; do not replace it.
                if status.last is not None and target_id not in self._pending:
                    self._enqueue(self.targets[target_id], status, status.last, None)

    async def publish_loop(self) -> None:
        topic = self._settings.kafka.availability_topic
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            for target_id in list(self._pending):
                event = self._pending[target_id]
                try:
                    await self._publisher.publish(topic, event, key=target_id)
                except Exception as exc:
                    self._metrics.publish_failures.inc()
                    self.last_publish_error = f"{type(exc).__name__}: {exc}"
                    log.warning("publishing %s failed, will retry: %s", target_id, self.last_publish_error)
                    await asyncio.sleep(1.0)
                    self._wakeup.set()
                    break
                self.last_publish_error = None
                # Only drop it if no newer state arrived while we were publishing.
                if self._pending.get(target_id) is event:
                    del self._pending[target_id]


def create_app(settings: Settings) -> FastAPI:
    """The detector's FastAPI app; its lifespan starts the broker client and the probe loops."""
    unsupported = [f"{t.id} ({t.probe})" for t in settings.detector.targets if t.probe != "http"]
    if unsupported:
        raise ConfigError(f"probe kinds not implemented yet, only 'http' is: {', '.join(unsupported)}")
    registry = CollectorRegistry()
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await ensure_topics(settings.kafka)
        publisher = Publisher(settings.kafka, client_id=f"detector-{settings.detector.instance_id}")
        await publisher.start()
        detector = Detector(settings, publisher=publisher, registry=registry)
        state["detector"] = detector
        tasks = BackgroundTasks()
        state["tasks"] = tasks
        async with httpx.AsyncClient(follow_redirects=False) as client:
            # Spread the first probes over a quarter of the interval rather than firing them all at once.
            spread = settings.detector.interval_s / 4 / max(1, len(detector.targets))
            for i, target in enumerate(detector.targets.values()):
                tasks.start(detector.probe_loop(target, client, offset_s=i * spread), name=f"probe:{target.id}")
            tasks.start(detector.publish_loop(), name="publish")
            tasks.start(detector.heartbeat_loop(), name="heartbeat")
            try:
                yield
            finally:
                await tasks.stop()
                await publisher.stop()

    app = FastAPI(title="luccs-fallback detector", version="1", lifespan=lifespan)

    async def broker_ready() -> str | None:
        detector: Detector | None = state.get("detector")
        if detector is None:
            return "starting"
        return detector.last_publish_error

    async def loops_alive() -> str | None:
        tasks: BackgroundTasks | None = state.get("tasks")
        return "starting" if tasks is None else await tasks.problem()

    add_ops_routes(app, checks={"kafka": broker_ready, "loops": loops_alive}, registry=registry)

    def view(target_id: str) -> dict[str, Any]:
        detector: Detector = state["detector"]
        target = detector.targets[target_id]
        status = detector.statuses[target_id]
        last = status.last
        return {
            "id": target.id,
            "component": target.component,
            "probe": target.probe,
            "url": target.url,
            "state": status.state,
            "since": status.since,
            "last_result": None if last is None else {
                "ok": last.ok, "reason": last.reason, "detail": last.detail,
                "latency_ms": last.latency_ms, "at": last.finished_at,
            },
        }

    @app.get("/api/v1/targets", tags=["targets"], summary="Every probed target with its state")
    async def list_targets() -> dict[str, Any]:
        detector: Detector = state["detector"]
        return {"items": [view(t) for t in sorted(detector.targets)], "next": None}

    @app.get("/api/v1/targets/{target_id}", tags=["targets"], summary="One target")
    async def get_target(target_id: str) -> dict[str, Any]:
        if target_id not in state["detector"].targets:
            raise HTTPException(404, f"no target {target_id!r}")
        return view(target_id)

    return app
