"""Signed AS4 pings and receipt verification, against a receiving MSH we did not write (the ``as4`` package).

Pure: the ping goes to the MSH as bytes and its answer comes back as bytes, no network (the probe over real
HTTP is in ``tests/integration/test_probes_as4_signed.py``). Every key and certificate is made by the test.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from lxml import etree
from signxml.verifier import SignatureConfiguration, XMLVerifier

from services.detector.probes.ebms import build_envelope, classify, signed_ping_error
from services.detector.probes.verdict import Verdict
from services.detector.probes.wssec import (
    Credentials,
    CredentialsError,
    check_receipt,
    load_credentials,
    sign_envelope,
)
from services.detector.targets import As4Signing, Party
from tests.as4_msh import Identity, Pki, ReceivingMsh

SENDER = Party("luccs-fallback", "urn:oasis:names:tc:ebcore:partyid-type:unregistered", "initiator")
RECEIVER = Party("LUCCS", "urn:oasis:names:tc:ebcore:partyid-type:unregistered", "responder")


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def partner(pki: Pki) -> Identity:
    return pki.issue("ADA MSH")


@pytest.fixture(scope="module")
def files(pki: Pki, partner: Identity, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("as4")
    ours = pki.issue("luccs-fallback")
    key, cert = ours.write(directory, "ours")
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(pki.ca.cert_pem())
    return {
        "key": key, "cert": cert, "partner_cert": partner.write(directory, "partner")[1], "ca": str(ca_file),
        "p12": ours.write_p12(directory, "ours", b"s3cret"),
    }


@pytest.fixture(scope="module")
def credentials(files: dict[str, str]) -> Credentials:
    return load_credentials(As4Signing(files["key"], files["cert"], partner_cert_file=files["partner_cert"]))


def exchange(msh: ReceivingMsh, credentials: Credentials, *, now: dt.datetime | None = None) -> Verdict:
    """One signed ping through ``msh`` and the verdict on its answer, as the probe decides it."""
    now = now or dt.datetime.now(dt.UTC)
    message_id = f"{uuid.uuid4()}@luccs-fallback"
    envelope = build_envelope(
        sender=SENDER, receiver=RECEIVER, message_id=message_id, conversation_id="c", timestamp=now
    )
    body, sent = sign_envelope(envelope, credentials)
    answer = msh.answer(body)

    def check(answer_envelope: etree._Element) -> Verdict:
        return check_receipt(answer_envelope, credentials=credentials, sent=sent, message_id=message_id, now=now)

    return classify(status=200, content_type="application/soap+xml", body=answer, message_id=message_id,
                    receipt_check=check)


def partner_msh(partner: Identity, credentials: Credentials, **kwargs: Any) -> ReceivingMsh:
    """The partner's MSH: signs receipts with the partner certificate, trusts our signing certificate."""
    return ReceivingMsh(partner, trusted_senders=[credentials.certificate], **kwargs)


# --- credentials ---------------------------------------------------------------------------------


def test_pem_and_pkcs12_keys_load_and_name_their_certificate(files: dict[str, str]) -> None:
    pem = load_credentials(As4Signing(files["key"], files["cert"], partner_cert_file=files["partner_cert"]))
    p12 = load_credentials(As4Signing(files["p12"], None, trust_ca_file=files["ca"], key_password="s3cret"))
    assert pem.certificate == p12.certificate
    assert pem.partner is not None and p12.anchors and p12.partner is None
    assert pem.expires_at == pem.certificate.not_valid_after_utc


@pytest.mark.parametrize(
    ("signing", "message"),
    [
        (lambda f: As4Signing(f["p12"], None, trust_ca_file=f["ca"], key_password="wrong"), "wrong as4_key_password"),
        (lambda f: As4Signing(f["key"], f["partner_cert"], trust_ca_file=f["ca"]), "is not the one of the key"),
        (lambda f: As4Signing(f["key"], None, trust_ca_file=f["ca"]), "no as4_cert_file"),
        (lambda f: As4Signing(f["key"] + ".missing", f["cert"], trust_ca_file=f["ca"]), "No such file"),
        (lambda f: As4Signing(f["cert"], f["cert"], trust_ca_file=f["ca"]), "not a PEM private key"),
        (lambda f: As4Signing(f["key"], f["cert"], partner_cert_file=f["key"]), "not a PEM or DER certificate"),
    ],
)
def test_an_unusable_file_is_a_one_line_error(files: dict[str, str], signing: object, message: str) -> None:
    with pytest.raises(CredentialsError) as caught:
        load_credentials(signing(files))  # type: ignore[operator]
    assert message in str(caught.value) and "\n" not in str(caught.value)


# --- the ping ------------------------------------------------------------------------------------


