"""The ``http`` probe: one request, an expected status, optionally a text the answer must contain."""

from __future__ import annotations

from services.detector.probes._transport import HttpClient, HttpRequest
from services.detector.probes.verdict import Verdict, snippet
from services.detector.targets import Target


async def probe_http(target: Target, http: HttpClient) -> Verdict:
    """Up when the status is expected (default any 2xx) and the body contains ``body_contains``, if set."""
    check = target.http
    request = HttpRequest(method=check.method, endpoint=target.endpoint, basic_auth=target.basic_auth)
    answer = await http.exchange(request, tls=target.tls, max_body=target.max_response_bytes)
    if not check.accepts(answer.status):
        return Verdict(
            False, f"http_{answer.status}", f"HTTP {answer.status}: {snippet(answer.body) or 'no body'}",
            cert_expires_at=answer.cert_expires_at,
        )
    if check.body_contains is not None and check.body_contains.encode() not in answer.body:
        return Verdict(
            False, "body_mismatch", f"HTTP {answer.status} without {check.body_contains!r}: {snippet(answer.body)}",
            cert_expires_at=answer.cert_expires_at,
        )
    return Verdict(True, "ok", f"HTTP {answer.status}", cert_expires_at=answer.cert_expires_at)
