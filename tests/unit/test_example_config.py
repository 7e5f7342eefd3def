"""``deploy/luccs.example.toml`` lists every setting of ``shared/config.py`` with its default, and nothing else.

The file's convention (stated at its top): ``key = value`` is a key's default; ``# key = value`` is an
example of a key that is unset by default (None), required (a ``[[detector.targets]]`` key) or computed at
start (``instance_id``), and every key of the commented-out ``[[detector.targets]]`` table, which shows a
key's default where it has one. A setting added to the model without a line here fails this test.
"""

from __future__ import annotations

import os
import re
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from shared.config import Settings, TargetSettings, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "luccs.example.toml"

COMPUTED_AT_START = {"detector.instance_id", "notifier.instance_id", "procedure.instance_id"}
"""Settings whose default is computed when the process starts (from the host name): the file shows an example."""

_HEADER = re.compile(r"^(?P<commented>#\s*)?\[(?P<array>\[)?\s*(?P<name>[A-Za-z0-9_.]+)\s*\]\]?\s*(#.*)?$")
_COMMENTED_KEY = re.compile(r"^# (?P<key>[a-z][a-z0-9_]*) =")  # exactly "# key = value": prose is anything else


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("LUCCS_"):
            monkeypatch.delenv(name)


@dataclass(frozen=True)
class Line:
    number: int
    path: str  # dotted: "detector.interval_s", "detector.targets.url"
    value: Any
    commented: bool


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The section model behind a field (and whether it is an array of tables), else (None, False)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item, True
    return None, False


def settings_fields() -> tuple[dict[str, FieldInfo], set[str], set[str]]:
    """Every leaf setting by dotted path, the paths of the sections, and those of the arrays of tables."""
    leaves: dict[str, FieldInfo] = {}
    sections: set[str] = set()
    arrays: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            path = f"{prefix}{name}"
            section, is_array = _model_of(field.annotation)
            if section is None:
                leaves[path] = field
                continue
            (arrays if is_array else sections).add(path)
            walk(section, f"{path}.")

    walk(Settings, "")
    return leaves, sections, arrays


def example_lines() -> tuple[list[Line], set[str], list[str]]:
    """The settings lines of the example, the table headers it shows, and the problems found reading it."""
    lines: list[Line] = []
    headers: set[str] = set()
    problems: list[str] = []
    section = ""  # the table the reader sees the line in
    in_commented_table = False
    for number, raw in enumerate(EXAMPLE.read_text(encoding="utf-8").splitlines(), start=1):
        text = raw.strip()
        header = _HEADER.match(text)
        if header:
            section = header["name"]
            in_commented_table = bool(header["commented"])
            headers.add(section)
            continue
        commented = text.startswith("#")
        if commented and not _COMMENTED_KEY.match(text):
            continue  # prose
        if not text:
            continue
        try:
            parsed = tomllib.loads(text.lstrip("#").strip() if commented else text)
        except tomllib.TOMLDecodeError as exc:
            problems.append(f"line {number}: looks like a setting but is not one TOML key = value ({exc}): {raw}")
            continue
        if len(parsed) != 1:
            problems.append(f"line {number}: one key per line: {raw}")
            continue
        ((key, value),) = parsed.items()
        if not commented and in_commented_table:
            problems.append(f"line {number}: {key} is set under a commented-out table header, so TOML puts "
                            f"it in the table above: {raw}")
        lines.append(Line(number, f"{section}.{key}" if section else key, value, commented))
    return lines, headers, problems


def _default(field: FieldInfo) -> Any:
    return field.get_default(call_default_factory=True)


def _has_shown_default(path: str, field: FieldInfo) -> bool:
    """Whether the file can show this setting's default as a value (not unset, required or computed)."""
    return not field.is_required() and path not in COMPUTED_AT_START and _default(field) is not None


def test_the_example_file_reads_cleanly() -> None:
    _lines, _headers, problems = example_lines()
    assert problems == []


def test_every_setting_is_in_the_example_file() -> None:
    leaves, sections, arrays = settings_fields()
    lines, headers, _ = example_lines()
    shown = {line.path for line in lines}
    missing = sorted(set(leaves) - shown)
    assert missing == [], f"settings missing from {EXAMPLE.name} (add a line for each): {missing}"
    missing_tables = sorted((sections | arrays) - headers)
    assert missing_tables == [], f"table headers missing from {EXAMPLE.name}: {missing_tables}"


def test_the_example_file_has_no_key_the_settings_do_not_know() -> None:
    leaves, sections, arrays = settings_fields()
    lines, headers, _ = example_lines()
    unknown = sorted(f"{line.path} (line {line.number})" for line in lines if line.path not in leaves)
    assert unknown == []
    assert sorted(headers - sections - arrays) == []
    seen: dict[str, int] = {}
    twice = []
    for line in lines:
        if line.path in seen:
            twice.append(f"{line.path} (lines {seen[line.path]} and {line.number})")
        seen.setdefault(line.path, line.number)
    assert twice == []


def test_each_line_shows_the_default_or_a_valid_example() -> None:
    leaves, _, arrays = settings_fields()
    lines, _, _ = example_lines()
    wrong = []
    for line in lines:
        field = leaves.get(line.path)
        if field is None:
            continue  # reported by the test above
        in_array = any(line.path.startswith(f"{array}.") for array in arrays)
        assert field.annotation is not None
        try:
            value = TypeAdapter(field.annotation).validate_python(line.value)
        except ValueError as exc:
            wrong.append(f"line {line.number}: {line.path} = {line.value!r} is not a valid value: {exc}")
            continue
        if _has_shown_default(line.path, field):
            if value != _default(field):
                wrong.append(f"line {line.number}: {line.path} = {line.value!r}, but its default is "
                             f"{_default(field)!r}")
            elif line.commented and not in_array:
                wrong.append(f"line {line.number}: {line.path} has a default: show it as an active line")
        elif not line.commented:
            wrong.append(f"line {line.number}: {line.path} is unset by default (or computed at start): show an "
                         "example, commented out")
    assert wrong == []


def test_the_example_file_as_it_stands_is_the_defaults() -> None:
    assert load_settings(EXAMPLE) == load_settings()


def test_the_commented_out_target_is_a_valid_target() -> None:
    lines, _, _ = example_lines()
    values = {line.path.removeprefix("detector.targets."): line.value
              for line in lines if line.path.startswith("detector.targets.")}
    TargetSettings(**values)


def test_the_settings_walk_sees_nested_and_per_target_fields() -> None:
    leaves, sections, arrays = settings_fields()
    assert {"data_dir", "kafka.sasl_password", "api.read_tokens", "procedure.quorum",
            "detector.targets.expected_status"} <= set(leaves)
    assert "kafka" in sections
    assert arrays == {"detector.targets"}
    for path in COMPUTED_AT_START:
        assert leaves[path].default_factory is not None, f"{path} is no longer computed at start"
