"""The AS4 ping as XML: an ebMS3 test UserMessage out, the MSH's answer classified. Pure, no I/O.

The ping uses the ebMS3 test service and action, which every conformant MSH accepts without a P-Mode
for a business service. A synchronous ``eb:Receipt`` proves the MSH healthy; an ``eb:Error`` (for
instance EBMS:0103 from an MSH that requires a signature) still proves it alive and answering, so it
counts as up with the error recorded. Anything that is not an ebMS answer inside a SOAP envelope is down.

A signed ping (``as4_signing``) asks more: its receipt must be signed and acknowledge what was sent
(``wssec.py``), and an eb:Error of authentication (EBMS:0101) or P-Mode (EBMS:0004, EBMS:0010) is down.

Answers are parsed with lxml with entity resolution, DTD loading and network access off; a DOCTYPE is
refused outright (SOAP forbids document type declarations), so no entity is ever expanded.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser

from lxml import etree

from services.detector.probes.verdict import Verdict, snippet
from services.detector.targets import Party

SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
EBMS_NS = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/"
TEST_SERVICE = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/service"
TEST_ACTION = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/test"
CONTENT_TYPE = "application/soap+xml; charset=UTF-8"
GATEWAY_FAILURES = frozenset({502, 503, 504})

_S = f"{{{SOAP12_NS}}}"
_EB = f"{{{EBMS_NS}}}"
_ENVELOPES = {f"{{{SOAP12_NS}}}Envelope", f"{{{SOAP11_NS}}}Envelope"}


@dataclass(frozen=True)
class Ping:
    """One AS4 ping: its ids (to match the receipt) and the bytes to POST."""

    message_id: str
    body: bytes


def build_ping(*, sender: Party, receiver: Party, message_id: str, conversation_id: str, timestamp: datetime) -> Ping:
    """A SOAP 1.2 envelope with an ebMS3 UserMessage to the test service, without payload.

    The bytes are those lxml writes for :func:`build_envelope`; they are filled into a template serialised
    once (a fifth of the CPU of building the tree per ping) whenever every value is plain text, which the
    detector's ids, timestamps and party ids are; anything else (an ``&`` in a party id) takes lxml's path.
    """
    stamp = _timestamp(timestamp)
    values = (stamp, message_id, sender.type, sender.id, sender.role, receiver.type, receiver.id, receiver.role,
              conversation_id)
    if all(_PLAIN.fullmatch(value) for value in values):
        body = _template().fill(values)
    else:
        envelope = _envelope(
            sender=sender, receiver=receiver, message_id=message_id, conversation_id=conversation_id, timestamp=stamp
        )
        body = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
    return Ping(message_id=message_id, body=body)


def build_envelope(
    *, sender: Party, receiver: Party, message_id: str, conversation_id: str, timestamp: datetime
) -> etree._Element:
    """The ping's SOAP envelope as an element (to be signed before it is serialised)."""
    return _envelope(
        sender=sender, receiver=receiver, message_id=message_id, conversation_id=conversation_id,
        timestamp=_timestamp(timestamp),
    )


def _timestamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _envelope(
    *, sender: Party, receiver: Party, message_id: str, conversation_id: str, timestamp: str
) -> etree._Element:
    envelope = etree.Element(f"{_S}Envelope", nsmap={"env": SOAP12_NS, "eb": EBMS_NS})
    header = etree.SubElement(envelope, f"{_S}Header")
    messaging = etree.SubElement(header, f"{_EB}Messaging", {f"{_S}mustUnderstand": "true"})
    user_message = etree.SubElement(messaging, f"{_EB}UserMessage")
    info = etree.SubElement(user_message, f"{_EB}MessageInfo")
    etree.SubElement(info, f"{_EB}Timestamp").text = timestamp
    etree.SubElement(info, f"{_EB}MessageId").text = message_id
    party_info = etree.SubElement(user_message, f"{_EB}PartyInfo")
    for tag, party in (("From", sender), ("To", receiver)):
        side = etree.SubElement(party_info, f"{_EB}{tag}")
        etree.SubElement(side, f"{_EB}PartyId", {"type": party.type}).text = party.id
        etree.SubElement(side, f"{_EB}Role").text = party.role
    collaboration = etree.SubElement(user_message, f"{_EB}CollaborationInfo")
    etree.SubElement(collaboration, f"{_EB}Service").text = TEST_SERVICE
    etree.SubElement(collaboration, f"{_EB}Action").text = TEST_ACTION
    etree.SubElement(collaboration, f"{_EB}ConversationId").text = conversation_id
    etree.SubElement(envelope, f"{_S}Body")
    return envelope


# Text that lxml writes as it is, in an element or an attribute (no markup character, no control character,
# nothing lxml refuses): the template's slots take only such values.
_PLAIN = re.compile("[^&<>\"\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]*")
_SLOT = re.compile(rb"LUCCS-SLOT-([0-9])-")


class _PingTemplate:
    """The ping serialised once with a marker in each of its nine slots, cut at the markers."""

    def __init__(self) -> None:
        marks = [f"LUCCS-SLOT-{i}-" for i in range(9)]
        envelope = _envelope(
            timestamp=marks[0], message_id=marks[1], sender=Party(marks[3], marks[2], marks[4]),
            receiver=Party(marks[6], marks[5], marks[7]), conversation_id=marks[8],
        )
        pieces = _SLOT.split(etree.tostring(envelope, xml_declaration=True, encoding="UTF-8"))
        self._texts = pieces[0::2]
        self._order = [int(i) for i in pieces[1::2]]
        assert sorted(self._order) == list(range(9)), "each slot once"

    def fill(self, values: tuple[str, ...]) -> bytes:
        parts = [self._texts[0]]
        for slot, text in zip(self._order, self._texts[1:], strict=True):
            parts.append(values[slot].encode())
            parts.append(text)
        return b"".join(parts)


