"""The roles table (shared.roles) applied to HTTP requests: one FastAPI dependency for every route of a
service, the bearer schemes in its OpenAPI document, and the brute-force limit."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.routing import APIRoute

from shared.config import ApiSettings
from shared.edge import ApiEdge
from shared.errors import document_errors, install_error_handlers
from shared.roles import (
    ANONYMOUS,
    ROUTES,
    FailureLimiter,
    Principal,
    Role,
    Rule,
    Service,
    StaffToken,
    parse_tokens,
    sha256,
)

__all__ = ["Caller", "EoKeyResolver", "Guard", "authorize", "build_guard", "install_guard", "refuse"]


EoKeyResolver = Callable[[str], Awaitable[str | None]]
"""The EORI an EO API key belongs to, or None (each service looks it up in its copy of the registry)."""


class Guard:
    """Decides each request of one service from :data:`ROUTES`."""

    def __init__(
        self,
        *,
        service: Service,
        tokens: Iterable[StaffToken],
        reads_open: bool,
        eo_keys: EoKeyResolver | None,
        limiter: FailureLimiter,
    ) -> None:
        self.service = service
        self.rules = ROUTES[service]
        self._tokens = list(tokens)
        self.reads_open = reads_open
        self._eo_keys = eo_keys
        self.limiter = limiter

    def rule(self, method: str, path: str) -> Rule | None:
        return self.rules.get(("GET" if method == "HEAD" else method, path))

    async def check(self, request: Request) -> Principal:
        route = request.scope.get("route")
        rule = self.rule(request.method, getattr(route, "path", ""))
        if rule is None:  # fail closed; install_guard makes this unreachable for the app's own routes
            raise HTTPException(403, "this route has no entry in the roles table")
        header = request.headers.get("Authorization")
        if rule.anonymous == "always":  # public: credentials are neither needed nor looked at
            request.state.principal = ANONYMOUS
            return ANONYMOUS
        if header is None:
            if rule.anonymous == "if_reads_open" and self.reads_open:
                request.state.principal = ANONYMOUS
                return ANONYMOUS
            raise _unauthorized()
        address = request.client.host if request.client else "unknown"
        wait = self.limiter.retry_after(address)
        if wait is not None:
            raise HTTPException(429, "too many failed authentications from this address: wait and retry",
                                headers={"Retry-After": str(wait)})
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized()
        principal = await self._authenticate(token)
        if principal is None:
            self.limiter.failed(address)
            raise HTTPException(403, "unknown token")
        if principal.role not in rule.roles:
            raise HTTPException(403, f"the {principal.role} role may not call this route")
        request.state.principal = principal
        return principal

    async def _authenticate(self, token: str) -> Principal | None:
        digest = sha256(token)
        found: StaffToken | None = None
        for candidate in self._tokens:  # every entry compared, in constant time each
            if hmac.compare_digest(candidate.digest, digest) and found is None:
                found = candidate
        if found is not None:
            return Principal(found.role, found.name)
        if self._eo_keys is not None:
            eori = await self._eo_keys(token)
            if eori is not None:
                return Principal(Role.EO, f"eo:{eori}", eori)
        return None


def _unauthorized() -> HTTPException:
    return HTTPException(401, "missing credentials: send 'Authorization: Bearer <token>'",
                         headers={"WWW-Authenticate": "Bearer"})


async def authorize(request: Request) -> Principal:
    """The caller of this request, as allowed by the roles table (401, 403 or 429 otherwise)."""
    guard: Guard = request.app.state.guard
    return await guard.check(request)


Caller = Annotated[Principal, Depends(authorize)]


def install_guard(app: FastAPI, guard: Guard, *, max_body_bytes: int,
                  streamed_paths: frozenset[str] = frozenset()) -> None:
    """Attach ``guard`` to an app built with ``dependencies=[Depends(authorize)]`` (raise RuntimeError when
    one of its routes has no entry in the table or is not guarded), declare the bearer schemes and the
    error answers in its OpenAPI, make every error an :class:`shared.errors.ApiError`, and put the edge
    (body size limit, audit lines) in front of it. ``streamed_paths``: routes that
    read their body incrementally and enforce a limit of their own (the edge does not buffer them)."""
    app.state.guard = guard
    install_error_handlers(app)
    app.add_middleware(ApiEdge, max_body_bytes=max_body_bytes, streamed_paths=streamed_paths)
    missing = [f"{m} {r.path}" for r in app.routes if isinstance(r, APIRoute) for m in sorted(r.methods or ())
               if guard.rule(m, r.path) is None]
    if missing:
        raise RuntimeError(f"{guard.service}: routes without an entry in shared.auth.ROUTES: {', '.join(missing)}")
    unguarded = [r.path for r in app.routes if isinstance(r, APIRoute)
                 if not any(d.call is authorize for d in r.dependant.dependencies)]
    if unguarded:
        raise RuntimeError(f"{guard.service}: routes not guarded by shared.auth.authorize: {', '.join(unguarded)}")
    _document_security(app, guard)


_SCHEMES = {
    "staffToken": {"type": "http", "scheme": "bearer",
                   "description": "A viewer, operator or bureau token from [api] viewer_tokens, operator_tokens, "
                                  "bureau_tokens."},
    "eoApiKey": {"type": "http", "scheme": "bearer", "bearerFormat": "luccs_eo_...",
                 "description": "An EO's own API key (issued by POST /api/v1/eos and /api/v1/eos/{eori}/api-key)."},
}


def _document_security(app: FastAPI, guard: Guard) -> None:
    """OpenAPI: both bearer schemes (so /docs has "Authorize"), per operation what the table says, and the
    error answers (:func:`shared.errors.document_errors`)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = build()
        spec.setdefault("components", {})["securitySchemes"] = _SCHEMES
        for path, operations in spec.get("paths", {}).items():
            for method, operation in operations.items():
                rule = guard.rule(method.upper(), path)
                if rule is None:
                    continue
                security: list[dict[str, list[str]]] = []
                if rule.anonymous == "always" or (rule.anonymous == "if_reads_open" and guard.reads_open):
                    security.append({})
                if rule.roles - {Role.EO}:
                    security.append({"staffToken": []})
                if Role.EO in rule.roles:
                    security.append({"eoApiKey": []})
                operation["security"] = security
                roles = ", ".join(sorted(r.value for r in rule.roles))
                operation["description"] = (operation.get("description", "") + f"\n\nRoles: {roles}.").strip()
        document_errors(spec, needs_token=lambda method, path: _needs_token(guard.rule(method.upper(), path)))
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def _needs_token(rule: Rule | None) -> bool:
    return rule is None or rule.anonymous != "always"


def build_guard(
    *, service: Service, api: ApiSettings, eo_keys: EoKeyResolver | None = None,
    clock: Callable[[], float] | None = None,
) -> Guard:
    """The guard of one service from ``[api]``: its tokens by role, whether reads are open, the limiter."""
    tokens = [t for role, entries in api.token_entries().items() for t in parse_tokens(entries, role)]
    limiter = FailureLimiter(limit=api.auth_failure_limit, window_s=api.auth_failure_window_s)
    if clock is not None:
        limiter.clock = clock
    return Guard(service=service, tokens=tokens, reads_open=not api.read_requires_token, eo_keys=eo_keys,
                 limiter=limiter)


def refuse(principal: Principal, what: str) -> HTTPException:
    """401 for a caller without credentials (a token would help), else 403 saying what it may not do."""
    if principal.role == Role.ANONYMOUS:
        return _unauthorized()
    return HTTPException(403, f"the {principal.role} role{' of ' + principal.eori if principal.eori else ''} "
                              f"may not {what}")
