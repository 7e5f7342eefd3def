"""Read side of the detector's API: which targets a page shows. The routes only parse, authorize and render."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from services.detector.domain import TargetStatus
from services.detector.targets import ProbeKind, Target
from shared.events import Component, ComponentState

Seen = tuple[Target, TargetStatus]


@dataclass(frozen=True, slots=True)
class TargetFilter:
    """What ``GET /api/v1/targets`` narrows the list to; ``None`` is "any"."""

    state: ComponentState | None = None
    component: Component | None = None
    probe: ProbeKind | None = None

    def admits(self, target: Target, status: TargetStatus) -> bool:
        return ((self.state is None or status.state == self.state)
                and (self.component is None or target.component == self.component)
                and (self.probe is None or target.probe == self.probe))


def targets_page(
    seen: Iterable[Seen], *, after: str | None, limit: int, only: TargetFilter,
    may_read: Callable[[str | None], bool],
) -> tuple[list[Seen], bool]:
    """The first ``limit`` targets by id after ``after`` that pass ``only`` and the caller ``may_read`` (an EO's
    AS4 endpoint is EO data: keyed by its EORI, ``None`` for a national target), and whether more follow."""
    # The smallest limit + 1 only: a page through 100,000 EO targets does not sort them all on every request.
    selected = heapq.nsmallest(
        limit + 1,
        ((target, status) for target, status in seen
         if (after is None or target.id > after) and only.admits(target, status) and may_read(target.eori)),
        key=lambda pair: pair[0].id,
    )
    return selected[:limit], len(selected) > limit
