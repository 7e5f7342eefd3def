"""The simulated MSH's side of an AS4 exchange: read a UserMessage, answer a Receipt or an ebMS Error.

Pure functions over bytes, no I/O. Incoming XML is parsed with entity resolution, DTD loading and
network access off, and a DOCTYPE is refused outright (SOAP forbids it), so nothing is ever expanded.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from lxml import etree

SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
EBMS_NS = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/"
SOAP_CONTENT_TYPE = "application/soap+xml; charset=UTF-8"

_S = f"{{{SOAP12_NS}}}"
_EB = f"{{{EBMS_NS}}}"
_ENVELOPES = {f"{{{SOAP12_NS}}}Envelope", f"{{{SOAP11_NS}}}Envelope"}
_MAX_BODY = 1_048_576


class InvalidUserMessage(Exception):
    """The request is not a SOAP envelope carrying an ebMS3 UserMessage; the text says why."""


@dataclass(frozen=True)
class UserMessage:
    """What the simulated MSH needs from an incoming UserMessage to answer it."""

    message_id: str
    element: etree._Element


@dataclass(frozen=True)
class EbmsError:
    """One ebMS3 error as the MSH reports it (ebMS3 core, section 6.7)."""

    code: str
    short_description: str
    description: str
    category: str = "Processing"
    severity: str = "failure"


POLICY_NONCOMPLIANCE = EbmsError(
    code="EBMS:0103",
    short_description="PolicyNoncompliance",
    description="The simulated MSH requires signed and encrypted messages (simulator mode 'ebms-error').",
)
INVALID_HEADER = EbmsError(
    code="EBMS:0009",
    short_description="InvalidHeader",
    description="The request is not a SOAP envelope with an ebMS3 UserMessage.",
    severity="failure",
)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False,
        remove_comments=True, remove_pis=True,
    )


def parse_user_message(body: bytes) -> UserMessage:
    """The UserMessage of an AS4 request body; raises InvalidUserMessage when there is none."""
    if len(body) > _MAX_BODY:
        raise InvalidUserMessage(f"request larger than {_MAX_BODY} bytes")
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as exc:
        raise InvalidUserMessage(f"not XML ({exc.msg})") from exc
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise InvalidUserMessage("a DOCTYPE is not allowed in a SOAP message")
    if root.tag not in _ENVELOPES:
        raise InvalidUserMessage(f"root element is {etree.QName(root).localname!r}, not a SOAP Envelope")
    soap = etree.QName(root).namespace
    user_message = root.find(f"{{{soap}}}Header/{_EB}Messaging/{_EB}UserMessage")
    if user_message is None:
        raise InvalidUserMessage("no eb:Messaging/eb:UserMessage in the SOAP header")
    message_id = (user_message.findtext(f"{_EB}MessageInfo/{_EB}MessageId") or "").strip()
    if not message_id:
        raise InvalidUserMessage("the UserMessage has no eb:MessageInfo/eb:MessageId")
    return UserMessage(message_id=message_id, element=user_message)


def _timestamp(now: datetime) -> str:
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _signal(*, now: datetime, ref_to: str | None) -> tuple[etree._Element, etree._Element, etree._Element]:
    """A SOAP 1.2 envelope with an empty eb:SignalMessage: (envelope, signal, body)."""
    envelope = etree.Element(f"{_S}Envelope", nsmap={"env": SOAP12_NS, "eb": EBMS_NS})
    header = etree.SubElement(envelope, f"{_S}Header")
    messaging = etree.SubElement(header, f"{_EB}Messaging", {f"{_S}mustUnderstand": "true"})
    signal = etree.SubElement(messaging, f"{_EB}SignalMessage")
    info = etree.SubElement(signal, f"{_EB}MessageInfo")
    etree.SubElement(info, f"{_EB}Timestamp").text = _timestamp(now)
    etree.SubElement(info, f"{_EB}MessageId").text = f"{uuid.uuid4()}@luccs-simulator"
    if ref_to is not None:
        etree.SubElement(info, f"{_EB}RefToMessageId").text = ref_to
    body = etree.SubElement(envelope, f"{_S}Body")
    return envelope, signal, body


def _serialize(envelope: etree._Element) -> bytes:
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


def receipt(message: UserMessage, *, now: datetime) -> bytes:
    """The synchronous eb:Receipt for ``message``; like an AS4 MSH without signing, it quotes the UserMessage."""
    envelope, signal, _ = _signal(now=now, ref_to=message.message_id)
    receipt_element = etree.SubElement(signal, f"{_EB}Receipt")
    receipt_element.append(_copy(message.element))
    return _serialize(envelope)


def error(problem: EbmsError, *, now: datetime, ref_to: str | None) -> bytes:
    """An eb:Error signal for ``problem`` with the SOAP 1.2 fault that goes with an HTTP 500."""
    envelope, signal, body = _signal(now=now, ref_to=ref_to)
    attributes = {
        "category": problem.category, "errorCode": problem.code, "origin": "ebMS",
        "severity": problem.severity, "shortDescription": problem.short_description,
    }
    if ref_to is not None:
        attributes["refToMessageInError"] = ref_to
    error_element = etree.SubElement(signal, f"{_EB}Error", attributes)
    description = etree.SubElement(error_element, f"{_EB}Description")
    description.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    description.text = problem.description
    fault = etree.SubElement(body, f"{_S}Fault")
    code = etree.SubElement(fault, f"{_S}Code")
    etree.SubElement(code, f"{_S}Value").text = "env:Receiver"
    reason = etree.SubElement(fault, f"{_S}Reason")
    text = etree.SubElement(reason, f"{_S}Text")
    text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    text.text = f"{problem.code} {problem.short_description}"
    return _serialize(envelope)


def _copy(element: etree._Element) -> etree._Element:
    # Re-parse a serialized copy so the receipt does not move the element out of the request's tree.
    copied: etree._Element = etree.fromstring(etree.tostring(element), _parser())
    return copied


def request_message_id(body: bytes) -> str | None:
    """The MessageId of a request if it has one (to refer to it in an error), else None."""
    try:
        return parse_user_message(body).message_id
    except InvalidUserMessage:
        return None
