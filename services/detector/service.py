"""The detector's use cases: keep the set of targets, fold each probe result in, decide what to publish.

The state decisions are the domain's; this module applies them to the detector's in-memory state and
hands what must be said to the outbox (a change at once, every state again as a heartbeat).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from services.detector.domain import (
    ProbeResult,
    TargetStatus,
    Transition,
    cert_warning,
    cert_warning_crossed,
    observe,
    reset_counters,
)
from services.detector.metrics import DetectorMetrics
from services.detector.outbox import Outbox, Send, note_superseded
from services.detector.probes import Prober
from services.detector.scheduler import Scheduler
from services.detector.targets import InvalidTarget, Target, eo_target_id, from_eo
from shared.config import DetectorSettings
from shared.events import AvailabilityData, CloudEvent, EoData, EventType

log = logging.getLogger(__name__)


class Detector:
    """Every target's status, the scheduler that probes them and the outbox that publishes them."""

    def __init__(
        self, *, settings: DetectorSettings, prober: Prober, send: Send, metrics: DetectorMetrics
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self.targets: dict[str, Target] = {}
        self.statuses: dict[str, TargetStatus] = {}
        self._cert_levels: dict[str, int | None] = {}
        self.scheduler = Scheduler(
            probe=prober.probe,
            on_result=self.record,
            max_concurrency=settings.max_concurrency,
            per_host_limit=settings.per_host_limit,
            metrics=metrics,
        )
        self.outbox = Outbox(
            build=self.event,
            send=send,
            on_failure=lambda _exc: metrics.publish_failures.inc(),
            on_superseded=metrics.collapsed.inc,
        )
        metrics.pending.set_function(lambda: len(self.outbox))

    def view(self) -> Iterator[tuple[Target, TargetStatus]]:
        for target_id, target in list(self.targets.items()):
            status = self.statuses.get(target_id)
            if status is not None:
                yield target, status

    # --- the set of targets -----------------------------------------------------------------------

    def put(self, target: Target) -> bool:
        """Add or replace a target; return whether anything changed (a changed one is probed anew)."""
        existing = self.targets.get(target.id)
        if existing == target:
            return False
        self.targets[target.id] = target
        status = self.statuses.get(target.id)
        # A changed endpoint keeps the target's state until new probes decide, counting from zero.
        self.statuses[target.id] = reset_counters(status) if status is not None else TargetStatus()
        self.scheduler.schedule(target)
        return True

    def remove(self, target_id: str) -> bool:
        """Stop probing and publishing ``target_id``; return whether it was a target."""
        if self.targets.pop(target_id, None) is None:
            return False
        self.statuses.pop(target_id, None)
        self._cert_levels.pop(target_id, None)
        self.scheduler.unschedule(target_id)
        self.outbox.drop(target_id)
        return True

    def on_eo(self, eo: EoData) -> str:
        """Follow an EO registry upsert: probe its AS4 endpoint, or stop when it has none. Returns the outcome."""
        target_id = eo_target_id(eo.eori)
        try:
            target = from_eo(eo, self._settings)
        except InvalidTarget as exc:
            log.warning("EO %s: not probing its AS4 endpoint: %s", eo.eori, exc)
            self.remove(target_id)
            return "rejected"
        if target is None:
            return "removed" if self.remove(target_id) else "no_endpoint"
        if self.put(target):
            log.info("probing the AS4 endpoint of EO %s: %s", eo.eori, target.url)
            return "upserted"
        return "unchanged"

    def on_eo_removed(self, eori: str) -> str:
        """Follow an EO registry tombstone."""
        return "removed" if self.remove(eo_target_id(eori)) else "unknown"

    def retain_eos(self, eoris: set[str]) -> None:
        """After a full replay of the registry, drop EO targets the registry no longer has."""
        for target_id, target in list(self.targets.items()):
            if target.source == "registry" and target.eori not in eoris:
                self.remove(target_id)

    # --- probe results --------------------------------------------------------------------------

    def record(self, target: Target, result: ProbeResult) -> None:
        """Fold one probe result into the target's status and mark what has to be published."""
        before = self.statuses.get(target.id)
        if before is None:
            return  # removed while the probe ran
        status, transition = observe(before, result, target.thresholds)
        self.statuses[target.id] = status
        metrics = self._metrics
        metrics.probe_seconds.labels(target.probe, target.component.value).observe((result.latency_ms or 0) / 1000)
        metrics.results.labels(target.probe, target.component.value, result.reason).inc()
        if transition is not None:
            log.info(
                "target %s is %s (was %s): %s %s", target.id, transition.current.value,
                transition.previous.value, result.reason, result.detail or "",
            )
            metrics.transitions.labels(target.component.value, transition.current.value).inc()
            self.outbox.changed(target.id, transition)
        elif status.degraded != before.degraded:
            log.info("target %s %s degraded (latency %s ms)", target.id,
                     "is" if status.degraded else "is no longer", result.latency_ms)
            self.outbox.refresh(target.id)
        self._check_certificate(target, result)

    def _check_certificate(self, target: Target, result: ProbeResult) -> None:
        if result.cert_expires_at is None:
            return
        level = cert_warning(
            result.cert_expires_at, now=result.finished_at, levels=self._settings.cert_warning_days
        )
        if cert_warning_crossed(self._cert_levels.get(target.id), level):
            when = result.cert_expires_at.isoformat()
            if level == 0:
                log.warning("certificate of target %s has expired (%s)", target.id, when)
            else:
                log.warning("certificate of target %s expires within %d days (%s)", target.id, level, when)
        self._cert_levels[target.id] = level

    def cert_warning_of(self, target_id: str) -> int | None:
        return self._cert_levels.get(target_id)

    # --- publication ----------------------------------------------------------------------------

    def event(
        self, target_id: str, transition: Transition | None, superseded: int
    ) -> CloudEvent[AvailabilityData] | None:
        """The availability event of ``target_id`` as it stands now (None if it is gone or never probed)."""
        target = self.targets.get(target_id)
        status = self.statuses.get(target_id)
        if target is None or status is None or status.last is None:
            return None
        last = status.last
        instance = self._settings.instance_id
        return CloudEvent[AvailabilityData](
            source=f"/luccs-fallback/detector/{instance}",
            type=EventType.AVAILABILITY_CHANGED if transition else EventType.AVAILABILITY_HEARTBEAT,
            subject=target.id,
            data=AvailabilityData(
                target_id=target.id,
                component=target.component,
                eori=target.eori,
                detector_instance=instance,
                state=status.state,
                previous_state=transition.previous if transition else None,
                since=status.since or last.finished_at,
                observed_at=last.finished_at,
                probe=target.probe,
                ok=last.ok,
                reason=last.reason,
                detail=note_superseded(last.detail, superseded),
                latency_ms=last.latency_ms,
                degraded=status.degraded,
                cert_expires_at=last.cert_expires_at,
                ebms_error=last.ebms_error,
            ),
        )

    async def heartbeat_loop(self) -> None:
        """Mark every probed target for re-publication every ``heartbeat_s``."""
        while True:
            await asyncio.sleep(self._settings.heartbeat_s)
            for target_id, status in list(self.statuses.items()):
                if status.last is not None:
                    self.outbox.refresh(target_id)
