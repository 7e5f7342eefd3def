"""What the detector probes: configured targets and the AS4 endpoints of registered EOs, resolved once.

A :class:`Target` carries everything a probe needs (its URL, timeouts, thresholds, TLS files, AS4
parties) with the detector-wide defaults already applied, so probing never consults settings again.
Pure: building a target validates it, it never opens a file or a socket.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, urlsplit

from services.detector.domain import Thresholds, default_retry_interval
from shared.config import DetectorSettings, TargetSettings
from shared.config import ProbeKind as ProbeKind  # the one list of probe kinds, re-exported for the detector
from shared.dataclass_pickle import pickled_as_values
from shared.events import Component, EoData

EO_TARGET_PREFIX = "eo:"
DOMIBUS_STATUS_PATH = "/ext/monitoring/application/status"

_DEFAULT_PORTS = {"http": 80, "https": 443, "tls": 443}
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


class InvalidTarget(ValueError):
    """A target that cannot be probed as configured or registered; the text says why."""



@pickled_as_values
@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the trust anchors and the client certificate of a target are (None: system CAs, no client cert)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@pickled_as_values
@dataclass(frozen=True, slots=True)
class Party:
    """One side of an ebMS3 exchange: PartyId, its type, and the role it plays."""

    id: str
    type: str
    role: str


@pickled_as_values
@dataclass(frozen=True, slots=True)
class As4Signing:
    """The files of a signed AS4 ping: our key and certificate, and what the receipt must be signed with
    (the partner's certificate, pinned, or CAs its certificate must chain to). Loaded once by the prober."""

    key_file: str
    cert_file: str | None = None  # None: the certificate is in the PKCS#12 key file
    partner_cert_file: str | None = None
    trust_ca_file: str | None = None
    key_password: str | None = field(default=None, repr=False)


@pickled_as_values
@dataclass(frozen=True, slots=True)
class HttpCheck:
    """What the http probe sends and accepts."""

    method: str = "GET"
    expected_status: frozenset[int] | None = None  # None: any 2xx
    body_contains: str | None = None

    def accepts(self, status: int) -> bool:
        if self.expected_status is None:
            return 200 <= status < 300
        return status in self.expected_status


@pickled_as_values
@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a probe connects: scheme (http, https, tcp or tls), host, port and request path."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def uses_tls(self) -> bool:
        return self.scheme in ("https", "tls")

    @property
    def host_key(self) -> str:
        """The key of per-host connection limits."""
        return f"{self.host}:{self.port}"

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = _DEFAULT_PORTS.get(self.scheme)
        return host if self.port == default else f"{host}:{self.port}"


@pickled_as_values
@dataclass(frozen=True, slots=True)
class Target:
    """A probed target with every default applied. Equal targets need no rescheduling."""

    id: str
    component: Component
    probe: ProbeKind
    url: str
    endpoint: Endpoint
    interval_s: float
    timeout_s: float
    thresholds: Thresholds
    retry_interval_s: float
    """The pace while a change is being confirmed (see :func:`~services.detector.domain.due_after_probe`)."""
    eori: str | None = None
    source: Literal["config", "registry"] = "config"
    http: HttpCheck = HttpCheck()
    tls: TlsFiles = TlsFiles()
    basic_auth: tuple[str, str] | None = None
    sender: Party | None = None
    receiver: Party | None = None
    max_response_bytes: int = 1_048_576
    as4_signing: As4Signing | None = None
    """Set: the as4 probe signs its ping and verifies the receipt (see ``probes/wssec.py``)."""


def parse_endpoint(url: str, probe: ProbeKind) -> Endpoint:
    """Split and check a target URL for ``probe``: http(s) for as4/http/domibus, host:port for tcp/tls."""
    text = url.strip()
    if probe in ("tcp", "tls") and "://" not in text:
        text = f"{probe}://{text}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidTarget(f"invalid URL {url!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    allowed = {"tcp": ("tcp",), "tls": ("tls", "https")}.get(probe, ("http", "https"))
    if scheme not in allowed:
        raise InvalidTarget(f"a {probe} probe needs a {' or '.join(s + '://' for s in allowed)} URL, not {url!r}")
    host = parts.hostname
    if not host:
        raise InvalidTarget(f"no host in URL {url!r}")
    if port is None:
        if scheme not in _DEFAULT_PORTS:
            raise InvalidTarget(f"a {probe} target needs a port: {url!r}")
        port = _DEFAULT_PORTS[scheme]
    if parts.username or parts.password:
        raise InvalidTarget(f"credentials in URL {url!r}: use username/password settings instead")
    # Percent-encoded as the request line needs it; what is already encoded stays as it is.
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        path = f"{path}?{quote(parts.query, safe=_PATH_SAFE + '?')}"
    return Endpoint(scheme="https" if scheme == "tls" else scheme, host=sys.intern(host.lower()), port=port, path=path)


def from_settings(target: TargetSettings, detector: DetectorSettings) -> Target:
    """Resolve a configured target; raise :class:`InvalidTarget` if it cannot be probed."""
    if target.id.startswith(EO_TARGET_PREFIX):
        raise InvalidTarget(f"target id {target.id!r}: the prefix {EO_TARGET_PREFIX!r} is kept for registered EOs")
    if target.component == Component.EO_B2G:
        raise InvalidTarget(f"target {target.id!r}: eo_b2g endpoints come from the EO registry, not the config")
    endpoint = parse_endpoint(target.url, target.probe)
    if target.probe == "domibus" and endpoint.path == "/":
        endpoint = Endpoint(endpoint.scheme, endpoint.host, endpoint.port, DOMIBUS_STATUS_PATH)
    if target.probe == "tls":
        endpoint = Endpoint("tls", endpoint.host, endpoint.port, "/")
    statuses = target.expected_status
    if statuses is not None and any(not 100 <= s <= 599 for s in statuses):
        raise InvalidTarget(f"target {target.id!r}: expected_status must be HTTP statuses (100-599)")
    interval = target.interval_s or detector.interval_s
    retry = target.retry_interval_s or detector.retry_interval_s or default_retry_interval(interval)
    if retry > interval:  # the settings refuse it too; a target built from parts must not slip through
        raise InvalidTarget(f"target {target.id!r}: retry_interval_s ({retry:g}) must not exceed interval_s "
                            f"({interval:g})")
    tls = TlsFiles(
        ca_file=target.ca_file or detector.ca_file,
        cert_file=target.client_cert_file or detector.client_cert_file,
        key_file=target.client_key_file or (None if target.client_cert_file else detector.client_key_file),
    )
    if tls.key_file and not tls.cert_file:
        raise InvalidTarget(f"target {target.id!r}: client_key_file without client_cert_file")
    basic_auth = None
    if target.username is not None:
        basic_auth = (target.username, target.password.get_secret_value() if target.password else "")
    return Target(
        id=target.id,
        component=target.component,
        probe=target.probe,
        url=target.url,
        endpoint=endpoint,
        interval_s=interval,
        # A probe may never outlast its interval, or probes of one target would overlap.
        timeout_s=min(target.timeout_s or detector.timeout_s, interval),
        retry_interval_s=retry,
        thresholds=Thresholds(
            failure=target.failure_threshold or detector.failure_threshold,
            success=target.success_threshold or detector.success_threshold,
            degraded_latency_ms=target.degraded_latency_ms or detector.degraded_latency_ms,
        ),
        http=HttpCheck(
            method=target.method,
            expected_status=frozenset(statuses) if statuses is not None else None,
            body_contains=target.body_contains,
        ),
        tls=tls,
        basic_auth=basic_auth,
        sender=Party(
            id=target.as4_from_party_id or detector.as4_from_party_id,
            type=target.as4_from_party_type or detector.as4_from_party_type,
            role=target.as4_from_role or detector.as4_from_role,
        ),
        receiver=Party(
            id=target.as4_to_party_id or detector.as4_to_party_id,
            type=target.as4_to_party_type or detector.as4_to_party_type,
            role=target.as4_to_role or detector.as4_to_role,
        ),
        max_response_bytes=detector.max_response_bytes,
        as4_signing=_signing(target, detector),
    )


def _signing(target: TargetSettings, detector: DetectorSettings) -> As4Signing | None:
    enabled = target.as4_signing if target.as4_signing is not None else detector.as4_signing
    if not enabled:
        return None
    if target.probe != "as4":
        if target.as4_signing:
            raise InvalidTarget(f"target {target.id!r}: as4_signing applies to as4 probes only")
        return None  # a detector-wide default does not concern http, tcp, tls or domibus targets
    # The receipt's trust comes as a pair: a target naming either replaces the detector's.
    if target.as4_partner_cert_file or target.as4_trust_ca_file:
        partner, ca = target.as4_partner_cert_file, target.as4_trust_ca_file
    else:
        partner, ca = detector.as4_partner_cert_file, detector.as4_trust_ca_file
    key_file = target.as4_key_file or detector.as4_key_file
    if not key_file:
        raise InvalidTarget(f"target {target.id!r}: as4_signing needs as4_key_file (our signing key)")
    if not partner and not ca:
        raise InvalidTarget(f"target {target.id!r}: as4_signing needs as4_partner_cert_file or as4_trust_ca_file "
                            "(what the receipt must be signed with)")
    password = target.as4_key_password or detector.as4_key_password
    return As4Signing(
        key_file=key_file,
        cert_file=target.as4_cert_file or (None if target.as4_key_file else detector.as4_cert_file),
        partner_cert_file=partner,
        trust_ca_file=ca,
        key_password=password.get_secret_value() if password is not None else None,
    )


def eo_signing(detector: DetectorSettings) -> As4Signing | None:
    """How EO endpoints are pinged when ``[detector] as4_signing`` is on: signed only with ``as4_trust_ca_file``
    (a pinned partner certificate names one MSH, not every EO's), else unsigned."""
    if not (detector.as4_signing and detector.as4_key_file and detector.as4_trust_ca_file):
        return None
    password = detector.as4_key_password
    return As4Signing(
        key_file=detector.as4_key_file,
        cert_file=detector.as4_cert_file,
        trust_ca_file=detector.as4_trust_ca_file,
        key_password=password.get_secret_value() if password is not None else None,
    )


def eo_target_id(eori: str) -> str:
    return f"{EO_TARGET_PREFIX}{eori}"


def from_eo(eo: EoData, detector: DetectorSettings) -> Target | None:
    """The AS4 target of a registered EO, or None when it has no endpoint to probe.

    Raises :class:`InvalidTarget` when the registered endpoint is not an http(s) URL.
    """
    if not eo.as4_endpoint:
        return None
    endpoint = parse_endpoint(eo.as4_endpoint, "as4")
    # Every EO target shares the parts that come from the settings (one copy, not 100,000 equal ones).
    thresholds, tls, sender = _eo_defaults(
        detector.failure_threshold, detector.success_threshold, detector.degraded_latency_ms,
        TlsFiles(detector.ca_file, detector.client_cert_file, detector.client_key_file),
        Party(detector.as4_from_party_id, detector.as4_from_party_type, detector.as4_from_role),
    )
    return Target(
        id=eo_target_id(eo.eori),
        component=Component.EO_B2G,
        probe="as4",
        url=eo.as4_endpoint,
        endpoint=endpoint,
        eori=eo.eori,
        source="registry",
        interval_s=detector.interval_s,
        timeout_s=min(detector.timeout_s, detector.interval_s),
        retry_interval_s=detector.retry_interval_s or default_retry_interval(detector.interval_s),
        thresholds=thresholds,
        tls=tls,
        sender=sender,
        receiver=Party(eo.eori, detector.eo_party_id_type, detector.as4_to_role),
        max_response_bytes=detector.max_response_bytes,
        as4_signing=eo_signing(detector),
    )


@functools.lru_cache(maxsize=8)
def _eo_defaults(
    failure: int, success: int, degraded_latency_ms: float | None, tls: TlsFiles, sender: Party
) -> tuple[Thresholds, TlsFiles, Party]:
    return Thresholds(failure=failure, success=success, degraded_latency_ms=degraded_latency_ms), tls, sender
