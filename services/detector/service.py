"""The detector's use cases: keep the set of targets, fold each probe result in, decide what to publish.

The state decisions are the domain's; this module applies them to the detector's in-memory state and
hands what must be said to the latest-state buffer (a change at once, every state again as a heartbeat, and a suspicion
at once: the first probe that disagrees with a target's state, every further one of the streak, and the one
that ends the streak without a change, each as a heartbeat carrying the suspicion fields).

It also decides what is saved across restarts (the database itself is ``store.py``'s): every target whose
status changed since the last save is noted (:meth:`Detector.take_changes`, written behind in batches),
and a state change or a publication asks for a save at once (:attr:`Detector.save_now`), so that a change
the broker has not acknowledged is durable within milliseconds. At start the saved targets are handed
over (:meth:`Detector.resume_from`) and each one resumes when its target is put again, from the
configuration or the EO registry; the others are forgotten (:meth:`Detector.forget_unclaimed`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from services.detector.clock import Clock, running_clock, sleep
from services.detector.domain import (
    ProbeResult,
    TargetStatus,
    Transition,
    corroborating,
    is_suspect,
    observe,
    reset_counters,
    resume,
    suspicion,
)
from services.detector.latest import LatestStates, Send, note_superseded
from services.detector.metrics import DetectorMetrics
from services.detector.probes import Prober
from services.detector.scheduler import Scheduler
from services.detector.targets import EO_TARGET_PREFIX, InvalidTarget, Target, eo_target_id, from_eo
from services.detector.vantage import owns
from services.detector.workers import WorkerPool
from shared.certificates import cert_warning, cert_warning_crossed
from shared.config import DetectorSettings, LoggingSettings, ProbeKind
from shared.events import AvailabilityData, CloudEvent, Component, EoData, EventType
from shared.gc_settle import GcSettler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SavedTarget:
    """What the detector keeps of one target across a restart.

    ``unpublished`` is the change its consumers have not been told yet (with ``superseded`` changes folded
    into it); ``component``, ``probe`` and ``url`` tell whether the target is still the same endpoint.
    """

    target_id: str
    component: Component
    probe: ProbeKind
    url: str
    status: TargetStatus
    unpublished: Transition | None = None
    superseded: int = 0
    cert_warning: int | None = None


class Detector:
    """Every target's status, the scheduler that probes them and the buffer that publishes their latest states."""

    def __init__(
        self,
        *,
        settings: DetectorSettings,
        prober: Prober,
        send: Send,
        metrics: DetectorMetrics,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        logging_settings: LoggingSettings | None = None,
        ticks: Clock | None = None,
        settler: GcSettler | None = None,
    ) -> None:
        self._settings = settings
        self._settler = settler  # None: the collector's defaults (tests); the service freezes its targets
        self._metrics = metrics
        self._clock = clock
        self._ticks = ticks  # monotonic time of the loops (heartbeats, probes, retries); None: the running loop's
        self.targets: dict[str, Target] = {}
        self.statuses: dict[str, TargetStatus] = {}
        self._cert_levels: dict[str, int | None] = {}
        self._as4_cert_levels: dict[tuple[str, str], int | None] = {}  # (target, "signing"|"partner") -> level
        self._saved: dict[str, SavedTarget] = {}  # saved before the restart, not put again yet
        self._held: dict[str, tuple[Transition | None, int]] = {}  # unpublished changes of unconfirmed targets
        self._resumed: set[str] = set()  # resumed from a save, not probed since: publish the first result
        self._changed: set[str] = set()  # to save
        self._eo_keys: dict[str, str] = {}  # SHA-256 of an EO's API key -> its EORI (from the registry)
        self._eo_key_of: dict[str, str] = {}  # and back
        self._forgotten: set[str] = set()  # to delete from the saved targets
        self._registered: dict[str, Target] = {}  # every EO endpoint of the registry; those probed here are in targets
        self._vantage_members: frozenset[str] | None = None  # live instances (vantage_points); None: not known yet
        self.save_now = asyncio.Event()
        """Set when something should be saved at once rather than with the next batch."""
        self.scheduler: Scheduler | WorkerPool
        if settings.workers > 1:  # probes in child processes; their results come back to record()
            logs = logging_settings or LoggingSettings()
            self.scheduler = WorkerPool(
                workers=settings.workers, on_result=self.record, max_concurrency=settings.max_concurrency,
                per_host_limit=settings.per_host_limit, metrics=metrics, log_level=logs.level,
                log_format=logs.format,
            )
        else:
            self.scheduler = Scheduler(
                probe=prober.probe,
                on_result=self.record,
                max_concurrency=settings.max_concurrency,
                per_host_limit=settings.per_host_limit,
                metrics=metrics,
                clock=ticks,
            )
        self.latest = LatestStates(
            build=self.event,
            send=send,
            on_failure=lambda _exc: metrics.publish_failures.inc(),
            on_superseded=metrics.collapsed.inc,
            on_published=self._published,
            clock=ticks,
        )
        metrics.pending.set_function(lambda: len(self.latest))

    def view(self) -> Iterator[tuple[Target, TargetStatus]]:
        for target_id, target in list(self.targets.items()):
            status = self.statuses.get(target_id)
            if status is not None:
                yield target, status

    # --- the set of targets -----------------------------------------------------------------------

    def put(self, target: Target) -> bool:
        """Add or replace a target; return whether anything changed (a changed one is probed anew).

        A target saved before the restart resumes where it was (see :func:`~services.detector.domain.resume`).
        """
        existing = self.targets.get(target.id)
        if existing == target:
            return False
        self.targets[target.id] = target
        self._forgotten.discard(target.id)
        status = self.statuses.get(target.id)
        # A changed endpoint keeps the target's state until new probes decide, counting from zero.
        self.statuses[target.id] = reset_counters(status) if status is not None else self._resume(target)
        self._changed.add(target.id)
        self.scheduler.schedule(target)
        if self._settler is not None:
            self._settler.changed()
        return True

    def remove(self, target_id: str) -> bool:
        """Stop probing and publishing ``target_id`` and forget it; return whether it was a target."""
        self._registered.pop(target_id, None)
        return self._unprobe(target_id)

    def _unprobe(self, target_id: str) -> bool:
        if self._saved.pop(target_id, None) is not None:
            self._forgotten.add(target_id)
        if self.targets.pop(target_id, None) is None:
            return False
        self.statuses.pop(target_id, None)
        self._cert_levels.pop(target_id, None)
        self._as4_cert_levels.pop((target_id, "signing"), None)
        self._as4_cert_levels.pop((target_id, "partner"), None)
        self._held.pop(target_id, None)
        self._resumed.discard(target_id)
        self._changed.discard(target_id)
        self._forgotten.add(target_id)
        self.scheduler.unschedule(target_id)
        self.latest.drop(target_id)
        return True

    def on_eo(self, eo: EoData) -> str:
        """Follow an EO registry upsert: probe its AS4 endpoint, or stop when it has none. Returns the outcome."""
        self._learn_key(eo.eori, eo.api_key_hash)
        target_id = eo_target_id(eo.eori)
        try:
            target = from_eo(eo, self._settings)
        except InvalidTarget as exc:
            log.warning("EO %s: not probing its AS4 endpoint: %s", eo.eori, exc)
            self.remove(target_id)
            return "rejected"
        if target is None:
            return "removed" if self.remove(target_id) else "no_endpoint"
        # Keyed by the target's own id string: an equal copy per EO would cost 6 MiB at 100,000 EOs.
        self._registered[target.id] = target
        if not self._probes_here(target):
            self._unprobe(target.id)
            return "elsewhere"
        if self.put(target):
            log.info("probing the AS4 endpoint of EO %s: %s", eo.eori, target.url)
            return "upserted"
        return "unchanged"

    def eori_of_key(self, api_key: str) -> str | None:
        """The EO an API key belongs to (the registry publishes only its hash), or None."""
        return self._eo_keys.get(hashlib.sha256(api_key.encode()).hexdigest())

    def _learn_key(self, eori: str, digest: str | None) -> None:
        previous = self._eo_key_of.pop(eori, None)
        if previous is not None:
            self._eo_keys.pop(previous, None)
        if digest is not None:
            self._eo_keys[digest] = eori
            self._eo_key_of[eori] = digest

    def on_eo_removed(self, eori: str) -> str:
        """Follow an EO registry tombstone."""
        self._learn_key(eori, None)
        return "removed" if self.remove(eo_target_id(eori)) else "unknown"

    def retain_eos(self, eoris: set[str]) -> None:
        """After a full replay of the registry, drop EO targets the registry no longer has (saved ones too)."""
        for eori in [e for e in self._eo_key_of if e not in eoris]:
            self._learn_key(eori, None)
        for target_id, target in list(self._registered.items()):
            if target.eori not in eoris:
                self.remove(target_id)
        self.forget_unclaimed(registry=True)

    # --- vantage points -------------------------------------------------------------------------

    def _probes_here(self, target: Target) -> bool:
        k = self._settings.vantage_points
        if not k or target.source != "registry" or self._vantage_members is None:
            return True  # configured (national) targets everywhere; every EO until the live instances are known
        return owns(self._settings.instance_id, target.id, self._vantage_members, k)

    @property
    def eo_endpoints(self) -> int:
        """EO endpoints in the registry, probed here or by the other vantage points."""
        return len(self._registered)

    @property
    def vantage_members(self) -> frozenset[str] | None:
        """The live detector instances the EO endpoints are shared among (None: not known, or every EO here)."""
        return self._vantage_members

    def set_vantage_members(self, members: frozenset[str]) -> tuple[int, int]:
        """Follow the live detector instances (``vantage_points``): probe the EO endpoints this instance is now
        one of the k owners of, stop probing the others. Returns (taken over, handed over)."""
        self._vantage_members = members
        taken = handed = 0
        for target_id, target in list(self._registered.items()):
            if self._probes_here(target):
                if target_id not in self.targets:
                    self.put(target)
                    taken += 1
            elif self._unprobe(target_id):
                handed += 1
        if taken or handed:
            log.info("detector instances now %s: probing %d more EO endpoints, %d fewer (%d of %d here)",
                     ", ".join(sorted(members)), taken, handed,
                     sum(1 for t in self.targets.values() if t.source == "registry"), len(self._registered))
        return taken, handed

    # --- across restarts ------------------------------------------------------------------------

    def resume_from(self, saved: Iterable[SavedTarget]) -> None:
        """Take the targets saved before the restart: each resumes when its target is put again."""
        self._saved = {s.target_id: s for s in saved}

    def forget_unclaimed(self, *, registry: bool) -> None:
        """Forget the saved targets that were not put again: the configured ones (``registry`` False) once
        the configuration is applied, the EO ones once the registry has been replayed (or is not followed)."""
        for target_id in [t for t in self._saved if t.startswith(EO_TARGET_PREFIX) == registry]:
            del self._saved[target_id]
            self._forgotten.add(target_id)
            log.info("target %s is no longer %s: its saved state is dropped", target_id,
                     "registered" if registry else "configured")

    def _resume(self, target: Target) -> TargetStatus:
        saved = self._saved.pop(target.id, None)
        if saved is None:
            return TargetStatus()
        status = resume(saved.status, now=self._clock(), interval_s=target.interval_s, thresholds=target.thresholds)
        if (saved.component, saved.probe, saved.url) != (target.component, target.probe, target.url):
            status = reset_counters(status)  # another endpoint now: as for a changed one
        self._cert_levels[target.id] = saved.cert_warning
        self._resumed.add(target.id)
        if saved.unpublished is not None or saved.superseded:
            if status.unconfirmed:
                self._held[target.id] = (saved.unpublished, saved.superseded)
            else:
                self.latest.restore(target.id, saved.unpublished, saved.superseded)
        if status.unconfirmed:
            log.info("target %s resumes %s since %s, not confirmed since a restart long after its last probe: "
                     "not published until fresh probes confirm it", target.id, status.state.value, status.since)
        return status

    def take_changes(self) -> tuple[list[SavedTarget], list[str]]:
        """What to save now: every target whose status changed since the last call, and the forgotten ones.

        After a failed save, hand them back with :meth:`untake`.
        """
        changed, self._changed = self._changed, set()
        forgotten, self._forgotten = self._forgotten, set()
        saved = [s for target_id in changed if (s := self.snapshot(target_id)) is not None]
        return saved, sorted(forgotten)

    def untake(self, saved: Iterable[SavedTarget], forgotten: Iterable[str]) -> None:
        """Mark again what a failed save did not write (unless it was put or removed meanwhile)."""
        self._changed.update(s.target_id for s in saved if s.target_id in self.targets)
        self._forgotten.update(t for t in forgotten if t not in self.targets)

    def snapshot(self, target_id: str) -> SavedTarget | None:
        """What is saved of ``target_id`` as it stands now (None while it has never been probed)."""
        target, status = self.targets.get(target_id), self.statuses.get(target_id)
        if target is None or status is None or status.last is None:
            return None
        held = self._held.get(target_id)
        unpublished, superseded = held if held is not None else self.latest.unpublished(target_id)
        return SavedTarget(
            target_id=target_id, component=target.component, probe=target.probe, url=target.url, status=status,
            unpublished=unpublished, superseded=superseded, cert_warning=self._cert_levels.get(target_id),
        )

    def _published(self, target_id: str, transition: Transition | None, superseded: int) -> None:
        if (transition is not None or superseded) and target_id in self.targets:
            self._changed.add(target_id)  # its saved copy must no longer say "unpublished"
            self.save_now.set()

    # --- probe results --------------------------------------------------------------------------

    def record(self, target: Target, result: ProbeResult) -> TargetStatus | None:
        """Fold one probe result into the target's status and mark what has to be published; return the
        new status (None if the target was removed while the probe ran), which paces the next probe."""
        before = self.statuses.get(target.id)
        if before is None:
            return None
        status, transition = observe(before, result, target.thresholds)
        self.statuses[target.id] = status
        self._changed.add(target.id)
        first_since_restart = target.id in self._resumed
        self._resumed.discard(target.id)
        metrics = self._metrics
        metrics.probe_done(probe=target.probe, component=target.component.value, reason=result.reason,
                           seconds=(result.latency_ms or 0) / 1000)
        if transition is not None:
            log.info(
                "target %s is %s (was %s): %s %s", target.id, transition.current.value,
                transition.previous.value, result.reason, result.detail or "",
            )
            metrics.transitions.labels(target.component.value, transition.current.value).inc()
            self._release_held(target.id)
            self.latest.changed(target.id, transition)
            self.save_now.set()
        elif status.unconfirmed:
            pass  # a state saved long ago: published once fresh probes confirm it
        elif before.unconfirmed:
            log.info("target %s: fresh probes confirm it %s since %s", target.id, status.state.value, status.since)
            if not self._release_held(target.id):
                self.latest.refresh(target.id)
        elif status.degraded != before.degraded:
            log.info("target %s %s degraded (latency %s ms)", target.id,
                     "is" if status.degraded else "is no longer", result.latency_ms)
            self.latest.refresh(target.id)
        elif first_since_restart:
            self.latest.refresh(target.id)  # resumed: current again at once, not at the next heartbeat
        elif is_suspect(status) or is_suspect(before):
            # A change may be on its way (or the streak grew: a fresher verdict estimate), or the streak broke
            # without one: a consumer waiting for this target's verdict learns it now, not at the heartbeat.
            self.latest.refresh(target.id)
        if is_suspect(status) and not is_suspect(before):
            self._corroborate(target)
        self._check_certificate(target, result)
        return status

    def _corroborate(self, target: Target) -> None:
        """A national target turned suspect: probe the other national component's targets now (see
        :func:`~services.detector.domain.corroborating`), unless their own streaks already run."""
        other = corroborating(target.component)
        if other is None:
            return
        probed = [
            t.id for t in self.targets.values()
            if t.component == other and not is_suspect(self.statuses.get(t.id) or TargetStatus())
            and self.scheduler.probe_now(t.id)
        ]
        if probed:
            log.info("target %s is suspect: probing %s now (%s)", target.id, other.value, ", ".join(probed))

    def _release_held(self, target_id: str) -> bool:
        held = self._held.pop(target_id, None)
        if held is None:
            return False
        self.latest.restore(target_id, *held)
        return True

    def _check_certificate(self, target: Target, result: ProbeResult) -> None:
        if result.cert_expires_at is not None:
            level = cert_warning(
                result.cert_expires_at, now=result.finished_at, levels=self._settings.cert_warning_days
            )
            if cert_warning_crossed(self._cert_levels.get(target.id), level):
                _warn_expiry("certificate", target.id, level, result.cert_expires_at)
            self._cert_levels[target.id] = level
        # A signed AS4 ping depends on two more certificates: ours (the MSH refuses an expired one) and the
        # partner's receipt-signing one (an expired one makes every receipt untrusted).
        for kind, expires_at in (("signing", result.signing_cert_expires_at),
                                 ("partner", result.partner_cert_expires_at)):
            if expires_at is None:
                continue
            level = cert_warning(expires_at, now=result.finished_at, levels=self._settings.cert_warning_days)
            if cert_warning_crossed(self._as4_cert_levels.get((target.id, kind)), level):
                what = "our AS4 signing certificate" if kind == "signing" else "the partner's AS4 receipt certificate"
                _warn_expiry(what, target.id, level, expires_at)
            self._as4_cert_levels[(target.id, kind)] = level

    def cert_warning_of(self, target_id: str) -> int | None:
        return self._cert_levels.get(target_id)

    def as4_cert_warning_of(self, target_id: str) -> int | None:
        """The warning level of the sooner-expiring AS4 certificate of ``target_id`` (signing or partner)."""
        levels = [self._as4_cert_levels.get((target_id, kind)) for kind in ("signing", "partner")]
        reached = [level for level in levels if level is not None]
        return min(reached) if reached else None

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
        suspected = suspicion(
            status, target.thresholds, retry_interval_s=target.retry_interval_s, timeout_s=target.timeout_s
        )
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
                as4_signing_cert_expires_at=last.signing_cert_expires_at,
                as4_partner_cert_expires_at=last.partner_cert_expires_at,
                suspect=suspected.suspect,
                streak=suspected.streak,
                threshold=suspected.threshold,
                verdict_by=suspected.verdict_by,
            ),
        )

    async def heartbeat_loop(self) -> None:
        """Mark every probed target for re-publication every ``heartbeat_s`` (not unconfirmed ones)."""
        while True:
            await sleep(running_clock(self._ticks), self._settings.heartbeat_s)
            for target_id, status in list(self.statuses.items()):
                if status.last is not None and not status.unconfirmed:
                    self.latest.refresh(target_id)


def _warn_expiry(what: str, target_id: str, level: int | None, expires_at: datetime) -> None:
    when = expires_at.isoformat()
    if level == 0:
        log.warning("%s of target %s has expired (%s)", what, target_id, when)
    else:
        log.warning("%s of target %s expires within %d days (%s)", what, target_id, level, when)
