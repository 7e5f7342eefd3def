"""Per-target decisions of the detector: pure, no I/O, the clock comes in with each result or as an argument.

A target goes down after ``failure`` consecutive failed probes and up after ``success`` consecutive
successes; anything in between keeps its state, so a flapping target never changes state. The same
hysteresis decides ``degraded`` (up, but slower than the target's latency bound).

While a streak of probes disagreeing with the state runs, the target is *suspect* (:func:`suspicion`): a
change may be on its way, and the detector says so at once, with the latest time the change can be
decided (``verdict_by``), so that a consumer deciding over several targets (ADA B2G and NTP failing in the
same second) can wait for the other verdict instead of acting on half the picture. Such a streak, and an
undecided state, is probed at the faster retry pace (:func:`due_after_probe`), so that a change is
confirmed after about ``interval_s + (threshold - 1) x retry_interval_s`` rather than ``threshold``
intervals.

Besides the state machine this module holds the other decisions the detector makes about time: when a
target is next due (spread over the interval, never bursting to catch up; sooner while a streak runs),
how close a certificate is to expiry, how state changes that could not be published yet fold into one,
and how far a state saved before a restart is trusted.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from shared.dataclass_pickle import pickled_as_values
from shared.events import Component, ComponentState


@pickled_as_values  # part of every target sent to a probe worker
@dataclass(frozen=True, slots=True)
class Thresholds:
    """How many consecutive probes decide a change, and the latency above which an up target is degraded."""

    failure: int = 3
    success: int = 2
    degraded_latency_ms: float | None = None

    def __post_init__(self) -> None:
        if self.failure < 1 or self.success < 1:
            raise ValueError("thresholds must be at least 1")
        if self.degraded_latency_ms is not None and not self.degraded_latency_ms > 0:
            raise ValueError("the degraded latency bound must be positive")


@dataclass(frozen=True)
class ProbeResult:
    """What one probe saw. ``reason`` is a stable code (ok, refused, timeout, http_503, ebms_error, ...).

    ``ebms_error`` holds the ebMS error code of an AS4 answer that still proves the MSH alive;
    ``cert_expires_at`` the expiry of the certificate the server presented, when there was one. A signed AS4
    ping adds the expiry of our signing certificate and of the receipt's signing certificate (not saved
    across restarts: the next probe brings them again).
    """

    ok: bool
    reason: str
    finished_at: datetime
    latency_ms: float | None = None
    detail: str | None = None
    cert_expires_at: datetime | None = None
    ebms_error: str | None = None
    signing_cert_expires_at: datetime | None = None
    partner_cert_expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TargetStatus:
    """A target's decided state and since when, the counters that decide the next change, the last result.

    ``unconfirmed``: the state was saved before a restart too long ago to count as current (see
    :func:`resume`); fresh probes have not confirmed it yet, so it is shown but not published.
    """

    state: ComponentState = ComponentState.UNKNOWN
    since: datetime | None = None
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last: ProbeResult | None = None
    degraded: bool = False
    consecutive_slow: int = 0
    consecutive_fast: int = 0
    unconfirmed: bool = False


@dataclass(frozen=True)
class Transition:
    previous: ComponentState
    current: ComponentState
    at: datetime


def observe(
    status: TargetStatus, result: ProbeResult, thresholds: Thresholds
) -> tuple[TargetStatus, Transition | None]:
    """Fold one probe result into a target's status; return the new status and the transition, if any.

    ``degraded`` follows the same hysteresis as the state: it is set after ``failure`` consecutive
    successful probes slower than ``degraded_latency_ms`` and cleared after ``success`` consecutive fast
    ones. Failed probes leave it alone; it is only ever true while the target is up.
    """
    previous_degraded = status.degraded
    if result.ok:
        status = replace(
            status, consecutive_successes=status.consecutive_successes + 1, consecutive_failures=0, last=result
        )
        status = _count_speed(status, result, thresholds)
        target_state = ComponentState.UP if status.consecutive_successes >= thresholds.success else None
    else:
        status = replace(
            status, consecutive_failures=status.consecutive_failures + 1, consecutive_successes=0, last=result
        )
        target_state = ComponentState.DOWN if status.consecutive_failures >= thresholds.failure else None
    transition: Transition | None = None
    if target_state is not None and target_state != status.state:
        transition = Transition(previous=status.state, current=target_state, at=result.finished_at)
        status = replace(status, state=target_state, since=result.finished_at)
    if status.unconfirmed and (transition is not None or _confirms(status, thresholds)):
        status = replace(status, unconfirmed=False)
    slow_enough = status.consecutive_slow >= thresholds.failure
    fast_enough = status.consecutive_fast >= thresholds.success
    degraded = True if slow_enough else False if fast_enough else previous_degraded
    if thresholds.degraded_latency_ms is None:
        degraded = False
    return replace(status, degraded=degraded and status.state == ComponentState.UP), transition


def _confirms(status: TargetStatus, thresholds: Thresholds) -> bool:
    """Whether the fresh probes counted since a restart would have decided the state the target is in."""
    if status.state == ComponentState.UP:
        return status.consecutive_successes >= thresholds.success
    if status.state == ComponentState.DOWN:
        return status.consecutive_failures >= thresholds.failure
    return False


def _count_speed(status: TargetStatus, result: ProbeResult, thresholds: Thresholds) -> TargetStatus:
    bound = thresholds.degraded_latency_ms
    if bound is None:
        return replace(status, consecutive_slow=0, consecutive_fast=0)
    if result.latency_ms is not None and result.latency_ms > bound:
        return replace(status, consecutive_slow=status.consecutive_slow + 1, consecutive_fast=0)
    return replace(status, consecutive_fast=status.consecutive_fast + 1, consecutive_slow=0)


# --- suspicion --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suspicion:
    """What a target's latest probe says about a change to come (the suspicion fields of its events).

    ``streak``: consecutive probes, up to the latest, with the latest probe's outcome; ``threshold``: how
    many such probes change the state (None before the first probe); ``suspect``: the latest probe
    disagrees with a decided state; ``verdict_by``: while suspect, the latest time the streak can reach its
    threshold if every probe keeps its outcome, else None.
    """

    suspect: bool = False
    streak: int = 0
    threshold: int | None = None
    verdict_by: datetime | None = None


def streak(status: TargetStatus) -> int:
    """Consecutive probes up to the latest with the latest probe's outcome (0 before the first probe, and
    after the counters were reset for a changed endpoint: the old endpoint's probes count for nothing)."""
    last = status.last
    if last is None:
        return 0
    return status.consecutive_successes if last.ok else status.consecutive_failures


