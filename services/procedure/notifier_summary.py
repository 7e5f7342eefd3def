"""What the procedure service reads from the notifier, over http or https (``procedure.notifier_url``): the
delivery counts of the status page, and a procedure's reach and failing deliveries for the console's fan-out
progress and the procedure statistics."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from shared.config import ConfigError, Settings

__all__ = ["NotifierSummary", "NotifierUnavailable", "notifier_summary"]

_FAILURES = (httpx.HTTPError, ssl.SSLError, ValueError, KeyError, TypeError, AttributeError)


class NotifierUnavailable(Exception):
    """The notifier did not answer, or not as expected (the message says which, in words)."""


class NotifierSummary:
    """Reads the notifier for the status page and the console (counts and EORIs it uses, never shown as such
    to a reader who may not see them)."""

    def __init__(self, *, url: str, token: str | None, verify: ssl.SSLContext | bool = True,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._verify = verify
        self._transport = transport  # tests: a stand-in notifier

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=2, headers=self._headers, verify=self._verify, transport=self._transport)

    async def read(self) -> dict[str, Any]:
        """``{"counts": {status: n}, "total": n}``, or ``{"error": ...}`` when the notifier cannot be asked."""
        try:
            async with self._client() as client:
                response = await client.get(f"{self.url}/api/v1/deliveries/summary", params={"limit": 500})
                response.raise_for_status()
                summary = response.json()
                counts = {str(status): int(n) for status, n in summary["counts"].items()}
                total = int(summary["total"])
        except _FAILURES:
            return {"error": f"the notifier at {self.url} did not answer"}
        return {"counts": counts, "total": total}

    async def reach(self, procedure_id: str, *, client: httpx.AsyncClient | None = None) -> dict[str, Any] | None:
        """The notifier's ``/api/v1/procedures/{id}/reach``; None when it never heard of the procedure."""
        async with self._maybe(client) as using:
            try:
                response = await using.get(f"{self.url}/api/v1/procedures/{procedure_id}/reach")
                if response.status_code == 404:
                    return None
                response.raise_for_status()
                reach: dict[str, Any] = response.json()
                int(reach["concerned"]), int(reach["reached"]), list(reach["unreached"])
            except httpx.HTTPStatusError as exc:
                raise NotifierUnavailable(f"the notifier at {self.url} answered {exc.response.status_code} "
                                          "to the reach query (procedure.notifier_token needs an operator or "
                                          "bureau token there)") from exc
            except _FAILURES as exc:
                raise NotifierUnavailable(f"the notifier at {self.url} did not answer") from exc
        return reach

    async def failing_eos(self, procedure_id: str, status: str, *, limit: int = 1000,
                          client: httpx.AsyncClient | None = None) -> tuple[set[str], bool]:
        """The EORIs with a delivery of the procedure in ``status`` (retrying or dead) among its latest
        ``limit`` such deliveries, and whether that was all of them."""
        async with self._maybe(client) as using:
            try:
                response = await using.get(f"{self.url}/api/v1/deliveries",
                                           params={"procedure_id": procedure_id, "status": status, "limit": limit})
                response.raise_for_status()
                page = response.json()
                eoris = {str(item["eori"]) for item in page["items"] if item.get("eori")}
            except _FAILURES as exc:
                raise NotifierUnavailable(f"the notifier at {self.url} did not list the deliveries") from exc
        return eoris, page.get("next") is None

    def _maybe(self, client: httpx.AsyncClient | None) -> httpx.AsyncClient | _Borrowed:
        return _Borrowed(client) if client is not None else self._client()

    def client(self) -> httpx.AsyncClient:
        """A client for several reads in a row (close it, e.g. ``async with``)."""
        return self._client()


class _Borrowed:
    """A caller's client, used without closing it."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def __aenter__(self) -> httpx.AsyncClient:
        return self._client

    async def __aexit__(self, *_: object) -> None:
        return None


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
