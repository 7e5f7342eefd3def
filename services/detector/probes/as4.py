"""The ``as4`` probe: POST an ebMS3 ping to the MSH (signed when the target says so) and classify its answer."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Any

from services.detector.probes._transport import HttpClient, HttpRequest
from services.detector.probes.ebms import CONTENT_TYPE, build_envelope, build_ping, classify
from services.detector.probes.verdict import Verdict
from services.detector.probes.wssec import Credentials, check_receipt, sign_envelope
from services.detector.targets import Party, Target

_ACCEPT = "application/soap+xml, multipart/related, text/xml"
_DEFAULT_PARTY = Party("luccs-fallback", "urn:oasis:names:tc:ebcore:partyid-type:unregistered", "")


async def probe_as4(
    target: Target, http: HttpClient, *, now: datetime, credentials: Credentials | None = None
) -> Verdict:
    """Ping ``target`` with a fresh MessageId and Timestamp; raises ProbeFailure when nothing answers.

    With ``credentials`` (the target's ``as4_signing``, loaded) the ping is signed and the receipt verified.
    """
    fresh = str(uuid.uuid4())  # one random id per ping: its conversation, and with our domain its MessageId
    message_id = f"{fresh}@luccs-fallback"
    ids: dict[str, Any] = {
        "sender": target.sender or _DEFAULT_PARTY, "receiver": target.receiver or _DEFAULT_PARTY,
        "message_id": message_id, "conversation_id": fresh, "timestamp": now,
    }
    check = None
    if credentials is None:
        body = build_ping(**ids).body
    else:
        body, sent = sign_envelope(build_envelope(**ids), credentials)
        check = partial(check_receipt, credentials=credentials, sent=sent, message_id=message_id, now=now)
    request = HttpRequest(
        method="POST",
        endpoint=target.endpoint,
        headers=(("Content-Type", CONTENT_TYPE), ("Accept", _ACCEPT)),
        body=body,
        basic_auth=target.basic_auth,
    )
    answer = await http.exchange(request, tls=target.tls, max_body=target.max_response_bytes)
    verdict = classify(
        status=answer.status, content_type=answer.content_type, body=answer.body, message_id=message_id,
        receipt_check=check,
    )
    if answer.cert_expires_at is None:
        return verdict
    return replace(verdict, cert_expires_at=answer.cert_expires_at)
