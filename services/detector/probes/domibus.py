"""The ``domibus`` probe: the Domibus monitoring API says whether each of its services is NORMAL."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.detector.probes._transport import HttpClient, HttpRequest
from services.detector.probes.verdict import Verdict, snippet
from services.detector.targets import Target


class _Service(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    status: str


class DomibusStatus(BaseModel):
    """``GET /ext/monitoring/application/status``: ``{"services": [{"name": .., "status": NORMAL|ERROR|BLOCKED}]}``."""

    model_config = ConfigDict(extra="ignore")
    services: list[_Service] = Field(..., min_length=1)


def classify_status(status: int, body: bytes) -> Verdict:
    """Up when every service is NORMAL; otherwise down, naming the services that are not."""
    if status != 200:
        return Verdict(False, f"http_{status}", f"HTTP {status}: {snippet(body) or 'no body'}")
    try:
        report = DomibusStatus.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return Verdict(False, "invalid_response", f"not a Domibus status ({where}: {first['msg']}): {snippet(body)}")
    failing = [s for s in report.services if s.status.upper() != "NORMAL"]
    if not failing:
        return Verdict(True, "ok", "all NORMAL: " + ", ".join(s.name for s in report.services))
    statuses = {s.status.upper() for s in failing}
    reason = "domibus_status"  # a status this probe does not know
    if "ERROR" in statuses:
        reason = "domibus_error"
    elif "BLOCKED" in statuses:
        reason = "domibus_blocked"
    return Verdict(False, reason, ", ".join(f"{s.name}: {s.status}" for s in failing))


async def probe_domibus(target: Target, http: HttpClient) -> Verdict:
    """GET the monitoring status of a Domibus access point (basic auth from the target, when set)."""
    request = HttpRequest(
        method="GET", endpoint=target.endpoint, headers=(("Accept", "application/json"),), basic_auth=target.basic_auth
    )
    answer = await http.exchange(request, tls=target.tls, max_body=target.max_response_bytes)
    verdict = classify_status(answer.status, answer.body)
    return Verdict(verdict.ok, verdict.reason, verdict.detail, cert_expires_at=answer.cert_expires_at)
