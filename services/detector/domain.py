"""Per-target state decisions of the detector: pure, no I/O, the clock comes in with each result.

A target goes down after ``failure`` consecutive failed probes and up after ``success`` consecutive
successes; anything in between keeps its state, so a flapping target never changes state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from shared.events import ComponentState


@dataclass(frozen=True)
class Thresholds:
    failure: int = 3
    success: int = 2

    def __post_init__(self) -> None:
        if self.failure < 1 or self.success < 1:
            raise ValueError("thresholds must be at least 1")


@dataclass(frozen=True)
class ProbeResult:
    """What one probe saw. ``reason`` is a stable code (ok, refused, timeout, http_503, ...)."""

    ok: bool
    reason: str
    finished_at: datetime
    latency_ms: float | None = None
    detail: str | None = None


@dataclass(frozen=True)
class TargetStatus:
    state: ComponentState = ComponentState.UNKNOWN
    since: datetime | None = None
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last: ProbeResult | None = None


@dataclass(frozen=True)
class Transition:
    previous: ComponentState
    current: ComponentState
    at: datetime


def observe(
    status: TargetStatus, result: ProbeResult, thresholds: Thresholds
) -> tuple[TargetStatus, Transition | None]:
    """Fold one probe result into a target's status; return the new status and the transition, if any."""
    if result.ok:
        status = replace(
            status, consecutive_successes=status.consecutive_successes + 1, consecutive_failures=0, last=result
        )
        target_state = ComponentState.UP if status.consecutive_successes >= thresholds.success else None
    else:
        status = replace(
            status, consecutive_failures=status.consecutive_failures + 1, consecutive_successes=0, last=result
        )
        target_state = ComponentState.DOWN if status.consecutive_failures >= thresholds.failure else None
    if target_state is None or target_state == status.state:
        return status, None
    transition = Transition(previous=status.state, current=target_state, at=result.finished_at)
    return replace(status, state=target_state, since=result.finished_at), transition
