"""The ``as4`` probe: POST an ebMS3 ping to the MSH and classify its synchronous answer."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime

from services.detector.probes._transport import HttpClient, HttpRequest
from services.detector.probes.ebms import CONTENT_TYPE, build_ping, classify
from services.detector.probes.verdict import Verdict
from services.detector.targets import Party, Target

_ACCEPT = "application/soap+xml, multipart/related, text/xml"
_DEFAULT_PARTY = Party("luccs-fallback", "urn:oasis:names:tc:ebcore:partyid-type:unregistered", "")


async def probe_as4(target: Target, http: HttpClient, *, now: datetime) -> Verdict:
    """Ping ``target`` with a fresh MessageId and Timestamp; raises ProbeFailure when nothing answers."""
    ping = build_ping(
        sender=target.sender or _DEFAULT_PARTY,
        receiver=target.receiver or _DEFAULT_PARTY,
        message_id=f"{uuid.uuid4()}@luccs-fallback",
        conversation_id=str(uuid.uuid4()),
        timestamp=now,
    )
    request = HttpRequest(
        method="POST",
        endpoint=target.endpoint,
        headers=(("Content-Type", CONTENT_TYPE), ("Accept", _ACCEPT)),
        body=ping.body,
        basic_auth=target.basic_auth,
    )
    answer = await http.exchange(request, tls=target.tls, max_body=target.max_response_bytes)
    verdict = classify(
        status=answer.status, content_type=answer.content_type, body=answer.body, message_id=ping.message_id
    )
    return replace(verdict, cert_expires_at=answer.cert_expires_at)