@functools.cache
def _template() -> _PingTemplate:
    return _PingTemplate()


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False,
        remove_comments=True, remove_pis=True,
    )


class NotSoap(Exception):
    """The answer is not a SOAP envelope (HTML maintenance page, plain text, other XML)."""


class ForbiddenXml(Exception):
    """The answer uses an XML feature an AS4 answer never needs and an attacker would (DOCTYPE, entities)."""


def parse_envelope(body: bytes) -> etree._Element:
    """The SOAP envelope element of ``body``; raises NotSoap or ForbiddenXml otherwise."""
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as exc:
        raise NotSoap(f"not XML ({exc.msg})") from exc
    if root.tag not in _ENVELOPES:  # e.g. an XHTML maintenance page, DOCTYPE or not
        raise NotSoap(f"root element is {etree.QName(root).localname!r}, not a SOAP Envelope")
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None:  # any DOCTYPE yields one
        raise ForbiddenXml("DOCTYPE in a SOAP answer (SOAP forbids it; entities are never expanded)")
    return root


def root_part(content_type: str, body: bytes) -> bytes:
    """The SOAP part of an answer: the body itself, or the root part of a multipart/related answer."""
    if not content_type.lower().startswith("multipart/"):
        return body
    message: Message = BytesParser().parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        return body
    parts = [p for p in message.get_payload() if isinstance(p, Message)]
    start = message.get_param("start")
    chosen = next((p for p in parts if isinstance(start, str) and p.get("Content-ID") == start), None)
    chosen = chosen or (parts[0] if parts else None)
    payload = chosen.get_payload(decode=True) if chosen is not None else None
    return payload if isinstance(payload, bytes) else b""


AUTH_FAILURES = frozenset({"EBMS:0101"})
"""FailedAuthentication: the MSH does not accept our signature or certificate."""
PMODE_FAILURES = frozenset({"EBMS:0004", "EBMS:0010"})
"""Other (no P-Mode or processing mode fits) and ProcessingModeMismatch."""

ReceiptCheck = Callable[[etree._Element], Verdict]


def signed_ping_error(code: str) -> tuple[bool, str]:
    """What an eb:Error answering a *signed* ping means: (up?, reason). Authentication and P-Mode errors
    mean the channel does not work for us although the MSH is alive; other errors keep the unsigned rule."""
    if code in AUTH_FAILURES:
        return False, "as4_auth_failed"
    if code in PMODE_FAILURES:
        return False, "as4_pmode_mismatch"
    return True, "ebms_error"


def classify(
    *, status: int, content_type: str, body: bytes, message_id: str, receipt_check: ReceiptCheck | None = None
) -> Verdict:
    """Decide what an MSH's answer to the ping says about it (see the module docstring).

    ``receipt_check`` is given for a signed ping: it decides what an eb:Receipt proves (see ``wssec.py``),
    and eb:Errors are classified by :func:`signed_ping_error`.
    """
    if status in GATEWAY_FAILURES:
        return Verdict(False, f"http_{status}", f"HTTP {status} from a gateway: {snippet(body) or 'no body'}")
    successful = 200 <= status < 300
    if not body.strip():
        reason = "empty_response" if successful else f"http_{status}"
        return Verdict(False, reason, f"HTTP {status} without a SOAP answer (a synchronous receipt was expected)")
    try:
        envelope = parse_envelope(root_part(content_type, body))
    except ForbiddenXml as exc:
        return Verdict(False, "invalid_response", f"HTTP {status}: {exc}")
    except NotSoap as exc:
        reason = "not_soap" if successful or status == 500 else f"http_{status}"
        kind = content_type.split(";")[0].strip() or "no content type"
        return Verdict(False, reason, f"HTTP {status} {kind}, {exc}: {snippet(body)}")
    signal = envelope.find(f"{_S}Header/{_EB}Messaging/{_EB}SignalMessage")
    if signal is None:
        signal = envelope.find(f"{{{SOAP11_NS}}}Header/{_EB}Messaging/{_EB}SignalMessage")
    if signal is not None:
        error = signal.find(f"{_EB}Error")
        if error is not None:
            code = error.get("errorCode") or "EBMS:unknown"
            words = [error.get("shortDescription"), error.get("severity")]
            description = error.findtext(f"{_EB}Description")
            text = ", ".join(w for w in [*words, description and description.strip()] if w)
            ok, reason = signed_ping_error(code) if receipt_check is not None else (True, "ebms_error")
            return Verdict(ok, reason, f"MSH answered HTTP {status} with {code} ({text})", ebms_error=code)
        receipt = signal.find(f"{_EB}Receipt")
        if receipt is not None and receipt_check is not None:
            return receipt_check(envelope)
        if receipt is not None:
            referred = signal.findtext(f"{_EB}MessageInfo/{_EB}RefToMessageId")
            note = "" if referred in (None, message_id) else f" (for another message: {referred})"
            return Verdict(True, "ok", f"receipt, HTTP {status}{note}")
    fault = _fault_text(envelope)
    if fault is not None:
        return Verdict(False, "soap_fault", f"HTTP {status} SOAP fault without an ebMS error: {fault}")
    return Verdict(False, "no_receipt", f"HTTP {status}: SOAP answer with neither eb:Receipt nor eb:Error")


def _fault_text(envelope: etree._Element) -> str | None:
    ns = etree.QName(envelope).namespace
    fault = envelope.find(f"{{{ns}}}Body/{{{ns}}}Fault")
    if fault is None:
        return None
    text = fault.findtext(f"{{{ns}}}Reason/{{{ns}}}Text") or fault.findtext("faultstring") or ""
    return " ".join(text.split())[:200] or "(no reason given)"
