"""Delivery ids: UUIDs laid out as version 7, so the rows of one fan-out sit together in the primary key."""

from __future__ import annotations

import time
import uuid

from services.notifier.planning import new_delivery_id


def test_a_delivery_id_is_a_version_7_uuid_led_by_the_millisecond_it_was_made() -> None:
    before_ms = time.time_ns() // 1_000_000
    made = uuid.UUID(new_delivery_id())
    after_ms = time.time_ns() // 1_000_000
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    assert before_ms <= made.int >> 80 <= after_ms


def test_ids_of_a_later_millisecond_sort_after_every_id_of_an_earlier_one() -> None:
    earlier = [new_delivery_id(at_ms=1_764_600_000_000) for _ in range(2_000)]
    later = [new_delivery_id(at_ms=1_764_600_000_001) for _ in range(2_000)]
    assert len(set(earlier + later)) == 4_000
    # As text, the way the databases' indexes order them.
    assert max(earlier) < min(later)
    assert all(uuid.UUID(i).version == 7 for i in earlier + later)


def test_a_delivery_id_is_written_as_the_canonical_uuid_text() -> None:
    # Written without building a uuid.UUID: the text must be the very one str(uuid.UUID(...)) gives, since the
    # delivery log's rows and the API's ids are compared as text.
    ids = [new_delivery_id(at_ms=at_ms) for at_ms in (0, 1, 1_764_600_000_000, (1 << 48) - 1) for _ in range(50)]
    assert all(str(uuid.UUID(i)) == i and len(i) == 36 for i in ids)
