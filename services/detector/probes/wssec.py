"""WS-Security for signed AS4 pings: sign the ping, verify the receipt. No network I/O.

The eDelivery AS4 profile signs a UserMessage with a WS-Security 1.1 header: the sender's certificate as
an X.509 ``wsse:BinarySecurityToken``, a ``ds:Signature`` (RSA-SHA256, or ECDSA-SHA256 for an EC key) whose
references cover the ``eb:Messaging`` header and the SOAP Body, each digested with SHA-256 after exclusive
canonicalisation. The MSH answers with an ``eb:Receipt`` signed the same way, whose
``ebbp:NonRepudiationInformation`` repeats the references (and so the digests) of what it received.

The XML signature itself, canonicalisation included, is signxml's (a maintained library on lxml and
cryptography); this module only places the WS-Security elements and decides what a receipt proves:

- no signature: ``receipt_unsigned``;
- signed by a certificate other than the partner's (or not chaining to a trusted CA, or outside its
  validity period), or a signature that does not verify: ``receipt_untrusted``;
- signed and verified, but its NonRepudiationInformation does not list exactly the digests we sent, or
  it acknowledges another message: ``receipt_mismatch``;
- otherwise up.

Only what the signature covers is read (the verified copy of ``eb:Messaging``), never the rest of the
answer, so that an unsigned element next to a signed one cannot pass for part of the receipt.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError
from lxml import etree
from signxml.algorithms import (
    CanonicalizationMethod,
    DigestAlgorithm,
    SignatureConstructionMethod,
    SignatureMethod,
)
from signxml.exceptions import InvalidInput, InvalidSignature
from signxml.signer import XMLSigner
from signxml.verifier import SignatureConfiguration, XMLVerifier

from services.detector.probes.verdict import Verdict
from services.detector.targets import As4Signing

__all__ = [
    "Credentials",
    "CredentialsError",
    "SentReference",
    "check_receipt",
    "load_credentials",
    "sign_envelope",
]

SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
EBMS_NS = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/"
WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
EBBP_NS = "http://docs.oasis-open.org/ebxml-bp/ebbp-signals-2.0"
X509_TOKEN = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3"  # noqa: S105
BASE64_BINARY = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"

_S = f"{{{SOAP12_NS}}}"
_EB = f"{{{EBMS_NS}}}"
_WSSE = f"{{{WSSE_NS}}}"
_WSU_ID = f"{{{WSU_NS}}}Id"
_DS = f"{{{DS_NS}}}"
_EBBP = f"{{{EBBP_NS}}}"

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class CredentialsError(ValueError):
    """A signing key, certificate or trust file that cannot be used; the text (one line) says which and why."""


@dataclass(frozen=True, eq=False)
class Credentials:
    """What a signed ping needs, loaded once: our key and certificate, and what receipts must be signed with."""

    key: SigningKey
    certificate: x509.Certificate
    partner: x509.Certificate | None
    anchors: tuple[x509.Certificate, ...]
    token: str
    """Our certificate, DER in base64: the BinarySecurityToken of every ping."""

    @property
    def expires_at(self) -> datetime:
        return self.certificate.not_valid_after_utc


@dataclass(frozen=True)
class SentReference:
    """One ``ds:Reference`` of the ping's signature: what the receipt must acknowledge."""

    uri: str
    digest_method: str
    digest_value: str


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CredentialsError(f"{what} {path}: {exc.strerror or exc}") from exc


