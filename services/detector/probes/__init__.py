"""Probes of every kind, behind one :class:`Prober` that times them and never lets a failure escape.

Each probe returns a verdict or raises :class:`ProbeFailure`; the prober bounds it with the target's
timeout (the whole probe: name resolution, connection, TLS, request and answer) and turns the outcome
into a :class:`~services.detector.domain.ProbeResult`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from services.detector.domain import ProbeResult
from services.detector.probes._deadlines import Deadlines
from services.detector.probes._transport import (
    Connector,
    H11Client,
    HttpAnswer,
    HttpClient,
    HttpRequest,
    ProbeFailure,
    TlsContexts,
    failure_from,
)
from services.detector.probes.as4 import probe_as4
from services.detector.probes.domibus import probe_domibus
from services.detector.probes.http import probe_http
from services.detector.probes.tcp import probe_tcp, probe_tls
from services.detector.probes.verdict import Verdict
from services.detector.probes.wssec import CredentialsError, CredentialStore
from services.detector.targets import Target
from shared.resolver import Resolver

__all__ = [
    "Connector",
    "CredentialsError",
    "HttpAnswer",
    "HttpClient",
    "HttpRequest",
    "ProbeFailure",
    "Prober",
    "Resolver",
    "TlsContexts",
    "Verdict",
]

log = logging.getLogger(__name__)


class Prober:
    """Runs the probe of a target. One per detector: it owns what probes share (TLS contexts, DNS cache)."""

    def __init__(self, *, connector: Connector | None = None, http: HttpClient | None = None) -> None:
        self.connector = connector or Connector()
        self.contexts = self.connector.contexts
        self._http = http or H11Client(self.connector)
        self.credentials = CredentialStore()
        self._deadlines = Deadlines()

    def check(self, target: Target) -> None:
        """Fail now if the target's CA bundle or client certificate cannot be loaded (OSError, ssl.SSLError),
        or its AS4 signing key, certificate or trust files (:class:`CredentialsError`)."""
        if target.endpoint.uses_tls or target.tls.cert_file or target.tls.ca_file:
            self.contexts.get(target.tls)
        if target.as4_signing is not None:
            self.credentials.get(target.as4_signing)

    async def probe(self, target: Target) -> ProbeResult:
        """Probe ``target`` once, within its timeout. Never raises, except when cancelled."""
        started = time.perf_counter()
        deadline = self._deadlines.start(target.timeout_s)  # not asyncio.timeout: see _deadlines.py
        try:
            try:
                verdict = await self._run(target)
            finally:
                timed_out = deadline.finish()
        except asyncio.CancelledError:
            if not timed_out:
                raise
            verdict = Verdict(False, "timeout", f"no answer within {target.timeout_s:g}s")
        except ProbeFailure as failure:
            verdict = Verdict(False, failure.reason, failure.detail)
        except TimeoutError:  # from within (the kernel timed a connection out): a timeout all the same
            verdict = Verdict(False, "timeout", f"no answer within {target.timeout_s:g}s")
        except Exception as exc:  # a bug or an unexpected library error must not stop the scheduler
            log.warning("probe of %s failed unexpectedly", target.id, exc_info=True)
            unexpected = failure_from(exc)
            verdict = Verdict(False, unexpected.reason, unexpected.detail)
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        signing_expires_at = verdict.signing_cert_expires_at
        if target.as4_signing is not None and signing_expires_at is None:
            signing_expires_at = self._signing_expiry(target)
        return ProbeResult(
            ok=verdict.ok,
            reason=verdict.reason,
            finished_at=datetime.now(UTC),
            latency_ms=latency_ms,
            detail=verdict.detail,
            cert_expires_at=verdict.cert_expires_at,
            ebms_error=verdict.ebms_error,
            signing_cert_expires_at=signing_expires_at,
            partner_cert_expires_at=verdict.partner_cert_expires_at,
        )

    def _signing_expiry(self, target: Target) -> datetime | None:
        assert target.as4_signing is not None
        try:
            return self.credentials.get(target.as4_signing).expires_at
        except CredentialsError:
            return None

    async def _run(self, target: Target) -> Verdict:
        if target.probe == "as4":
            credentials = self.credentials.get(target.as4_signing) if target.as4_signing is not None else None
            return await probe_as4(target, self._http, now=datetime.now(UTC), credentials=credentials)
        if target.probe == "http":
            return await probe_http(target, self._http)
        if target.probe == "domibus":
            return await probe_domibus(target, self._http)
        if target.probe == "tcp":
            return await probe_tcp(target, self.connector)
        return await probe_tls(target, self.connector)
