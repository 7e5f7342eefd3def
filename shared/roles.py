"""Who may call what: the roles, their tokens, and ONE table deciding every route of every service.

Roles (``[api]`` in the configuration; EO API keys are issued by the procedure service's registry):

- ``viewer``   reads the status, national procedures and (the status page); never EO data.
- ``operator`` the Servicedesk eDouane: everything (declare, confirm, close, notes, the EO registry).
- ``bureau``   the Bureau de recette Douanes: reads everything, EO data included; may broadcast.
- ``eo``       an EO's own API key: its own registry record, its own scenario-1 procedures, its own
               deliveries, its own reports; national procedures and the status like a viewer.

``read_requires_token = false`` opens only the :data:`NATIONAL` routes to callers without a token, and
then only their national part: EO data (the registry, scenario-1 procedures, deliveries, EO endpoints in
the status and the stream) always needs a role allowed to read it.

A token entry in the configuration is ``[<name>:]<secret>``; ``<secret>`` is the token itself or
``sha256:<64 hex digits>`` (the SHA-256 of the token, so the configuration holds no usable token).
The name (``[A-Za-z0-9._@-]``, at most 64) is what the audit log and the procedure timeline record as
the actor, e.g. ``operator:alice``; without one, the first 8 hex digits of the token's SHA-256. So a
plain token may not contain ``:`` (a colon always ends a name): the parsing has one reading only.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from pydantic import SecretStr

__all__ = [
    "ANONYMOUS", "BROADCAST", "EO_DATA", "EO_SELF", "NATIONAL", "OPERATE", "PUBLIC", "ROUTES",
    "FailureLimiter", "Principal", "Role", "Rule", "Service", "StaffToken", "parse_token", "parse_tokens",
]

class Role(StrEnum):
    ANONYMOUS = "anonymous"
    VIEWER = "viewer"
    OPERATOR = "operator"
    BUREAU = "bureau"
    EO = "eo"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a role, the actor name recorded for it, and the EORI of an EO key."""

    role: Role
    name: str
    eori: str | None = None

    def may_read_eo(self, eori: str | None) -> bool:
        """Whether this caller may see data about ``eori`` (None: national data, which every reader sees)."""
        if eori is None:
            return True
        return self.role in (Role.OPERATOR, Role.BUREAU) or (self.role == Role.EO and self.eori == eori)

    @property
    def reads_every_eo(self) -> bool:
        return self.role in (Role.OPERATOR, Role.BUREAU)


ANONYMOUS = Principal(Role.ANONYMOUS, "anonymous")


@dataclass(frozen=True)
class Rule:
    """Who may call a route. ``anonymous``: ``always`` (public), ``if_reads_open`` (``read_requires_token =
    false``) or ``never``."""

    name: str
    roles: frozenset[Role]
    anonymous: Literal["always", "if_reads_open", "never"] = "never"


_ALL = frozenset({Role.VIEWER, Role.OPERATOR, Role.BUREAU, Role.EO})
PUBLIC = Rule("public", _ALL, "always")
NATIONAL = Rule("national", _ALL, "if_reads_open")  # EO data in the answer only for who may read it
EO_DATA = Rule("eo_data", frozenset({Role.OPERATOR, Role.BUREAU, Role.EO}))  # an EO: its own only
EO_OVERVIEW = Rule("eo_overview", frozenset({Role.OPERATOR, Role.BUREAU}))  # data of many EOs at once
OPERATE = Rule("operate", frozenset({Role.OPERATOR}))
EO_SELF = Rule("eo_self", frozenset({Role.EO}))  # an EO speaking for itself
BROADCAST = Rule("broadcast", frozenset({Role.OPERATOR, Role.BUREAU}))

Service = Literal["procedure", "notifier", "detector"]
RouteKey = tuple[str, str]

_OPS: dict[RouteKey, Rule] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
}

