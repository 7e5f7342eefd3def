"""The edge of every service's HTTP API: request bodies size-limited, and one audit line per action.

Audit lines go to the ``luccs.audit`` logger (JSON, see shared/logging.py), one per request of an
operator, the bureau or an EO (reads of EO data included) and per refused authentication: who (the actor
name the procedure timeline records too), what (method and route), on which procedure or EO, from which
address, and the HTTP status. Tokens, keys and bodies are never logged.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.roles import Role

__all__ = ["ApiEdge", "audit_log"]

audit_log = logging.getLogger("luccs.audit")

_AUDITED = {Role.OPERATOR, Role.BUREAU, Role.EO}
_REFUSED = {401, 403, 429}
_SUBJECTS = ("procedure_id", "eori", "target_id")


class ApiEdge:
    """ASGI middleware: a body over ``max_body_bytes`` is a 413 before the app sees it; every request of an
    audited role, and every refused one, writes an audit line."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, streamed_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.streamed_paths = streamed_paths
        """Paths whose body the route reads incrementally and limits itself (a bulk import): not buffered here."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] in ("POST", "PUT", "PATCH", "DELETE") and scope["path"] not in self.streamed_paths:
            body = await self._read_body(scope, receive)
            if body is None:
                await _too_large(send, self.max_body_bytes)
                return
            receive = _replay(body, receive)
        status: list[int] = []

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            _audit(scope, status[0] if status else 500)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None when it exceeds the limit (by its Content-Length or the bytes sent)."""
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # e.g. http.disconnect

    return replay


async def _too_large(send: Send, limit: int) -> None:
    payload = json.dumps({"detail": f"request body larger than {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


def _audit(scope: Scope, status: int) -> None:
    principal = scope.get("state", {}).get("principal")
    role = getattr(principal, "role", None)
    if role not in _AUDITED and status not in _REFUSED:
        return
    route = scope.get("route")
    client = scope.get("client")
    fields: dict[str, Any] = {
        "actor": getattr(principal, "name", None),
        "role": str(role) if role else None,
        "action": f"{scope['method']} {getattr(route, 'path', scope['path'])}",
        "from": client[0] if client else None,
        "status": status,
    }
    params = scope.get("path_params", {})
    fields |= {name: params[name] for name in _SUBJECTS if name in params}
    fields |= scope.get("state", {}).get("audit", {})
    audit_log.info("audit", extra=fields)
