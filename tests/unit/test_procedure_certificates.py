"""Certificate expiry told to the Servicedesk (services/procedure/certificates.py): which certificates count,
each warning level once per certificate, a renewed certificate clears the old one's advisory; and the
console's line in every language."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.procedure.certificates import (
    CertificateChange,
    CertificateKey,
    SeenCertificate,
    certificate_changes,
    seen_certificates,
)
from services.procedure.console import certificate_line
from services.procedure.console_texts import PHRASES
from shared.events import AvailabilityData, CertificateExpiry, CertificateRole, Component, ComponentState, Language

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LEVELS = (30, 14, 7)
TLS, SIGNING, PARTNER = CertificateRole.TLS, CertificateRole.AS4_SIGNING, CertificateRole.AS4_PARTNER


def seen(days: float, *, role: CertificateRole = TLS, target: str = "ada-tls") -> SeenCertificate:
    return SeenCertificate(target, Component.ADA_B2G, role, NOW + timedelta(days=days))


def tell(told: dict[CertificateKey, tuple[str, CertificateExpiry]], certificates: list[SeenCertificate], *,
         now: datetime = NOW) -> list[CertificateChange]:
    """Run the rule and keep ``told`` as the procedure service does (the advisories active afterwards)."""
    changes = certificate_changes(told=told, seen=certificates, now=now, levels=LEVELS)
    for change in changes:
        key = (change.certificate.target_id, change.certificate.role)
        if change.raise_it:
            told[key] = (change.advisory_id or f"adv-{len(told) + 1}", change.certificate)
        else:
            told.pop(key)
    return changes


def test_nothing_is_told_further_out_than_the_first_level() -> None:
    assert tell({}, [seen(31), seen(400, role=SIGNING), seen(30.5, role=PARTNER)]) == []


@pytest.mark.parametrize(("days", "level"), [(30, 30), (29.9, 30), (14, 14), (8, 14), (7, 7), (0.1, 7), (0, 0),
                                             (-3, 0)])
def test_a_certificate_within_a_level_raises_one_advisory_at_that_level(days: float, level: int) -> None:
    [change] = tell({}, [seen(days)])
    assert change.raise_it and change.advisory_id is None
    assert change.certificate == CertificateExpiry(target_id="ada-tls", component=Component.ADA_B2G, role=TLS,
                                                   expires_at=NOW + timedelta(days=days), warning_days=level)


def test_each_level_is_told_once_however_often_the_certificate_is_seen() -> None:
    told: dict[CertificateKey, tuple[str, CertificateExpiry]] = {}
    expiry_in = 20.0
    levels_told = []
    for day in range(0, 25):  # a probe every 6 hours for 25 days, by two vantage points
        for hour in (0, 6, 12, 18):
            now = NOW + timedelta(days=day, hours=hour)
            certificate = SeenCertificate("ada-tls", Component.ADA_B2G, TLS, NOW + timedelta(days=expiry_in))
            for change in tell(told, [certificate, certificate], now=now):
                assert change.raise_it
                levels_told.append((change.certificate.warning_days, change.advisory_id))
    # 30 at once (20 days left), 14 and 7 as they come, 0 once expired: each once, on the same advisory.
    assert levels_told == [(30, None), (14, "adv-1"), (7, "adv-1"), (0, "adv-1")]


def test_a_renewed_certificate_clears_the_old_advisory_and_is_told_only_if_it_is_close_too() -> None:
    told: dict[CertificateKey, tuple[str, CertificateExpiry]] = {}
    tell(told, [seen(10)])
    [cleared] = tell(told, [seen(365)])
    assert not cleared.raise_it and cleared.advisory_id == "adv-1" and cleared.certificate.warning_days == 14
    assert told == {}
    tell(told, [seen(10)])
    cleared, raised = tell(told, [seen(20)])  # renewed, but with a short one: its own advisory
    assert (cleared.raise_it, raised.raise_it, raised.advisory_id, raised.certificate.warning_days) == (
        False, True, None, 30)


def test_the_certificates_of_one_target_and_of_two_targets_are_apart() -> None:
    changes = tell({}, [seen(20), seen(20, role=SIGNING), seen(5, role=PARTNER), seen(20, target="ada-tls-2")])
    assert sorted((c.certificate.target_id, c.certificate.role.value, c.certificate.warning_days)
                  for c in changes) == [("ada-tls", "as4_partner", 7), ("ada-tls", "as4_signing", 30),
                                        ("ada-tls", "tls", 30), ("ada-tls-2", "tls", 30)]


def observation(component: Component, eori: str | None = None) -> AvailabilityData:
    return AvailabilityData(
        target_id="t", component=component, eori=eori, detector_instance="d1", state=ComponentState.UP,
        since=NOW, observed_at=NOW, probe="as4", ok=True, reason="ok", cert_expires_at=NOW + timedelta(days=1),
        as4_signing_cert_expires_at=NOW + timedelta(days=2), as4_partner_cert_expires_at=NOW + timedelta(days=3),
    )


def test_only_national_targets_count_never_an_eo_endpoint() -> None:
    assert [(c.role, c.expires_at) for c in seen_certificates(observation(Component.NTP))] == [
        (TLS, NOW + timedelta(days=1)), (SIGNING, NOW + timedelta(days=2)), (PARTNER, NOW + timedelta(days=3))]
    assert seen_certificates(observation(Component.EO_B2G, eori="LU0000000001")) == []
    plain = observation(Component.ADA_B2G).model_copy(update={
        "cert_expires_at": None, "as4_signing_cert_expires_at": None, "as4_partner_cert_expires_at": None})
    assert seen_certificates(plain) == []


@pytest.mark.parametrize("language", list(Language))
@pytest.mark.parametrize("role", list(CertificateRole))
def test_the_console_says_which_certificate_of_which_channel_expires_on_which_day(
    language: Language, role: CertificateRole
) -> None:
    phrases = PHRASES[language]
    soon = CertificateExpiry(target_id="ntp-web", component=Component.NTP, role=role,
                             expires_at=datetime(2026, 12, 20, 23, 30, tzinfo=UTC), warning_days=30)
    line = certificate_line(soon, phrases)
    assert "2026-12-20" in line and phrases["component_ntp"] in line and "ntp-web" in line
    expired = certificate_line(soon.model_copy(update={"warning_days": 0}), phrases)
    assert expired != line and "2026-12-20" in expired
    expected = {Language.EN: ("Certificate of", "expires on"), Language.FR: ("Le certificat de", "expire le"),
                Language.DE: ("Zertifikat von", "läuft am")}[language]
    assert all(words in line for words in expected)
