"""Unit tests of the HTML pages' security headers (shared/pages.py)."""

from __future__ import annotations

import base64
import hashlib

from shared.pages import page_headers

PAGE = "<html><head><style>body { color: red; }</style></head><body><script>go();</script></body></html>"


def _sha(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_inline_blocks_are_allowed_by_their_hash_and_nothing_else() -> None:
    policy = page_headers(PAGE)["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == _sha("go();")
    assert directives["style-src"] == _sha("body { color: red; }")
    assert directives["frame-ancestors"] == "'none'"
    assert directives["connect-src"] == "'self'"
    assert "unsafe-inline" not in policy and "*" not in policy


def test_a_page_without_scripts_allows_none() -> None:
    directives = dict(d.strip().split(" ", 1) for d in page_headers("<p>hi</p>")["Content-Security-Policy"].split(";"))
    assert directives["script-src"] == directives["style-src"] == "'none'"


def test_no_referrer_no_sniffing_no_framing() -> None:
    headers = page_headers(PAGE)
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
