"""The EO webhook receiver's memory: every notice received, on stdout, in an optional file, the last N kept."""

from __future__ import annotations

import json
import sys
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from services.simulator.behaviour import Request
from shared.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER


@dataclass(frozen=True)
class Notice:
    """One webhook request as the receiver got it, with what a reader wants to see of the CloudEvent."""

    received_at: str
    method: str
    path: str
    status: int | None  # None: read and never answered (mode 'hang')
    idempotency_key: str | None
    signature: str | None
    event_id: str | None
    event_type: str | None
    procedure_id: str | None
    scenario: str | None
    eori: str | None
    language: str | None
    subject: str | None
    message: str | None
    body_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _field(value: Any, key: str) -> str | None:
    found = value.get(key) if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


def notice_of(request: Request, *, status: int | None, now: datetime) -> Notice:
    """What the receiver records of ``request``, answered with ``status``; a body that is not JSON is kept as such."""
    try:
        event: Any = json.loads(request.body)
    except (UnicodeDecodeError, ValueError):
        event = None
    data = event.get("data") if isinstance(event, dict) else None
    return Notice(
        received_at=now.isoformat(timespec="milliseconds"),
        method=request.method,
        path=request.path,
        status=status,
        idempotency_key=request.headers.get(IDEMPOTENCY_HEADER.lower()),
        signature=request.headers.get(SIGNATURE_HEADER.lower()),
        event_id=_field(event, "id"),
        event_type=_field(event, "type"),
        procedure_id=_field(data, "procedure_id"),
        scenario=_field(data, "scenario"),
        eori=_field(data, "eori"),
        language=_field(data, "language"),
        subject=_field(data, "subject"),
        message=_field(data, "message"),
        body_bytes=len(request.body),
    )


class NoticeLog:
    """Keeps the last ``keep`` notices in memory and writes each one as a JSON line to stdout and ``path``.

    Used from one event loop only, so it needs no lock.
    """

    def __init__(self, *, keep: int, path: Path | None = None, stream: TextIO | None = None) -> None:
        self._notices: deque[Notice] = deque(maxlen=keep)
        self._path = path
        self._stream = stream if stream is not None else sys.stdout
        self.total = 0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, notice: Notice) -> None:
        line = json.dumps({"notice": notice.as_dict()}, ensure_ascii=False)
        self._notices.append(notice)
        self.total += 1
        print(line, file=self._stream, flush=True)
        if self._path is not None:
            with self._path.open("a", encoding="utf-8") as file:
                file.write(line + "\n")

    def notices(self, *, path: str | None = None, limit: int | None = None) -> list[Notice]:
        """The kept notices, oldest first; only those sent to ``path`` if given; the last ``limit`` if given."""
        found = [n for n in self._notices if path is None or n.path == path]
        return found[-limit:] if limit else found

    def clear(self) -> None:
        self._notices.clear()
