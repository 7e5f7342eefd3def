"""``python -m tests.e2e.crashing_procedure procedure --config FILE``: the real CLI, with one fault injected.

The procedure service SIGKILLs itself right after it has committed a decision and before its events are
published: the crash the transactional outbox exists for. The fault lives here, in the tests, and is
injected by wrapping the service's own method; the production code has no hook for it.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from services import cli
from services.procedure.handlers import ProcedureService


def _kill_instead_of_publishing(self: ProcedureService, recorder: Any) -> None:
    if recorder.procedures:  # a decision was committed: die before its events leave
        os.kill(os.getpid(), signal.SIGKILL)
    original(self, recorder)


original = ProcedureService._publish
ProcedureService._publish = _kill_instead_of_publishing  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
