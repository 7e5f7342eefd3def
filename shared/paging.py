"""One way to page every list of every service's API: ``{"items": [...], "next": <cursor or null>}``.

A cursor is opaque to clients: the sort key of the last item of a page (one or more strings), as
URL-safe base64 of a JSON array, unpadded. :func:`decode_cursor` gives the keys back, or raises
:class:`shared.errors.InvalidCursor` (a 400) for anything that is not the ``next`` of a previous page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Generic, TypeVar

from pydantic import BaseModel, Field

from shared.errors import InvalidCursor

__all__ = ["CURSOR_MAX_LENGTH", "Page", "decode_cursor", "decode_moment", "encode_cursor", "next_cursor"]

T = TypeVar("T")
CURSOR_MAX_LENGTH = 1024
_INVALID = "invalid cursor: use the 'next' value of the previous page"


class Page(BaseModel, Generic[T]):
    """One page of a list; subclass it per item type so the OpenAPI names it (``class EoPage(Page[EoView])``)."""

    items: list[T]
    next: str | None = Field(description="Cursor of the next page (pass it as `cursor`); null on the last page")


def encode_cursor(*keys: str) -> str:
    """The cursor pointing after the item whose sort key is ``keys``."""
    raw = json.dumps(list(keys), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *, keys: int) -> tuple[str, ...]:
    """The ``keys`` strings a cursor holds; :class:`InvalidCursor` if it is not one of ours."""
    try:
        if len(cursor) > CURSOR_MAX_LENGTH:
            raise ValueError("too long")
        decoded = json.loads(base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True))
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor(_INVALID) from exc
    if not isinstance(decoded, list) or len(decoded) != keys or not all(isinstance(k, str) for k in decoded):
        raise InvalidCursor(_INVALID)
    return tuple(decoded)


def decode_moment(text: str) -> datetime:
    """A timezone-aware time held in a cursor; :class:`InvalidCursor` otherwise."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidCursor(_INVALID) from exc
    if moment.tzinfo is None:
        raise InvalidCursor(_INVALID)
    return moment


def next_cursor(rows: Sequence[T], *, limit: int, key: Callable[[T], Sequence[str]]) -> str | None:
    """``rows`` were fetched with ``limit + 1``: the cursor after the page's last row when there is more."""
    if len(rows) <= limit:
        return None
    return encode_cursor(*key(rows[limit - 1]))
