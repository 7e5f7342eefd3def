"""How ``shared.db.update_plain`` splits rows on SQLite: groups of rows setting the same values, keys told
apart as SQLite compares them (the fast paths for keys and values of one type, and the general one)."""

from __future__ import annotations

from shared.db import GROUPED_MIN_ROWS, _grouped, _keys_distinct

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