def _certificates(path: str, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError:
        try:
            found = [x509.load_der_x509_certificate(data)]
        except ValueError as exc:
            raise CredentialsError(f"{what} {path}: not a PEM or DER certificate") from exc
    return found


def _private_key(signing: As4Signing) -> tuple[SigningKey, x509.Certificate | None]:
    data = _read(signing.key_file, "as4_key_file")
    password = signing.key_password.encode() if signing.key_password is not None else None
    key: object
    certificate = None
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password)
        else:
            key, certificate, _extra = pkcs12.load_key_and_certificates(data, password)
    except TypeError as exc:  # a password given for a plain key, or none for an encrypted one
        raise CredentialsError(f"as4_key_file {signing.key_file}: {exc}") from exc
    except ValueError as exc:
        wrong = "wrong as4_key_password, or " if password is not None else ""
        raise CredentialsError(
            f"as4_key_file {signing.key_file}: {wrong}not a PEM private key or PKCS#12 file"
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CredentialsError(f"as4_key_file {signing.key_file}: an RSA or EC key is needed, not {type(key).__name__}")
    return key, certificate


def load_credentials(signing: As4Signing) -> Credentials:
    """Load and cross-check the files of ``signing``; raise :class:`CredentialsError` (one line) if unusable."""
    key, bundled = _private_key(signing)
    if signing.cert_file:
        certificate = _certificates(signing.cert_file, "as4_cert_file")[0]
    elif bundled is not None:
        certificate = bundled
    else:
        raise CredentialsError(f"as4_key_file {signing.key_file}: no as4_cert_file and no certificate in the key file")
    ours = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    theirs = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if ours != theirs:
        raise CredentialsError(f"as4_cert_file {signing.cert_file or signing.key_file}: the certificate is not the "
                               f"one of the key in {signing.key_file}")
    partner = None
    if signing.partner_cert_file:
        partner = _certificates(signing.partner_cert_file, "as4_partner_cert_file")[0]
    anchors = tuple(_certificates(signing.trust_ca_file, "as4_trust_ca_file")) if signing.trust_ca_file else ()
    token = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")
    return Credentials(key=key, certificate=certificate, partner=partner, anchors=anchors, token=token)


class CredentialStore:
    """The credentials of every distinct :class:`As4Signing`, loaded on first use and kept."""

    def __init__(self) -> None:
        self._loaded: dict[As4Signing, Credentials] = {}

    def get(self, signing: As4Signing) -> Credentials:
        credentials = self._loaded.get(signing)
        if credentials is None:
            credentials = self._loaded[signing] = load_credentials(signing)
        return credentials


# --- signing -------------------------------------------------------------------------------------


def _signer(key: SigningKey) -> XMLSigner:
    method = SignatureMethod.ECDSA_SHA256 if isinstance(key, ec.EllipticCurvePrivateKey) else SignatureMethod.RSA_SHA256
    return XMLSigner(
        method=SignatureConstructionMethod.detached,
        signature_algorithm=method,
        digest_algorithm=DigestAlgorithm.SHA256,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    )


def sign_envelope(envelope: etree._Element, credentials: Credentials) -> tuple[bytes, tuple[SentReference, ...]]:
    """Sign ``envelope`` (a SOAP 1.2 ping with eb:Messaging and Body) in place; return its bytes and references."""
    header = envelope.find(f"{_S}Header")
    body = envelope.find(f"{_S}Body")
    messaging = header.find(f"{_EB}Messaging") if header is not None else None
    if header is None or body is None or messaging is None:
        raise ValueError("a ping needs a SOAP Header with eb:Messaging and a Body")
    suffix = uuid.uuid4().hex
    ids = {"messaging": f"messaging-{suffix}", "body": f"body-{suffix}", "token": f"X509-{suffix}"}
    messaging.set(_WSU_ID, ids["messaging"])
    body.set(_WSU_ID, ids["body"])
    security = etree.Element(
        f"{_WSSE}Security", {f"{_S}mustUnderstand": "true"}, nsmap={"wsse": WSSE_NS, "wsu": WSU_NS}
    )
    header.insert(0, security)
    token = etree.SubElement(
        security, f"{_WSSE}BinarySecurityToken",
        {"EncodingType": BASE64_BINARY, "ValueType": X509_TOKEN, _WSU_ID: ids["token"]},
    )
    token.text = credentials.token
    key_info = etree.Element(f"{_DS}KeyInfo", nsmap={"ds": DS_NS})
    reference = etree.SubElement(
        etree.SubElement(key_info, f"{_WSSE}SecurityTokenReference", nsmap={"wsse": WSSE_NS}), f"{_WSSE}Reference"
    )
    reference.set("URI", f"#{ids['token']}")
    reference.set("ValueType", X509_TOKEN)
    signature = _signer(credentials.key).sign(
        envelope, key=credentials.key, reference_uri=[f"#{ids['messaging']}", f"#{ids['body']}"], key_info=key_info
    )
    security.append(signature)
    sent = tuple(_references(signature.findall(f"{_DS}SignedInfo/{_DS}Reference")))
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8"), sent


def _references(elements: list[etree._Element]) -> list[SentReference]:
    found = []
    for element in elements:
        method = element.find(f"{_DS}DigestMethod")
        found.append(SentReference(
            uri=element.get("URI") or "",
            digest_method=(method.get("Algorithm") or "") if method is not None else "",
            digest_value="".join((element.findtext(f"{_DS}DigestValue") or "").split()),
        ))
    return found


# --- receipts -------------------------------------------------------------------------------------


def _subject(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or f"serial {certificate.serial_number}"


def _embedded_certificate(security: etree._Element, signature: etree._Element) -> x509.Certificate | None:
    """The certificate the signature names: a BinarySecurityToken it references, or ds:X509Data."""
    der: bytes | None = None
    reference = signature.find(f"{_DS}KeyInfo/{_WSSE}SecurityTokenReference/{_WSSE}Reference")
    if reference is not None and (reference.get("URI") or "").startswith("#"):
        wanted = (reference.get("URI") or "")[1:]
        for token in security.iter(f"{_WSSE}BinarySecurityToken"):
            if token.get(_WSU_ID) == wanted and token.text:
                der = base64.b64decode("".join(token.text.split()), validate=True)
                break
    if der is None:
        text = signature.findtext(f"{_DS}KeyInfo/{_DS}X509Data/{_DS}X509Certificate")
        if text:
            der = base64.b64decode("".join(text.split()), validate=True)
    return x509.load_der_x509_certificate(der) if der is not None else None


def _trusted_signer(
    embedded: x509.Certificate | None, credentials: Credentials, now: datetime
) -> tuple[x509.Certificate | None, str]:
    """The certificate to verify the receipt with, or None and why it is not trusted."""
    if credentials.partner is not None:
        partner = credentials.partner
        if embedded is not None and embedded.fingerprint(hashes.SHA256()) != partner.fingerprint(hashes.SHA256()):
            return None, f"receipt signed by {_subject(embedded)}, not by the partner certificate {_subject(partner)}"
        signer = partner
    else:
        if embedded is None:
            return None, "the receipt's signature names no certificate to check against as4_trust_ca_file"
        builder = PolicyBuilder().store(Store(list(credentials.anchors))).time(now).extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all()
        )
        try:
            builder.build_client_verifier().verify(embedded, [])
        except VerificationError as exc:
            return None, f"receipt signer {_subject(embedded)} does not chain to as4_trust_ca_file: {exc}"
        signer = embedded
    if not signer.not_valid_before_utc <= now <= signer.not_valid_after_utc:
        return None, (f"receipt signer {_subject(signer)} is outside its validity period "
                      f"({signer.not_valid_before_utc:%Y-%m-%d} to {signer.not_valid_after_utc:%Y-%m-%d})")
    return signer, ""


def check_receipt(
    envelope: etree._Element,
    *,
    credentials: Credentials,
    sent: tuple[SentReference, ...],
    message_id: str,
    now: datetime,
) -> Verdict:
    """What a receipt to a signed ping proves (see the module docstring). ``envelope`` holds an eb:Receipt."""
    security = envelope.find(f"{_S}Header/{_WSSE}Security")
    signature = security.find(f"{_DS}Signature") if security is not None else None
    if security is None or signature is None:
        return Verdict(False, "receipt_unsigned", "the receipt to a signed ping carries no WS-Security signature")
    try:
        embedded = _embedded_certificate(security, signature)
    except (ValueError, binascii.Error) as exc:
        return Verdict(False, "receipt_untrusted", f"the receipt's signing certificate cannot be read: {exc}")
    signer, why = _trusted_signer(embedded, credentials, now)
    if signer is None:
        expiry = _expiry(embedded or credentials.partner)
        return Verdict(False, "receipt_untrusted", why, partner_cert_expires_at=expiry)
    expires = signer.not_valid_after_utc
    try:
        results = XMLVerifier().verify(
            envelope,
            x509_cert=signer,
            expect_config=SignatureConfiguration(
                location=".//", expect_references=True, verification_time=now
            ),
        )
    except (InvalidSignature, InvalidInput) as exc:
        detail = f"the receipt's signature does not verify with {_subject(signer)}: {exc}"
        return Verdict(False, "receipt_untrusted", detail, partner_cert_expires_at=expires)
    signed = [r.signed_xml for r in (results if isinstance(results, list) else [results])]
    messaging = next((e for e in signed if e is not None and e.tag == f"{_EB}Messaging"), None)
    receipt = messaging.find(f"{_EB}SignalMessage/{_EB}Receipt") if messaging is not None else None
    if messaging is None or receipt is None:
        return Verdict(False, "receipt_unsigned", "the signature does not cover the eb:Messaging header with the "
                       "receipt", partner_cert_expires_at=expires)
    referred = messaging.findtext(f"{_EB}SignalMessage/{_EB}MessageInfo/{_EB}RefToMessageId")
    if referred != message_id:
        return Verdict(False, "receipt_mismatch", f"the signed receipt is for another message: {referred}",
                       partner_cert_expires_at=expires)
    problem = _non_repudiation_problem(receipt, sent)
    if problem is not None:
        return Verdict(False, "receipt_mismatch", problem, partner_cert_expires_at=expires)
    return Verdict(
        True, "ok", f"signed receipt verified ({_subject(signer)}), {len(sent)} digests acknowledged",
        partner_cert_expires_at=expires,
    )


def _expiry(certificate: x509.Certificate | None) -> datetime | None:
    return certificate.not_valid_after_utc if certificate is not None else None


def _non_repudiation_problem(receipt: etree._Element, sent: tuple[SentReference, ...]) -> str | None:
    information = receipt.find(f"{_EBBP}NonRepudiationInformation")
    if information is None:
        return "the receipt has no NonRepudiationInformation (the digests of what was received)"
    acknowledged = {
        r.uri: r for r in _references(information.findall(f"{_EBBP}MessagePartNRInformation/{_DS}Reference"))
    }
    for reference in sent:
        echoed = acknowledged.pop(reference.uri, None)
        if echoed is None:
            return f"the receipt does not acknowledge {reference.uri}"
        if (echoed.digest_method, echoed.digest_value) != (reference.digest_method, reference.digest_value):
            return (f"the receipt's digest of {reference.uri} ({echoed.digest_value}) is not the one sent "
                    f"({reference.digest_value})")
    if acknowledged:
        return f"the receipt acknowledges parts that were not sent: {', '.join(sorted(acknowledged))}"
    return None