def test_the_ping_is_signed_per_the_edelivery_profile_and_verifies_independently(credentials: Credentials) -> None:
    envelope = build_envelope(sender=SENDER, receiver=RECEIVER, message_id="m@x", conversation_id="c",
                              timestamp=dt.datetime.now(dt.UTC))
    body, sent = sign_envelope(envelope, credentials)
    root = etree.fromstring(body)
    ns = {"s": "http://www.w3.org/2003/05/soap-envelope", "ds": "http://www.w3.org/2000/09/xmldsig#",
          "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"}
    signature = root.find("s:Header/wsse:Security/ds:Signature", ns)
    assert signature is not None
    algorithms = {e.get("Algorithm") for e in signature.iter() if e.get("Algorithm")}
    assert algorithms == {
        "http://www.w3.org/2001/10/xml-exc-c14n#", "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        "http://www.w3.org/2001/04/xmlenc#sha256",
    }
    token = root.find("s:Header/wsse:Security/wsse:BinarySecurityToken", ns)
    assert token is not None and token.get("ValueType", "").endswith("#X509v3")
    verified = XMLVerifier().verify(root, x509_cert=credentials.certificate,
                                    expect_config=SignatureConfiguration(location=".//", expect_references=2))
    assert isinstance(verified, list)
    assert [etree.QName(v.signed_xml).localname for v in verified if v.signed_xml is not None] == ["Messaging", "Body"]
    wsu_id = "{http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd}Id"
    signed = [root.find("s:Header/{*}Messaging", ns), root.find("s:Body", ns)]
    assert [r.uri[1:] for r in sent] == [e.get(wsu_id) for e in signed if e is not None]


# --- receipts ------------------------------------------------------------------------------------


def test_a_signed_receipt_acknowledging_what_was_sent_is_up(
    partner: Identity, credentials: Credentials
) -> None:
    msh = partner_msh(partner, credentials)
    verdict = exchange(msh, credentials)
    assert (verdict.ok, verdict.reason) == (True, "ok"), verdict.detail
    assert msh.answered == ["receipt"]
    assert verdict.partner_cert_expires_at is not None


def test_a_receipt_chaining_to_the_trusted_ca_is_up_and_one_from_another_ca_is_untrusted(
    pki: Pki, files: dict[str, str]
) -> None:
    by_ca = load_credentials(As4Signing(files["key"], files["cert"], trust_ca_file=files["ca"]))
    good = ReceivingMsh(pki.issue("ADA MSH"), trusted_senders=[by_ca.certificate])
    assert exchange(good, by_ca).reason == "ok"
    stranger = ReceivingMsh(Pki("rogue CA").issue("ADA MSH"), trusted_senders=[by_ca.certificate])
    verdict = exchange(stranger, by_ca)
    assert (verdict.ok, verdict.reason) == (False, "receipt_untrusted")
    assert "does not chain" in (verdict.detail or "")


def test_a_receipt_signed_by_another_certificate_is_untrusted(pki: Pki, credentials: Credentials) -> None:
    msh = ReceivingMsh(pki.issue("ADA MSH, rotated without telling us"), trusted_senders=[credentials.certificate])
    verdict = exchange(msh, credentials)
    assert (verdict.ok, verdict.reason) == (False, "receipt_untrusted")
    assert "not by the partner certificate" in (verdict.detail or "")


def test_a_receipt_with_wrong_digests_is_a_mismatch(
    partner: Identity, credentials: Credentials
) -> None:
    verdict = exchange(partner_msh(partner, credentials, misbehave="wrong_digests"), credentials)
    assert (verdict.ok, verdict.reason) == (False, "receipt_mismatch")
    assert "is not the one sent" in (verdict.detail or "")


def test_an_unsigned_receipt_and_a_receipt_altered_after_signing(
    partner: Identity, credentials: Credentials
) -> None:
    unsigned = exchange(partner_msh(partner, credentials, misbehave="unsigned_receipt"), credentials)
    assert (unsigned.ok, unsigned.reason) == (False, "receipt_unsigned")
    altered = exchange(partner_msh(partner, credentials, misbehave="tamper_receipt"), credentials)
    assert (altered.ok, altered.reason) == (False, "receipt_untrusted")
    assert "does not verify" in (altered.detail or "")


def test_a_partner_certificate_past_its_validity_is_untrusted(
    partner: Identity, credentials: Credentials
) -> None:
    assert credentials.partner is not None
    later = credentials.partner.not_valid_after_utc + dt.timedelta(days=1)
    verdict = exchange(partner_msh(partner, credentials), credentials, now=later)
    assert (verdict.ok, verdict.reason) == (False, "receipt_untrusted")
    assert "validity" in (verdict.detail or "")


def test_the_msh_refusing_our_signature_is_an_authentication_failure(
    pki: Pki, partner: Identity, credentials: Credentials
) -> None:
    msh = partner_msh(partner, credentials)
    msh.trusted_senders = [pki.issue("someone else").certificate]  # our certificate is not the one it knows
    verdict = exchange(msh, credentials)
    assert (verdict.ok, verdict.reason, verdict.ebms_error) == (False, "as4_auth_failed", "EBMS:0101")


def test_a_pmode_error_is_a_mismatch_and_other_errors_keep_the_alive_rule(
    partner: Identity, credentials: Credentials
) -> None:
    verdict = exchange(partner_msh(partner, credentials, error_code="EBMS:0004"), credentials)
    assert (verdict.ok, verdict.reason, verdict.ebms_error) == (False, "as4_pmode_mismatch", "EBMS:0004")
    assert signed_ping_error("EBMS:0010") == (False, "as4_pmode_mismatch")
    assert signed_ping_error("EBMS:0101") == (False, "as4_auth_failed")
    assert signed_ping_error("EBMS:0103") == (True, "ebms_error")
