"""Text checks shared by the services."""

from __future__ import annotations


def is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode, as UTF-8 encodes it: no lone surrogate (JSON can escape one, and
    ``surrogateescape`` decoding makes one of each byte it cannot read), which no database stores."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