def _disagrees(state: ComponentState, ok: bool) -> bool:
    return (state == ComponentState.UP and not ok) or (state == ComponentState.DOWN and ok)


def is_suspect(status: TargetStatus) -> bool:
    """Whether a streak disagreeing with the decided state runs: a change may be on its way.

    ``unknown`` is never suspect: there is no state to change from, and an undecided target must not hold
    back a decision about another one.
    """
    last = status.last
    return (
        last is not None
        and status.state != ComponentState.UNKNOWN
        and streak(status) >= 1
        and _disagrees(status.state, last.ok)
    )


def corroborating(component: Component) -> Component | None:
    """The national component to probe at once when a target of ``component`` turns suspect, or None.

    The exception case is most often one event (the LUCCS platform down), so ADA B2G and NTP fail within
    the same second; but each target is probed at its own phase, and the other channel's next regular probe
    may come an interval later, after the first channel's verdict. Probed at once, the other channel's
    suspicion (or its all-clear) reaches the procedure service before that verdict, and the service can
    tell one story: scenario 3 at once rather than 2 and then 3, one close rather than 3 -> 2 -> closed.
    """
    return {Component.ADA_B2G: Component.NTP, Component.NTP: Component.ADA_B2G}.get(component)


def suspicion(
    status: TargetStatus, thresholds: Thresholds, *, retry_interval_s: float, timeout_s: float
) -> Suspicion:
    """The suspicion fields of a target's availability event, as its status stands.

    ``verdict_by`` is ``finished_at`` of the latest probe plus, for every probe still missing from the
    threshold, one retry interval (the next probe is due that long after the previous one finished, see
    :func:`due_after_probe`) and one timeout (the longest a probe takes). A consumer waits for a verdict no
    longer than that: if the change has not come by then, a probe broke the streak. Scheduler lag and waits
    for the concurrency limits are not in it (milliseconds on a detector that keeps up with its targets).
    """
    last = status.last
    if last is None:
        return Suspicion()
    run = streak(status)
    threshold = thresholds.success if last.ok else thresholds.failure
    if not is_suspect(status):
        return Suspicion(streak=run, threshold=threshold)
    # A streak at its threshold without a change (thresholds lowered under a running streak) still needs
    # one more probe: observe() decides on the probe that reaches or passes the threshold.
    remaining = max(threshold - run, 1)
    verdict_by = last.finished_at + timedelta(seconds=remaining * (retry_interval_s + timeout_s))
    return Suspicion(suspect=True, streak=run, threshold=threshold, verdict_by=verdict_by)


def reset_counters(status: TargetStatus) -> TargetStatus:
    """The status of a target whose endpoint changed: its state stands until new probes decide, from zero."""
    return replace(status, consecutive_failures=0, consecutive_successes=0, consecutive_slow=0, consecutive_fast=0)


# --- restarts ---------------------------------------------------------------------------------

RESUME_WINDOWS = 2
"""A saved state is current if its last probe is at most this many detection windows old (see :func:`resume`)."""


def detection_window(*, interval_s: float, thresholds: Thresholds) -> timedelta:
    """The time the thresholds take to decide a change: the larger threshold's worth of probe intervals."""
    return timedelta(seconds=interval_s * max(thresholds.failure, thresholds.success))


