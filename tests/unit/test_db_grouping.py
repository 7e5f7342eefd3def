"""How ``shared.db.update_plain`` splits rows on SQLite: groups of rows setting the same values, keys told
apart as SQLite compares them (the fast paths for keys and values of one type, and the general one); which
columns ``insert_columns`` sends as one parameter."""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import pytest
from sqlalchemy import Column, MetaData, String, Table

from shared.db import GROUPED_MIN_ROWS, _constants_apart, _grouped, _keys_distinct, insert_columns

N = GROUPED_MIN_ROWS


def test_string_keys_are_distinct_unless_one_repeats() -> None:
    assert _keys_distinct([("x", f"k{n}") for n in range(N)], 1)
    assert not _keys_distinct([("x", "k1"), ("y", "k2"), ("z", "k1")], 1)
    assert _keys_distinct([("x", "p", "k1"), ("x", "q", "k1")], 1)  # two key columns: (p, k1) and (q, k1)


def test_keys_sqlite_takes_for_one_are_one() -> None:
    assert not _keys_distinct([("x", 1), ("x", True)], 1)
    assert not _keys_distinct([("x", 1), ("x", 1.0)], 1)
    assert not _keys_distinct([("x", 1), ("x", "1")], 1)
    assert _keys_distinct([("x", 1), ("x", 2)], 1)


def test_rows_group_by_values_of_one_type() -> None:
    rows = [("delivered", 1, f"k{n}") for n in range(N)] + [("delivered", 2, f"j{n}") for n in range(N)]
    grouped, left = _grouped(rows, sets=2)
    assert grouped == [(("delivered", 1), [f"k{n}" for n in range(N)]), (("delivered", 2), [f"j{n}" for n in range(N)])]
    assert left == []


def test_values_python_holds_equal_are_not_grouped_as_one() -> None:
    """1 and True (1.0) are one dict key in Python, two values in SQL: two groups (one too small: left)."""
    rows = [("delivered", 1, f"k{n}") for n in range(N)] + [("delivered", True, "t1"), ("delivered", 1.0, "f1")]
    grouped, left = _grouped(rows, sets=2)
    assert grouped == [(("delivered", 1), [f"k{n}" for n in range(N)])]
    assert left == [("delivered", True, "t1"), ("delivered", 1.0, "f1")]
    assert type(left[0][1]) is bool and type(left[1][1]) is float


def test_a_key_json_cannot_carry_leaves_every_row_ungrouped() -> None:
    rows = [("delivered", f"k{n}") for n in range(N)]
    for bad in ("lone \udce9", "nul \0 inside", 2**63):
        grouped, left = _grouped([*rows, ("delivered", bad)], sets=1)
        assert (grouped, left) == ([], [*rows, ("delivered", bad)]), bad


def test_a_column_is_a_constant_only_when_every_row_holds_one_object() -> None:
    """Equal is not enough (-0.0 and 0.0, Decimal scales are stored apart), and a sequence that makes each item as
    it is read (``array.array``) is not taken for one object however its ids fall."""
    count = GROUPED_MIN_ROWS + 2
    at = datetime(2026, 12, 2, tzinfo=UTC)
    columns: dict[str, Sequence[Any]] = {
        "id": [f"k{n}" for n in range(count)],
        "at": [at] * count,
        "zero": [0.0, -0.0] * (count // 2),
        "scale": [Decimal("1.0"), Decimal("1.000")] * (count // 2),
        "made": array("d", [0.5 * n for n in range(count)]),
        "same": array("d", [2.0] * count),
    }
    rows, constants = _constants_apart(columns, {"kind": "k"})
    assert list(rows) == ["id", "zero", "scale", "made", "same"]
    assert constants == {"kind": "k", "at": at}
    few: dict[str, Sequence[Any]] = {"id": ["a"], "at": [at]}
    assert _constants_apart(few, {}) == (few, {})  # under GROUPED_MIN_ROWS rows: as given
    rows, constants = _constants_apart({"n": [7] * count, "m": [None] * count}, {})
    assert (list(rows), constants) == (["m"], {"n": 7})  # every column one object: the last one kept per row


async def test_a_column_given_per_row_and_as_a_constant_is_refused() -> None:
    table = Table("t", MetaData(), Column("id", String(10), primary_key=True), Column("kind", String(10)))
    with pytest.raises(ValueError, match=r"both per row and as constants for t: \['kind'\]"):
        await insert_columns(cast(Any, None), table, columns={"id": ["a"], "kind": ["x"]}, constants={"kind": "y"})
