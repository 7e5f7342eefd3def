"""The one cursor format of every paged list (shared.paging)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.errors import InvalidCursor
from shared.paging import decode_cursor, decode_moment, encode_cursor, next_cursor


def test_a_cursor_gives_back_its_keys() -> None:
    keys = ("2026-11-27T08:00:00+00:00", "eo:LU12345678901234|x")
    assert decode_cursor(encode_cursor(*keys), keys=2) == keys
    assert "=" not in encode_cursor("a")  # unpadded: nothing to escape in a query string


@pytest.mark.parametrize("cursor", ["%%%", "", "eA", encode_cursor("one"), encode_cursor("a", "b", "c"),
                                    "W10", "x" * 2000])
def test_anything_else_is_an_invalid_cursor(cursor: str) -> None:
    with pytest.raises(InvalidCursor, match="invalid cursor"):
        decode_cursor(cursor, keys=2)


def test_a_cursor_time_needs_a_timezone() -> None:
    assert decode_moment("2026-11-27T08:00:00+00:00") == datetime(2026, 11, 27, 8, tzinfo=UTC)
    for text in ("2026-11-27T08:00:00", "yesterday"):
        with pytest.raises(InvalidCursor):
            decode_moment(text)


def test_next_cursor_only_when_there_is_more() -> None:
    rows = ["a", "b", "c"]
    assert next_cursor(rows, limit=3, key=lambda r: (r,)) is None
    assert decode_cursor(next_cursor(rows, limit=2, key=lambda r: (r,)) or "", keys=1) == ("b",)