def resume(status: TargetStatus, *, now: datetime, interval_s: float, thresholds: Thresholds) -> TargetStatus:
    """The status a restarted detector goes on with, from the one it saved before it stopped.

    A target probed at most :data:`RESUME_WINDOWS` detection windows before ``now`` resumes as it was,
    counters and ``unconfirmed`` included (a state still unconfirmed when saved stays so: its last probe is
    fresh, its state is not): a restart within that time (a crash and a restart by the supervisor, a rolling
    upgrade) neither resets a long outage's ``since`` nor restarts a detection under way, and the state is
    published again at the first fresh probe.

    An older state is history, not news: the target may have gone down and come back meanwhile, unseen.
    Its state and ``since`` are kept (the API shows the last known state; a long outage that goes on keeps
    its start) but its counters start from zero, and an up or down state is ``unconfirmed`` until fresh
    probes reach the threshold that decides that state (then it is published as current again, ``since``
    unchanged) or decide the opposite one (a transition, published as usual). Meanwhile nothing is published
    for the target, so consumers see no current observation rather than a stale one presented as current.
    """
    last = status.last
    if last is None:
        return TargetStatus()
    if now - last.finished_at <= RESUME_WINDOWS * detection_window(interval_s=interval_s, thresholds=thresholds):
        return status
    asserted = status.state != ComponentState.UNKNOWN
    return replace(reset_counters(status), unconfirmed=asserted)


# --- certificates -----------------------------------------------------------------------------


# --- scheduling -------------------------------------------------------------------------------


def phase(target_id: str) -> float:
    """A stable fraction in [0, 1) derived from the target id: where in its interval a target is probed.

    Stable so that restarts keep the spread; uniform so that thousands of targets never fire together.
    """
    digest = hashlib.blake2b(target_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def first_due(*, target_id: str, now: float, interval_s: float) -> float:
    """When a newly scheduled target is first probed: within one interval of ``now``, at its phase."""
    return now + phase(target_id) * interval_s


def next_due(*, due: float, now: float, interval_s: float) -> float:
    """The slot after ``due``. Slots that already passed are skipped, not caught up in a burst."""
    following = due + interval_s
    if following > now:
        return following
    following = due + (math.floor((now - due) / interval_s) + 1) * interval_s
    return following if following > now else following + interval_s


def default_retry_interval(interval_s: float) -> float:
    """The retry pace when none is configured: five probes per interval while a streak runs."""
    return interval_s / 5


def confirming(status: TargetStatus) -> bool:
    """Whether the target's probes are deciding something: a streak disagrees with the state, or the state
    is not decided yet (``unknown``, or ``unconfirmed`` after a restart long after the last probe).

    Such a target is probed at the retry pace (:func:`due_after_probe`). A target whose counters were just
    reset (changed endpoint) is not: its next regular probe starts a streak, if there is one to start.
    """
    if streak(status) < 1:
        return False
    if status.state == ComponentState.UNKNOWN or status.unconfirmed:
        return True
    return is_suspect(status)


def due_after_probe(
    status: TargetStatus, *, finished: float, regular_due: float, retry_interval_s: float
) -> float:
    """When a target is next probed, once the probe that finished at ``finished`` is folded into ``status``.

    ``regular_due`` is the target's next slot on its phase (see :func:`next_due`). While the probes are
    confirming something (:func:`confirming`) the next probe comes ``retry_interval_s`` after this one
    finished, unless the regular slot is sooner; counted from the finish, not the start, so that a probe
    that took its whole timeout still leaves the target a retry interval of rest and :func:`suspicion`'s
    ``verdict_by`` holds. Otherwise the regular slot stands: back to the interval, on the same phase.
    """
    if confirming(status):
        return retry_due(finished=finished, regular_due=regular_due, retry_interval_s=retry_interval_s)
    return regular_due


def retry_due(*, finished: float, regular_due: float, retry_interval_s: float) -> float:
    """When a target whose probes are confirming something (:func:`confirming`) is next probed, once the probe
    that finished at ``finished`` is folded in: a retry interval later, unless the regular slot is sooner."""
    return min(regular_due, finished + retry_interval_s)


# --- publication ------------------------------------------------------------------------------


def coalesce(unpublished: Transition | None, newer: Transition | None) -> Transition | None:
    """Fold two successive transitions of a target into what its consumers have to learn.

    Consumers last saw ``unpublished.previous``; after ``newer`` the target is ``newer.current``. When the
    two are equal, nothing changed from the consumers' point of view (a down and up both during a broker
    outage) and there is no transition to publish.
    """
    if unpublished is None:
        return newer
    if newer is None:
        return unpublished
    if unpublished.previous == newer.current:
        return None
    return Transition(previous=unpublished.previous, current=newer.current, at=newer.at)
