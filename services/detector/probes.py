"""Probes: each returns a ProbeResult and never raises for a failure of the probed system."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx

from services.detector.domain import ProbeResult


async def probe_http(client: httpx.AsyncClient, url: str, *, timeout_s: float) -> ProbeResult:
    """GET ``url``; a 2xx answer within the timeout is up, anything else is down with a reason code."""
    started = time.perf_counter()

    def result(ok: bool, reason: str, detail: str | None = None) -> ProbeResult:
        latency_ms = (time.perf_counter() - started) * 1000
        return ProbeResult(ok, reason, datetime.now(UTC), latency_ms=round(latency_ms, 3), detail=detail)

    try:
        response = await client.get(url, timeout=timeout_s)
    except httpx.ConnectError as exc:
        reason = "dns" if "name or service" in str(exc).lower() else "refused"
        return result(False, reason, str(exc) or type(exc).__name__)
    except httpx.TimeoutException as exc:
        return result(False, "timeout", f"no answer within {timeout_s}s ({type(exc).__name__})")
    except httpx.HTTPError as exc:
        return result(False, "transport_error", f"{type(exc).__name__}: {exc}")
    if 200 <= response.status_code < 300:
        return result(True, "ok", f"HTTP {response.status_code}")
    return result(False, f"http_{response.status_code}", f"HTTP {response.status_code}")
