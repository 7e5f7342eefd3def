"""Build-time check of the image: every file of the source packages must be in the installed packages.

Run from outside the source tree (so that ``import services`` finds the installed copy)::

    python check_install.py /src

A regular ``pip install`` only ships the Python modules unless pyproject.toml declares the data files
(``[tool.setuptools.package-data]``); templates left behind would only fail when first used.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

PACKAGES = ("shared", "services")
SKIPPED_PARTS = {"__pycache__"}
SKIPPED_SUFFIXES = {".pyc", ".pyo"}


def missing_files(source_root: Path, installed: dict[str, Path]) -> list[str]:
    """Files under ``source_root/<package>`` that are absent from the installed ``<package>`` folder."""
    missing: list[str] = []
    for package, installed_dir in installed.items():
        source_dir = source_root / package
        for path in sorted(source_dir.rglob("*")):
            if not path.is_file() or SKIPPED_PARTS & set(path.parts) or path.suffix in SKIPPED_SUFFIXES:
                continue
            if not (installed_dir / path.relative_to(source_dir)).is_file():
                missing.append(str(path.relative_to(source_root)))
    return missing


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: check_install.py SOURCE_ROOT", file=sys.stderr)
        return 2
    source_root = Path(argv[1]).resolve()
    installed: dict[str, Path] = {}
    for package in PACKAGES:
        module = importlib.import_module(package)
        location = Path(next(iter(module.__path__))).resolve()
        if location == (source_root / package).resolve():
            print(f"check_install: {package} is imported from the source tree; run from another folder",
                  file=sys.stderr)
            return 2
        installed[package] = location
    missing = missing_files(source_root, installed)
    if missing:
        print("check_install: the installed project lacks these files of the source tree (declare them in "
              "pyproject.toml [tool.setuptools.package-data]):", file=sys.stderr)
        for name in missing:
            print(f"  {name}", file=sys.stderr)
        return 1
    print(f"check_install: every file of {', '.join(PACKAGES)} is installed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
