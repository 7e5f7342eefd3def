"""When a certificate's coming expiry deserves a warning: the rule the detector (per target) and the procedure
service (certificate advisories to the Servicedesk) both apply, so that they warn at the same levels. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

__all__ = ["CERT_WARNING_DAYS", "cert_warning", "cert_warning_crossed"]

CERT_WARNING_DAYS: tuple[int, ...] = (30, 14, 7)
"""Days before a certificate's expiry at which to warn (each level once)."""


def cert_warning(
    expires_at: datetime | None, *, now: datetime, levels: Sequence[int] = CERT_WARNING_DAYS
) -> int | None:
    """The warning level a certificate has reached: the smallest of ``levels`` (days) it is within,
    0 once it has expired, None while it is further out (or unknown)."""
    if expires_at is None:
        return None
    left = expires_at - now
    if left.total_seconds() <= 0:
        return 0
    reached = [level for level in levels if left.total_seconds() <= level * 86_400]
    return min(reached) if reached else None


def cert_warning_crossed(previous: int | None, current: int | None) -> bool:
    """Whether moving from warning level ``previous`` to ``current`` deserves a new warning (closer only)."""
    if current is None:
        return False
    return previous is None or current < previous
