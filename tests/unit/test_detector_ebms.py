"""Unit tests of the AS4 ping (ebMS3 UserMessage) and of how an MSH's answer is classified."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from services.detector.probes.ebms import (
    EBMS_NS,
    SOAP11_NS,
    SOAP12_NS,
    TEST_ACTION,
    TEST_SERVICE,
    build_envelope,
    build_ping,
    classify,
    root_part,
)
from services.detector.targets import Party

EB = f"{{{EBMS_NS}}}"
S = f"{{{SOAP12_NS}}}"
MESSAGE_ID = "0b4f6a3e-1111-2222-3333-444455556666@luccs-fallback"
SENDER = Party("luccs-fallback", "urn:oasis:names:tc:ebcore:partyid-type:unregistered", "urn:x:initiator")
EO = Party("LU12345678901234", "urn:oasis:names:tc:ebcore:partyid-type:eu-customs:EORI", "urn:x:responder")


def soap(signal: str, *, version: str = SOAP12_NS, body: str = "") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><env:Envelope xmlns:env="{version}" xmlns:eb="{EBMS_NS}">'
        f'<env:Header><eb:Messaging env:mustUnderstand="true"><eb:SignalMessage>'
        f"<eb:MessageInfo><eb:Timestamp>2024-03-01T12:00:00Z</eb:Timestamp><eb:MessageId>r@msh</eb:MessageId>"
        f"<eb:RefToMessageId>{MESSAGE_ID}</eb:RefToMessageId></eb:MessageInfo>{signal}"
        f"</eb:SignalMessage></eb:Messaging></env:Header><env:Body>{body}</env:Body></env:Envelope>"
    ).encode()


RECEIPT = soap("<eb:Receipt><ebbp:NonRepudiationInformation xmlns:ebbp='urn:x'/></eb:Receipt>")
EBMS_ERROR = soap(
    '<eb:Error errorCode="EBMS:0103" severity="failure" shortDescription="PolicyNoncompliance" origin="security">'
    "<eb:Description xml:lang='en'>The message is not signed</eb:Description></eb:Error>",
    body='<env:Fault><env:Code><env:Value>env:Receiver</env:Value></env:Code>'
    '<env:Reason><env:Text xml:lang="en">Policy</env:Text></env:Reason></env:Fault>',
)
MAINTENANCE = b"<!DOCTYPE html><html><head><title>Maintenance</title></head><body>Back soon</body></html>"


def verdict_of(body: bytes, *, status: int = 200, content_type: str = "application/soap+xml") -> tuple[bool, str]:
    verdict = classify(status=status, content_type=content_type, body=body, message_id=MESSAGE_ID)
    return verdict.ok, verdict.reason


# --- the ping -----------------------------------------------------------------------------------


def test_ping_is_a_soap12_ebms3_user_message_to_the_test_service() -> None:
    at = datetime(2024, 3, 1, 12, 30, 15, 123000, tzinfo=UTC)
    ping = build_ping(sender=SENDER, receiver=EO, message_id=MESSAGE_ID, conversation_id="conv-1", timestamp=at)
    root = etree.fromstring(ping.body)
    assert root.tag == f"{S}Envelope"
    messaging = root.find(f"{S}Header/{EB}Messaging")
    assert messaging is not None
    assert messaging.get(f"{S}mustUnderstand") == "true"
    user = messaging.find(f"{EB}UserMessage")
    assert user is not None
    assert user.findtext(f"{EB}MessageInfo/{EB}MessageId") == MESSAGE_ID
    assert user.findtext(f"{EB}MessageInfo/{EB}Timestamp") == "2024-03-01T12:30:15.123Z"
    to_party = user.find(f"{EB}PartyInfo/{EB}To/{EB}PartyId")
    assert to_party is not None
    assert (to_party.text, to_party.get("type")) == (EO.id, EO.type)
    assert user.findtext(f"{EB}PartyInfo/{EB}To/{EB}Role") == EO.role
    assert user.findtext(f"{EB}PartyInfo/{EB}From/{EB}PartyId") == SENDER.id
    assert user.findtext(f"{EB}PartyInfo/{EB}From/{EB}Role") == SENDER.role
    assert user.findtext(f"{EB}CollaborationInfo/{EB}Service") == TEST_SERVICE
    assert user.findtext(f"{EB}CollaborationInfo/{EB}Action") == TEST_ACTION
    assert user.findtext(f"{EB}CollaborationInfo/{EB}ConversationId") == "conv-1"
    body = root.find(f"{S}Body")
    assert body is not None and len(body) == 0


def test_party_ids_are_escaped_not_spliced() -> None:
    hostile = Party('a"<b>&', "t", "r")
    ping = build_ping(sender=hostile, receiver=EO, message_id="m", conversation_id="c", timestamp=datetime.now(UTC))
    root = etree.fromstring(ping.body)
    assert root.findtext(f"{S}Header/{EB}Messaging/{EB}UserMessage/{EB}PartyInfo/{EB}From/{EB}PartyId") == 'a"<b>&'


# --- the answer ---------------------------------------------------------------------------------


def test_receipt_is_up() -> None:
    verdict = classify(status=200, content_type="application/soap+xml", body=RECEIPT, message_id=MESSAGE_ID)
    assert (verdict.ok, verdict.reason, verdict.ebms_error) == (True, "ok", None)
    assert "another message" not in (verdict.detail or "")


def test_receipt_for_another_message_is_up_but_noted() -> None:
    verdict = classify(status=200, content_type="application/soap+xml", body=RECEIPT, message_id="other@x")
    assert verdict.ok
    assert "another message" in (verdict.detail or "")


@pytest.mark.parametrize("status", [200, 500, 400])
def test_ebms_error_proves_the_msh_alive(status: int) -> None:
    verdict = classify(status=status, content_type="application/soap+xml", body=EBMS_ERROR, message_id=MESSAGE_ID)
    assert (verdict.ok, verdict.reason, verdict.ebms_error) == (True, "ebms_error", "EBMS:0103")
    assert "PolicyNoncompliance" in (verdict.detail or "")
    assert "not signed" in (verdict.detail or "")


def test_soap11_envelope_with_a_receipt_is_up() -> None:
    assert verdict_of(soap("<eb:Receipt/>", version=SOAP11_NS), content_type="text/xml") == (True, "ok")


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_are_down_even_with_a_soap_body(status: int) -> None:
    assert verdict_of(RECEIPT, status=status) == (False, f"http_{status}")


@pytest.mark.parametrize(("status", "reason"), [(200, "not_soap"), (500, "not_soap"), (404, "http_404")])
def test_html_maintenance_page_is_down(status: int, reason: str) -> None:
    verdict = classify(status=status, content_type="text/html", body=MAINTENANCE, message_id=MESSAGE_ID)
    assert (verdict.ok, verdict.reason) == (False, reason)
    assert "Maintenance" in (verdict.detail or "")


@pytest.mark.parametrize(
    "body",
    [b"OK", b"{}", b"<status>fine</status>", b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"/>'],
)
def test_non_soap_answers_are_down(body: bytes) -> None:
    assert verdict_of(body) == (False, "not_soap")


@pytest.mark.parametrize(("status", "reason"), [(200, "empty_response"), (202, "empty_response"), (500, "http_500")])
def test_empty_answers_are_down(status: int, reason: str) -> None:
    assert verdict_of(b"  \r\n", status=status) == (False, reason)


def test_soap_fault_without_ebms_error_is_down() -> None:
    fault = (
        f'<env:Envelope xmlns:env="{SOAP12_NS}"><env:Body><env:Fault><env:Code><env:Value>env:Sender</env:Value>'
        f"</env:Code><env:Reason><env:Text>WS-Security header missing</env:Text></env:Reason></env:Fault>"
        f"</env:Body></env:Envelope>"
    ).encode()
    verdict = classify(status=500, content_type="application/soap+xml", body=fault, message_id=MESSAGE_ID)
    assert (verdict.ok, verdict.reason) == (False, "soap_fault")
    assert "WS-Security header missing" in (verdict.detail or "")


def test_soap_answer_with_neither_receipt_nor_error_is_down() -> None:
    assert verdict_of(soap("")) == (False, "no_receipt")
    assert verdict_of(f'<e:Envelope xmlns:e="{SOAP12_NS}"><e:Body/></e:Envelope>'.encode()) == (False, "no_receipt")


# --- hostile XML: never expanded, always down ---------------------------------------------------


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">'
    b'<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>'
    b'<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body>&lol4;</env:Body></env:Envelope>'
)
XXE = (
    b'<?xml version="1.0"?><!DOCTYPE env [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b'<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body>&xxe;</env:Body></env:Envelope>'
)
EXTERNAL_DTD = (
    b'<?xml version="1.0"?><!DOCTYPE env SYSTEM "http://127.0.0.1:9/evil.dtd">'
    + RECEIPT.split(b"?>", 1)[1]
)


@pytest.mark.parametrize("body", [BILLION_LAUGHS, XXE, EXTERNAL_DTD], ids=["billion-laughs", "xxe", "external-dtd"])
def test_doctype_is_refused_without_expansion(body: bytes) -> None:
    verdict = classify(status=200, content_type="application/soap+xml", body=body, message_id=MESSAGE_ID)
    assert (verdict.ok, verdict.reason) == (False, "invalid_response")
    assert "DOCTYPE" in (verdict.detail or "")
    assert "root:" not in (verdict.detail or "")  # nothing of /etc/passwd
    assert "lollol" not in (verdict.detail or "")


def test_doctype_around_a_valid_receipt_is_still_refused() -> None:
    body = b'<?xml version="1.0"?><!DOCTYPE env [<!ENTITY x "y">]>' + RECEIPT.split(b"?>", 1)[1]
    assert verdict_of(body) == (False, "invalid_response")


# --- multipart (SOAP with attachments) -----------------------------------------------------------


def test_multipart_answer_is_classified_by_its_root_part() -> None:
    boundary = "MIMEBoundary_1"
    body = (
        f"--{boundary}\r\nContent-Type: application/soap+xml; charset=UTF-8\r\nContent-ID: <root@msh>\r\n\r\n".encode()
        + EBMS_ERROR
        + f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-ID: <att@msh>\r\n\r\nxx\r\n"
        f"--{boundary}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/soap+xml"; boundary="{boundary}"; start="<root@msh>"'
    assert root_part(content_type, body).strip() == EBMS_ERROR
    verdict = classify(status=500, content_type=content_type, body=body, message_id=MESSAGE_ID)
    assert (verdict.ok, verdict.reason, verdict.ebms_error) == (True, "ebms_error", "EBMS:0103")


def test_plain_answers_are_their_own_root_part() -> None:
    assert root_part("application/soap+xml", RECEIPT) is RECEIPT


def _lxml_ping(sender: Party, receiver: Party, message_id: str, conversation_id: str, at: datetime) -> bytes:
    envelope = build_envelope(
        sender=sender, receiver=receiver, message_id=message_id, conversation_id=conversation_id, timestamp=at
    )
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


@pytest.mark.parametrize(
    "party",
    [
        EO,
        Party("LU12345678901234", "urn:oasis:names:tc:ebcore:partyid-type:eori", "Responder"),
        Party("Zoll & Douane", "urn:x", "a<b>"),  # markup characters: lxml's own path
        Party('quote"d', "type 'single' é ü €", "role\twith tab"),
    ],
)
def test_the_ping_template_writes_the_bytes_lxml_writes(party: Party) -> None:
    at = datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    ping = build_ping(
        sender=SENDER, receiver=party, message_id="a-b@luccs-fallback", conversation_id="c1", timestamp=at
    )
    assert ping.body == _lxml_ping(SENDER, party, "a-b@luccs-fallback", "c1", at)


@given(ids=st.lists(st.text(max_size=12), min_size=8, max_size=8))
def test_any_party_and_ids_give_the_bytes_lxml_gives_or_its_error(ids: list[str]) -> None:
    at = datetime(2024, 3, 1, 12, 30, 15, tzinfo=UTC)
    sender, receiver = Party(*ids[0:3]), Party(*ids[3:6])
    try:
        expected: bytes | type[Exception] = _lxml_ping(sender, receiver, ids[6], ids[7], at)
    except Exception as exc:  # lxml refuses control characters and lone surrogates
        expected = type(exc)
    try:
        got: bytes | type[Exception] = build_ping(
            sender=sender, receiver=receiver, message_id=ids[6], conversation_id=ids[7], timestamp=at
        ).body
    except Exception as exc:
        got = type(exc)
    assert got == expected
