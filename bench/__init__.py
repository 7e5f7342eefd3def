"""Benchmarks: each one command that prints its figures (``bench/README.md``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def luccs_fallback(*args: str) -> list[str]:
    """The command line of ``luccs-fallback ARGS``: the script installed beside this interpreter."""
    return [str(Path(sys.executable).with_name("luccs-fallback")), *args]


def checkout_env() -> dict[str, str]:
    """The environment for the services a bench starts: this checkout's code first on their path.

    The installed ``luccs-fallback`` is an editable install of the checkout ``scripts/bootstrap.sh`` ran in, and
    its script imports that checkout's code whatever folder it runs in. A bench run from another checkout (a
    worktree of an older commit, to compare two versions in turn) would otherwise time the bootstrapped
    checkout's services under both names. Child processes (the notifier's webhook workers) inherit it."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}
