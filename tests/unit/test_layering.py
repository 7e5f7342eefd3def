"""No service imports another: what two services share lives in ``shared/``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICES = ("detector", "procedure", "notifier")
ROOT = Path(__file__).resolve().parents[2]


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service(service: str) -> None:
    others = {f"services.{other}" for other in SERVICES if other != service} | {"services.simulator"}
    found = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "services" / service).rglob("*.py"))
        for name in _imported(path)
        if any(name == other or name.startswith(other + ".") for other in others)
    }
    assert not found
