"""Security headers of the HTML pages the services serve (the status page today; any page tomorrow).

A strict Content-Security-Policy: nothing loads from anywhere by default; the page's own inline
``<script>`` and ``<style>`` blocks are allowed by their SHA-256 (so an injected script, which has another
hash, does not run, and no ``'unsafe-inline'`` is needed); requests only to the service itself (the page's
fetch and its event stream); no framing by another site (clickjacking); no referrer leaves the page.
Tokens never travel in cookies: the API takes them in the ``Authorization`` header only, which a
cross-site form or link cannot set, so a cross-site request can read or change nothing.
"""

from __future__ import annotations

import base64
import hashlib
import re

_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.S)


def _source(body: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"


def page_headers(html: str) -> dict[str, str]:
    """The headers to send with ``html``: its inline scripts and styles allowed by hash, nothing else."""
    found: dict[str, list[str]] = {"script": [], "style": []}
    for kind, body in _INLINE.findall(html):
        found[kind].append(_source(body))
    scripts = " ".join(found["script"]) or "'none'"
    styles = " ".join(found["style"]) or "'none'"
    policy = (
        f"default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
    }