ROUTES: Mapping[Service, Mapping[RouteKey, Rule]] = {
    "procedure": _OPS | {
        ("GET", "/"): PUBLIC,  # the console's shell: its live part only when reads are open (else /console/live)
        ("GET", "/console/live"): NATIONAL,  # the console's live part, for whoever calls it (EO data as allowed)
        ("GET", "/public"): PUBLIC,  # the EOs' page: national facts only, never evidence, reasons or EO data
        ("GET", "/public/feed.atom"): PUBLIC,
        ("GET", "/api/v1/status"): NATIONAL,
        ("GET", "/api/v1/procedures"): NATIONAL,
        ("GET", "/api/v1/procedures/{procedure_id}"): NATIONAL,
        ("GET", "/api/v1/stream"): NATIONAL,
        ("GET", "/api/v1/history"): NATIONAL,
        ("GET", "/api/v1/outages"): NATIONAL,
        ("GET", "/api/v1/history/latency"): NATIONAL,
        ("GET", "/api/v1/history/procedures"): NATIONAL,  # scenario-1 figures only for who reads every EO
        ("GET", "/api/v1/procedures/{procedure_id}/fanout"): NATIONAL,  # counts only; scenario 1: EO_DATA readers
        ("POST", "/api/v1/procedures"): OPERATE,
        ("POST", "/api/v1/procedures/{procedure_id}/confirm"): OPERATE,
        ("POST", "/api/v1/procedures/{procedure_id}/close"): OPERATE,
        ("POST", "/api/v1/procedures/{procedure_id}/notes"): OPERATE,
        ("POST", "/api/v1/procedures/{procedure_id}/broadcasts"): BROADCAST,
        ("POST", "/api/v1/maintenances"): OPERATE,
        ("GET", "/api/v1/maintenances"): NATIONAL,
        ("GET", "/api/v1/maintenances.ics"): NATIONAL,
        ("GET", "/api/v1/maintenances/{maintenance_id}"): NATIONAL,
        ("PATCH", "/api/v1/maintenances/{maintenance_id}"): OPERATE,
        ("POST", "/api/v1/maintenances/{maintenance_id}/cancel"): OPERATE,
        ("POST", "/api/v1/eo-reports"): EO_SELF,
        ("GET", "/api/v1/eos"): EO_DATA,
        ("GET", "/api/v1/eos/{eori}"): EO_DATA,
        ("POST", "/api/v1/eos"): OPERATE,
        ("PATCH", "/api/v1/eos/{eori}"): OPERATE,
        ("DELETE", "/api/v1/eos/{eori}"): OPERATE,
        ("POST", "/api/v1/eos/{eori}/api-key"): OPERATE,
        ("POST", "/api/v1/eos:import"): OPERATE,
        ("GET", "/api/v1/eos:export"): EO_OVERVIEW,
    },
    "notifier": _OPS | {
        ("GET", "/api/v1/deliveries"): EO_DATA,
        ("GET", "/api/v1/deliveries/summary"): NATIONAL,
        ("GET", "/api/v1/procedures/{procedure_id}/reach"): EO_OVERVIEW,  # names the EOs not reached
    },
    "detector": _OPS | {
        ("GET", "/api/v1/targets"): NATIONAL,
        ("GET", "/api/v1/targets/{target_id}"): NATIONAL,
    },
}
"""THE table: every API route of every service and who may call it. A route missing here is refused
(and the app does not build: :func:`install_guard` checks)."""


# ---- tokens -------------------------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


@dataclass(frozen=True)
class StaffToken:
    """One configured token of a role: the SHA-256 it must hash to and the actor name it stands for."""

    role: Role
    digest: bytes
    name: str


def sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_token(entry: str, role: Role) -> StaffToken:
    """Parse ``[<name>:]<token>`` or ``[<name>:]sha256:<hex>``; raise ValueError saying what is wrong
    (never quoting the token)."""
    entry = entry.strip()
    name: str | None = None
    secret = entry
    if not _HASHED.fullmatch(entry) and ":" in entry:
        name, _, secret = entry.partition(":")
        if not _NAME.fullmatch(name) or name == "sha256":
            raise ValueError(f"a {role} token entry's name (before the first ':') must be 1-64 of A-Z a-z 0-9 . _ @ - "
                             "and not 'sha256' (sha256:<hex> is a token's hash; it takes 64 hex digits)")
    hashed = _HASHED.fullmatch(secret)
    if hashed:
        digest = bytes.fromhex(hashed.group(1))
    else:
        if not secret or ":" in secret or any(c.isspace() for c in secret):
            raise ValueError(f"a {role} token must be non-empty, without ':' or spaces "
                             "(entries are [name:]token or [name:]sha256:<64 hex digits>)")
        digest = sha256(secret)
    return StaffToken(role=role, digest=digest, name=f"{role}:{name or digest.hex()[:8]}")


def parse_tokens(entries: Iterable[SecretStr], role: Role) -> list[StaffToken]:
    return [parse_token(e.get_secret_value(), role) for e in entries]


# ---- brute force ------------------------------------------------------------------------------------


@dataclass
class FailureLimiter:
    """Failed authentications per client address: after ``limit`` in a window of ``window_s`` the address
    is blocked until that window ends. ``clock`` is injected (monotonic seconds)."""

    limit: int
    window_s: float
    clock: Callable[[], float] = time.monotonic
    _windows: dict[str, tuple[float, int]] = field(default_factory=dict)

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or None when it is not blocked."""
        started, failures = self._windows.get(address, (0.0, 0))
        remaining = started + self.window_s - self.clock()
        if failures >= self.limit and remaining > 0:
            return max(1, math.ceil(remaining))
        return None

    def failed(self, address: str) -> None:
        now = self.clock()
        if len(self._windows) > 10_000:  # bounded memory: forget windows that are over
            self._windows = {a: w for a, w in self._windows.items() if w[0] + self.window_s > now}
        started, failures = self._windows.get(address, (now, 0))
        if started + self.window_s <= now:
            started, failures = now, 0
        self._windows[address] = (started, failures + 1)


