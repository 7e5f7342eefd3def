"""The notifier's delivery counts shown on the status page, read over http or https (``procedure.notifier_url``)."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from shared.config import ConfigError, Settings

__all__ = ["NotifierSummary", "notifier_summary"]


class NotifierSummary:
    """Reads the counts of the notifier's latest deliveries by status (no EO data) for the status page."""

    def __init__(self, *, url: str, token: str | None, verify: ssl.SSLContext | bool = True) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._verify = verify

    async def read(self) -> dict[str, Any]:
        """``{"counts": {status: n}, "total": n}``, or ``{"error": ...}`` when the notifier cannot be asked."""
        try:
            async with httpx.AsyncClient(timeout=2, headers=self._headers, verify=self._verify) as client:
                response = await client.get(f"{self.url}/api/v1/deliveries/summary", params={"limit": 500})
                response.raise_for_status()
                summary = response.json()
                counts = {str(status): int(n) for status, n in summary["counts"].items()}
                total = int(summary["total"])
        except (httpx.HTTPError, ssl.SSLError, ValueError, KeyError, TypeError, AttributeError):
            return {"error": f"the notifier at {self.url} did not answer"}
        return {"counts": counts, "total": total}


def notifier_summary(settings: Settings) -> NotifierSummary | None:
    """The reader of ``procedure.notifier_url`` (None when unset). An https URL is read with
    ``procedure.notifier_ca_file``; a plain http one while ``[api] tls_cert_file`` puts this configuration's
    services (the notifier among them) on https is refused: it could only fail."""
    url = settings.procedure.notifier_url
    if not url:
        return None
    if settings.api.uses_tls and url.lower().startswith("http://"):
        raise ConfigError(f"procedure.notifier_url {url} is plain http but api.tls_cert_file makes the notifier "
                          "serve https: give its https:// URL (and procedure.notifier_ca_file for a private CA)")
    token = settings.procedure.notifier_token
    verify = settings.notifier_ssl_context() if url.lower().startswith("https://") else True
    return NotifierSummary(url=url, token=token.get_secret_value() if token else None, verify=verify)
