"""What a probe concludes, before the prober adds the timing: up or down, why, and what it saw."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    detail: str | None = None
    ebms_error: str | None = None
    cert_expires_at: datetime | None = None
    signing_cert_expires_at: datetime | None = None  # our AS4 signing certificate (signed pings)
    partner_cert_expires_at: datetime | None = None  # the certificate that signed (or should sign) the receipt


def snippet(body: bytes, limit: int = 120) -> str:
    """A short, single-line, printable excerpt of an answer body for a result's detail."""
    text = body[: limit * 4].decode("utf-8", errors="replace")
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
