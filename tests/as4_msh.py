"""A test PKI made at run time (no private key is ever committed) and a receiving AS4 MSH we did not write.

:class:`ReceivingMsh` is the ``as4`` package from PyPI (an independent implementation of the AS4 profile:
its own signature verification, trust policies and signed non-repudiation receipts) answering our ping.
The only glue is :class:`PingMessage`: the package's parser insists on an ``eb:PayloadInfo``, which the
ebMS3 test-service ping has none of; everything before that check (signature, coverage of eb:Messaging and
the Body, digests, trust in the signer) is the package's. A few knobs make it misbehave on purpose, the way
a broken partner would: sign receipts with another certificate, echo wrong digests, send them unsigned,
or answer with a given ebMS error.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from as4 import (
    AS4InternalCredentials,
    AS4InternalParty,
    AS4LocalPrivateKey,
    AS4ParseContext,
    AS4PartyIdentity,
    AS4References,
    SecurityPolicy,
    certificate_chain,
    pinned_certificates,
)
from as4.core.message import AS4Message
from as4.core.receipt import AS4Receipt
from as4.errors import PayloadInfoNotFoundException
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from lxml import etree

WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"

UNREGISTERED = "urn:oasis:names:tc:ebcore:partyid-type:unregistered"
_NOW = dt.datetime.now(dt.UTC)


@dataclass
class Identity:
    """A key and its certificate, written to files on demand."""

    key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    def key_pem(self, password: bytes | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        )
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write(self, directory: Path, name: str) -> tuple[str, str]:
        """(key file, certificate file) in PEM."""
        key_file, cert_file = directory / f"{name}.key.pem", directory / f"{name}.cert.pem"
        key_file.write_bytes(self.key_pem())
        cert_file.write_bytes(self.cert_pem())
        return str(key_file), str(cert_file)

    def write_p12(self, directory: Path, name: str, password: bytes) -> str:
        path = directory / f"{name}.p12"
        path.write_bytes(pkcs12.serialize_key_and_certificates(
            name.encode(), self.key, self.certificate, None, serialization.BestAvailableEncryption(password)
        ))
        return str(path)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "luccs-fallback tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Pki:
    """A CA that issues AS4 signing certificates (RSA 2048, as the eDelivery profile asks)."""

    name: str = "AS4 test CA"
    ca: Identity = field(init=False)

    def __post_init__(self) -> None:
        key = _key()
        builder = (
            x509.CertificateBuilder().subject_name(_name(self.name)).issuer_name(_name(self.name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - dt.timedelta(days=1)).not_valid_after(_NOW + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        self.ca = Identity(key, builder.sign(key, hashes.SHA256()))

    def issue(self, common_name: str, *, valid_days: float = 365, expired: bool = False) -> Identity:
        key = _key()
        if expired:
            not_before, not_after = _NOW - dt.timedelta(days=30), _NOW - dt.timedelta(days=1)
        else:
            not_before, not_after = _NOW - dt.timedelta(days=1), _NOW + dt.timedelta(days=valid_days)
        builder = (
            x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(self.ca.certificate.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca.key.public_key()),
                           critical=False)
        )
        return Identity(key, builder.sign(self.ca.key, hashes.SHA256()))


class PingMessage(AS4Message):  # type: ignore[misc]
    """The package's AS4 message, accepting a UserMessage without eb:PayloadInfo (the test-service ping)."""

    @classmethod
    def process(
        cls, fields: dict[str, Any], parse_context: AS4ParseContext, soap_envelope_element: etree._Element,
        mime_attachments: dict[str, bytes],
    ) -> dict[str, Any]:
        try:
            processed: dict[str, Any] = super().process(fields, parse_context, soap_envelope_element, mime_attachments)
            return processed
        except PayloadInfoNotFoundException:  # raised last, after every security check passed
            return fields


Misbehaviour = Literal["none", "wrong_digests", "unsigned_receipt", "tamper_receipt"]


@dataclass
class ReceivingMsh:
    """The receiving side of an AS4 ping, by the ``as4`` package: answers a request body with a signal."""

    identity: Identity
    """Signs the receipts (the partner certificate the detector is told about, or another one)."""
    trusted_senders: list[x509.Certificate] = field(default_factory=list)
    """Pinned sender certificates (the package's ``pinned_certificates``), or:"""
    trusted_cas: list[x509.Certificate] = field(default_factory=list)
    """CAs a sender's certificate must chain to, in its validity period (``certificate_chain``)."""
    require_signature: bool = True
    misbehave: Misbehaviour = "none"
    error_code: str | None = None
    """Answer every ping with this ebMS error (signed), e.g. EBMS:0004 for a P-Mode that no longer fits."""
    answered: list[str] = field(default_factory=list)
    """The error code or "receipt" of every answer, in order."""

    def _party(self) -> AS4InternalParty:
        return AS4InternalParty(
            identity=AS4PartyIdentity(party_id="LUCCS", party_type=UNREGISTERED),
            credentials=AS4InternalCredentials(
                certificate=self.identity.certificate, private_key=AS4LocalPrivateKey(self.identity.key)
            ),
        )

    def answer(self, body: bytes) -> bytes:
        resolver = (certificate_chain(*self.trusted_cas) if self.trusted_cas
                    else pinned_certificates(*self.trusted_senders) if self.trusted_senders else None)
        policy_args: dict[str, Any] = {"sign_required": self.require_signature, "encrypt_required": False,
                                       "verify_participants": False}
        if resolver is not None:
            policy_args["signer_resolver"] = resolver
        local = self._party()
        context = AS4ParseContext(local_party=local, security_policy=SecurityPolicy(**policy_args))
        message = PingMessage.parse(parse_context=context, soap_bytes=body, mime_attachments={})
        if self.error_code is not None and message.parse_error is None:
            receipt = AS4Receipt.create_error_signal(
                error_code=self.error_code, short_description="ProcessingModeMismatch", description="no P-Mode fits",
                severity="failure", detail="test", category="Processing", referenced_message_id=message.message_id,
                referenced_messaging_id=message.messaging_id, local_party=local, references=AS4References(),
            )
        elif self.misbehave == "wrong_digests" and message.parse_error is None:
            wrong = [
                reference.model_copy(update={"digest_value": reference.digest_value.model_copy(
                    update={"text": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="})})
                for reference in message.signature_references
            ]
            receipt = AS4Receipt.create_non_repudiation_receipt(
                referenced_message_id=message.message_id, referenced_messaging_id=message.messaging_id,
                non_repudiated_references=wrong, local_party=local, references=AS4References(),
            )
        else:
            receipt = AS4Receipt.for_message(message=message, local_party=local, references=AS4References())
        self.answered.append(message.parse_error.error_code if message.parse_error is not None
                             else self.error_code or "receipt")
        _headers, signal = receipt.get_request_data()
        if self.misbehave == "unsigned_receipt":
            root = etree.fromstring(signal)
            for security in root.iter(f"{{{WSSE_NS}}}Security"):
                security.getparent().remove(security)  # type: ignore[union-attr]
            signal = etree.tostring(root)
        elif self.misbehave == "tamper_receipt":
            signal = signal.replace(b"RefToMessageId>", b"RefToMessageId> ", 1)  # after signing: breaks a digest
        return bytes(signal)
