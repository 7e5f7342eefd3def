"""Signed AS4 pings over real HTTP against a receiving MSH we did not write (the ``as4`` package from PyPI).

The MSH runs on loopback behind the tests' raw HTTP server; it requires signed messages, checks our
signature and certificate with its own code and answers with signed non-repudiation receipts (see
``tests/as4_msh.py``). The detector's configuration is the real one: key and certificate files, made by
the test, named in ``TargetSettings``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from services.detector.app import configured_targets
from services.detector.domain import ProbeResult
from services.detector.probes import Prober
from services.detector.targets import Target, from_settings
from shared.config import ConfigError, DetectorSettings, Settings, TargetSettings
from tests.as4_msh import Identity, Pki, ReceivingMsh
from tests.integration.test_probes_servers import LoopbackServer, Reply, Request

pytestmark = pytest.mark.integration

DETECTOR = DetectorSettings(instance_id="it", interval_s=5, timeout_s=3.0)


class Msh:
    """An ``as4``-package MSH on a loopback port."""

    def __init__(self, msh: ReceivingMsh) -> None:
        self.msh = msh
        self.server = LoopbackServer(behaviour=self._answer)

    def _answer(self, request: Request) -> Reply:
        return Reply(200, self.msh.answer(request.body), "application/soap+xml;charset=utf-8")


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def ours(pki: Pki) -> Identity:
    return pki.issue("luccs-fallback detector")


@pytest.fixture(scope="module")
def partner(pki: Pki) -> Identity:
    return pki.issue("ADA MSH")


@pytest.fixture
async def start_msh() -> AsyncIterator[Callable[[ReceivingMsh], Awaitable[str]]]:
    started: list[LoopbackServer] = []

    async def start(msh: ReceivingMsh) -> str:
        server = await Msh(msh).server.start()
        started.append(server)
        return server.url("/as4")

    yield start
    for server in started:
        await server.close()


def signed_target(url: str, directory: Path, signer: Identity, partner: Identity, **overrides: Any) -> Target:
    key_file, cert_file = signer.write(directory, "signer")
    values: dict[str, Any] = {
        "id": "ada-as4", "component": "ada_b2g", "probe": "as4", "url": url, "as4_signing": True,
        "as4_key_file": key_file, "as4_cert_file": cert_file,
        "as4_partner_cert_file": partner.write(directory, "partner")[1],
    }
    values.update(overrides)
    return from_settings(TargetSettings(**values), DETECTOR)


async def probe(target: Target) -> ProbeResult:
    prober = Prober()
    prober.check(target)
    return await prober.probe(target)


async def test_a_signed_ping_gets_a_verified_receipt_from_the_third_party_msh(
    start_msh: Callable[[ReceivingMsh], Awaitable[str]], tmp_path: Path, ours: Identity, partner: Identity
) -> None:
    msh = ReceivingMsh(partner, trusted_senders=[ours.certificate])
    result = await probe(signed_target(await start_msh(msh), tmp_path, ours, partner))
    assert (result.ok, result.reason) == (True, "ok"), result.detail
    assert msh.answered == ["receipt"]
    assert result.signing_cert_expires_at == ours.certificate.not_valid_after_utc
    assert result.partner_cert_expires_at == partner.certificate.not_valid_after_utc


async def test_a_pkcs12_key_with_its_password_signs_too(
    start_msh: Callable[[ReceivingMsh], Awaitable[str]], tmp_path: Path, ours: Identity, partner: Identity
) -> None:
    url = await start_msh(ReceivingMsh(partner, trusted_senders=[ours.certificate]))
    target = signed_target(url, tmp_path, ours, partner, as4_key_file=ours.write_p12(tmp_path, "ours", b"pw"),
                           as4_cert_file=None, as4_key_password="pw")
    result = await probe(target)
    assert (result.ok, result.reason) == (True, "ok"), result.detail


async def test_signing_with_a_key_the_msh_does_not_know_is_an_authentication_failure(
    start_msh: Callable[[ReceivingMsh], Awaitable[str]], tmp_path: Path, pki: Pki, ours: Identity, partner: Identity
) -> None:
    msh = ReceivingMsh(partner, trusted_senders=[ours.certificate])
    result = await probe(signed_target(await start_msh(msh), tmp_path, pki.issue("an old key"), partner))
    assert (result.ok, result.reason, result.ebms_error) == (False, "as4_auth_failed", "EBMS:0101"), result.detail
    assert msh.answered == ["EBMS:0101"]


async def test_an_expired_signing_certificate_is_an_authentication_failure(
    start_msh: Callable[[ReceivingMsh], Awaitable[str]], tmp_path: Path, pki: Pki, partner: Identity
) -> None:
    expired = pki.issue("luccs-fallback detector", expired=True)
    msh = ReceivingMsh(partner, trusted_cas=[pki.ca.certificate])  # the MSH checks validity along the chain
    result = await probe(signed_target(await start_msh(msh), tmp_path, expired, partner))
    assert (result.ok, result.reason) == (False, "as4_auth_failed"), result.detail
    assert result.signing_cert_expires_at == expired.certificate.not_valid_after_utc


async def test_a_receipt_from_an_untrusted_signer_is_down(
    start_msh: Callable[[ReceivingMsh], Awaitable[str]], tmp_path: Path, ours: Identity, partner: Identity
) -> None:
    impostor = Pki("another CA").issue("ADA MSH")
    url = await start_msh(ReceivingMsh(impostor, trusted_senders=[ours.certificate]))
    result = await probe(signed_target(url, tmp_path, ours, partner))
    assert (result.ok, result.reason) == (False, "receipt_untrusted"), result.detail


async def test_a_receipt_with_tampered_digests_is_a_mismatch(
    start_msh: Callable[[ReceivingMsh], Awaitable[str]], tmp_path: Path, ours: Identity, partner: Identity
) -> None:
    url = await start_msh(ReceivingMsh(partner, trusted_senders=[ours.certificate], misbehave="wrong_digests"))
    result = await probe(signed_target(url, tmp_path, ours, partner))
    assert (result.ok, result.reason) == (False, "receipt_mismatch"), result.detail


async def test_an_unsigned_receipt_and_a_pmode_error_are_down(
    start_msh: Callable[[ReceivingMsh], Awaitable[str]], tmp_path: Path, ours: Identity, partner: Identity
) -> None:
    unsigned = await start_msh(ReceivingMsh(partner, trusted_senders=[ours.certificate], misbehave="unsigned_receipt"))
    pmode = await start_msh(ReceivingMsh(partner, trusted_senders=[ours.certificate], error_code="EBMS:0004"))
    first = await probe(signed_target(unsigned, tmp_path, ours, partner))
    second = await probe(signed_target(pmode, tmp_path, ours, partner))
    assert (first.ok, first.reason) == (False, "receipt_unsigned"), first.detail
    assert (second.ok, second.reason, second.ebms_error) == (False, "as4_pmode_mismatch", "EBMS:0004")


async def test_an_unsigned_ping_to_the_strict_msh_still_proves_it_alive(
    start_msh: Callable[[ReceivingMsh], Awaitable[str]], ours: Identity, partner: Identity
) -> None:
    url = await start_msh(ReceivingMsh(partner, trusted_senders=[ours.certificate]))
    target = from_settings(TargetSettings(id="ada-as4", component="ada_b2g", probe="as4", url=url), DETECTOR)
    result = await probe(target)
    # The package refuses it before looking for a signature (EBMS:0003: no wsu:Id on eb:Messaging, which only
    # a signed message needs); Domibus says EBMS:0103. Either way an eb:Error: alive, as without signing.
    assert (result.ok, result.reason) == (True, "ebms_error"), result.detail
    assert result.ebms_error in ("EBMS:0003", "EBMS:0103")


def test_a_bad_signing_file_stops_the_detector_with_one_line(tmp_path: Path, ours: Identity) -> None:
    key_file, cert_file = ours.write(tmp_path, "ours")
    broken = tmp_path / "partner.pem"
    broken.write_text("not a certificate")
    settings = Settings(detector=DetectorSettings(targets=[TargetSettings(
        id="ada-as4", component="ada_b2g", probe="as4", url="https://b2g.example/as4", as4_signing=True,
        as4_key_file=key_file, as4_cert_file=cert_file, as4_partner_cert_file=str(broken),
    )]))
    with pytest.raises(ConfigError) as caught:
        configured_targets(settings, Prober())
    message = str(caught.value)
    assert message.startswith("detector.targets[0] (ada-as4): AS4 signing: as4_partner_cert_file")
    assert "\n" not in message
