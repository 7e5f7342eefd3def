"""The detector's target pages: ordered by id, after a cursor, filtered, and told whether more follow."""

from __future__ import annotations

import random

from services.detector.domain import TargetStatus
from services.detector.queries import TargetFilter, targets_page
from services.detector.targets import Target, from_settings
from shared.config import DetectorSettings, TargetSettings
from shared.events import ComponentState

SETTINGS = DetectorSettings(instance_id="t")


def target(target_id: str) -> Target:
    return from_settings(TargetSettings(id=target_id, component="ntp", url=f"http://127.0.0.1:8080/{target_id}"),
                         SETTINGS)


def seen(count: int) -> list[tuple[Target, TargetStatus]]:
    pairs = [(target(f"t{i:03d}"), TargetStatus(state=ComponentState.UP if i % 3 else ComponentState.DOWN))
             for i in range(count)]
    random.Random(7).shuffle(pairs)
    return pairs


def ids(page: list[tuple[Target, TargetStatus]]) -> list[str]:
    return [t.id for t, _ in page]


def test_pages_walk_every_target_once_in_id_order() -> None:
    everything, walked, after = seen(23), [], None
    while True:
        page, more = targets_page(everything, after=after, limit=5, only=TargetFilter(), may_read=lambda _: True)
        walked += ids(page)
        if not more:
            break
        after = page[-1][0].id
    assert walked == [f"t{i:03d}" for i in range(23)]


def test_a_page_that_ends_exactly_at_the_last_target_says_no_more_follow() -> None:
    page, more = targets_page(seen(10), after="t004", limit=5, only=TargetFilter(), may_read=lambda _: True)
    assert ids(page) == ["t005", "t006", "t007", "t008", "t009"] and not more


def test_the_filter_and_the_reader_narrow_the_page() -> None:
    page, more = targets_page(seen(30), after=None, limit=4, only=TargetFilter(state=ComponentState.DOWN),
                              may_read=lambda _: True)
    assert ids(page) == ["t000", "t003", "t006", "t009"] and more
    page, more = targets_page(seen(30), after=None, limit=4, only=TargetFilter(), may_read=lambda _: False)
    assert page == [] and not more
