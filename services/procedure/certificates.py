"""Certificate expiry of the national targets, told to the Servicedesk: pure, ``now`` comes in.

The detectors report with each observation the expiry of the certificate a target presented (TLS) and, for
signed AS4 pings, of our own signing certificate and of the partner's receipt-signing one. For a national
target (ADA B2G, NTP: never an EO's endpoint, which is the EO's business) the Servicedesk hears of it:
- a certificate that reaches a warning level (``detector.cert_warning_days``, 30/14/7 days, and 0 once
  expired; the detector's own rule, :func:`~shared.certificates.cert_warning`) raises a
  ``certificate_expiring`` advisory; each closer level raises it again, once: never on every probe, and the
  levels told are kept with the advisory, so a restart or another vantage point tells nothing twice;
- a target presenting another certificate (renewed) clears the advisory of the old one; a renewed one that is
  itself within a warning level raises its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.certificates import cert_warning, cert_warning_crossed
from shared.events import AvailabilityData, CertificateExpiry, CertificateRole, Component

__all__ = ["CertificateChange", "CertificateKey", "SeenCertificate", "certificate_changes", "seen_certificates"]

CertificateKey = tuple[str, CertificateRole]
"""A certificate slot: the target and which of its certificates."""

_NATIONAL = (Component.ADA_B2G, Component.NTP)


@dataclass(frozen=True)
class SeenCertificate:
    target_id: str
    component: Component
    role: CertificateRole
    expires_at: datetime

    @property
    def key(self) -> CertificateKey:
        return self.target_id, self.role


@dataclass(frozen=True)
class CertificateChange:
    """Raise (again, at a closer level) or clear the advisory of one certificate."""

    raise_it: bool
    certificate: CertificateExpiry
    advisory_id: str | None = None
    """The advisory raised before for this certificate (None: a new one)."""


def seen_certificates(seen: AvailabilityData) -> list[SeenCertificate]:
    """The certificates an observation reports, if its target is national (EO endpoints are left out)."""
    if seen.eori is not None or seen.component not in _NATIONAL:
        return []
    found = [(CertificateRole.TLS, seen.cert_expires_at),
             (CertificateRole.AS4_SIGNING, seen.as4_signing_cert_expires_at),
             (CertificateRole.AS4_PARTNER, seen.as4_partner_cert_expires_at)]
    return [SeenCertificate(seen.target_id, seen.component, role, at) for role, at in found if at is not None]


def certificate_changes(
    *, told: Mapping[CertificateKey, tuple[str, CertificateExpiry]], seen: Iterable[SeenCertificate],
    now: datetime, levels: Sequence[int],
) -> list[CertificateChange]:
    """What to tell the Servicedesk about the certificates ``seen``, given the advisories active (``told``:
    per certificate slot, the advisory id and the certificate and level it last told)."""
    current: dict[CertificateKey, tuple[str | None, CertificateExpiry]] = dict(told)
    changes: list[CertificateChange] = []
    for certificate in seen:
        level = cert_warning(certificate.expires_at, now=now, levels=levels)
        advisory_id, known = current.get(certificate.key, (None, None))
        if known is not None and known.expires_at != certificate.expires_at:
            # Another certificate now (renewed): the old one's advisory is done.
            changes.append(CertificateChange(raise_it=False, certificate=known, advisory_id=advisory_id))
            del current[certificate.key]
            advisory_id, known = None, None
        if not cert_warning_crossed(known.warning_days if known is not None else None, level):
            continue
        assert level is not None  # crossed
        told_now = CertificateExpiry(target_id=certificate.target_id, component=certificate.component,
                                     role=certificate.role, expires_at=certificate.expires_at, warning_days=level)
        changes.append(CertificateChange(raise_it=True, certificate=told_now, advisory_id=advisory_id))
        current[certificate.key] = (advisory_id, told_now)
    return changes
