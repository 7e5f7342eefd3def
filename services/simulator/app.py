"""The simulator as a whole: its endpoints, their ports, the receiver's log and the control server.

``Simulator`` is the composition root; :meth:`Simulator.serve` runs it until cancelled or signalled.
Nothing happens at import time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import uvicorn

from services.simulator.behaviour import Kind, Mode, Request
from services.simulator.receiver import NoticeLog, notice_of
from services.simulator.server import EndpointError, EndpointSpec, SimulatedEndpoint

log = logging.getLogger("luccs_fallback.simulator")

DEFAULT_BASE_PORT = 9100
ADA_AS4 = "ada-as4"
NTP = "ntp"
RECEIVER = "receiver"
ALL = "all"
AS4_PATH = "/as4"
MAX_EOS = 50


@dataclass(frozen=True)
class Layout:
    """Where everything listens: the control server and each simulated endpoint."""

    host: str
    control_port: int
    endpoints: tuple[EndpointSpec, ...]

    @property
    def control_url(self) -> str:
        return f"http://{self.host}:{self.control_port}"

    def url(self, name: str) -> str:
        """The URL of the endpoint called ``name``; raises UnknownEndpoint."""
        for spec in self.endpoints:
            if spec.name == name:
                return spec.url
        raise UnknownEndpoint(f"no endpoint {name!r}")


def eo_name(index: int) -> str:
    """The name of the ``index``-th (1-based) simulated EO AS4 endpoint."""
    return f"eo-{index}"


def layout(
    *, host: str = "127.0.0.1", base_port: int = DEFAULT_BASE_PORT, eos: int = 3, ports: dict[str, int] | None = None
) -> Layout:
    """The default port plan: control = base, ada-as4 = base+1, ntp = base+2, receiver = base+3,
    eo-1.. = base+10... ``ports`` overrides single ports by endpoint name (``"control"`` included)."""
    if not 0 <= eos <= MAX_EOS:
        raise ValueError(f"between 0 and {MAX_EOS} simulated EO endpoints, not {eos}")
    chosen = {"control": base_port, ADA_AS4: base_port + 1, NTP: base_port + 2, RECEIVER: base_port + 3}
    chosen |= {eo_name(i): base_port + 9 + i for i in range(1, eos + 1)}
    unknown = set(ports or {}) - set(chosen)
    if unknown:
        raise ValueError(f"no such endpoint: {', '.join(sorted(unknown))}")
    chosen |= ports or {}
    for name, port in chosen.items():
        if not 1 <= port <= 65535:
            raise ValueError(f"port of {name} out of range: {port}")
    if len(set(chosen.values())) != len(chosen):
        raise ValueError("two endpoints would share a port")
    specs = [
        EndpointSpec(ADA_AS4, Kind.AS4, host, chosen[ADA_AS4], AS4_PATH),
        EndpointSpec(NTP, Kind.PORTAL, host, chosen[NTP], "/"),
        EndpointSpec(RECEIVER, Kind.RECEIVER, host, chosen[RECEIVER], "/"),
        *(EndpointSpec(eo_name(i), Kind.AS4, host, chosen[eo_name(i)], AS4_PATH) for i in range(1, eos + 1)),
    ]
    return Layout(host=host, control_port=chosen["control"], endpoints=tuple(specs))


def _utc_now() -> datetime:
    return datetime.now(UTC)


class UnknownEndpoint(LookupError):
    """No simulated endpoint has that name."""


@dataclass
class Simulator:
    """The simulated LUCCS: every endpoint of ``plan``, the receiver's notices, and the control server."""

    plan: Layout
    notices: NoticeLog
    clock: Callable[[], datetime] = field(default=_utc_now)
    endpoints: dict[str, SimulatedEndpoint] = field(init=False)
    _server: uvicorn.Server | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.endpoints = {
            spec.name: SimulatedEndpoint(
                spec, observer=self._record if spec.kind is Kind.RECEIVER else None, clock=self.clock
            )
            for spec in self.plan.endpoints
        }

    def _record(self, request: Request, status: int | None) -> None:
        if request.method == "POST":
            self.notices.record(notice_of(request, status=status, now=self.clock()))

    def endpoint(self, name: str) -> SimulatedEndpoint:
        """The endpoint called ``name``; raises UnknownEndpoint."""
        try:
            return self.endpoints[name]
        except KeyError:
            raise UnknownEndpoint(f"no endpoint {name!r}; there are: {', '.join(self.endpoints)}") from None

    async def set_mode(self, name: str, mode: Mode) -> list[SimulatedEndpoint]:
        """Switch one endpoint (or ``all``) to ``mode``; raises UnknownEndpoint or EndpointError."""
        chosen = list(self.endpoints.values()) if name == ALL else [self.endpoint(name)]
        for endpoint in chosen:
            await endpoint.set_mode(mode)
        return chosen

    def view(self) -> dict[str, object]:
        """Every endpoint with its URL and mode, for the control API."""
        return {
            "control": self.plan.control_url,
            "endpoints": [e.view() for e in self.endpoints.values()],
            "notices_received": self.notices.total,
        }

    async def start(self) -> None:
        """Open every endpoint's listening socket; raises EndpointError if a port is taken."""
        try:
            for endpoint in self.endpoints.values():
                await endpoint.start()
        except EndpointError:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close every endpoint."""
        for endpoint in self.endpoints.values():
            await endpoint.stop()

    async def serve(self) -> None:
        """Open the endpoints and run the control server until it is told to exit (signal or :meth:`exit`)."""
        from services.simulator.control import create_control_app

        await self.start()
        config = uvicorn.Config(
            create_control_app(self), host=self.plan.host, port=self.plan.control_port,
            log_config=None, access_log=False, lifespan="off",
        )
        self._server = uvicorn.Server(config)
        try:
            for spec in self.plan.endpoints:
                log.info("simulating %s (%s) at %s", spec.name, spec.kind.value, spec.url)
            log.info("control API at %s/control (docs at %s/docs)", self.plan.control_url, self.plan.control_url)
            await self._server.serve()
            if not self._server.started:
                raise EndpointError(f"control server: cannot listen on {self.plan.host}:{self.plan.control_port}")
        finally:
            await self.stop()

    @property
    def started(self) -> bool:
        """Whether the control server answers (the endpoints are open before it starts)."""
        return self._server is not None and self._server.started

    def exit(self) -> None:
        """Ask :meth:`serve` to return."""
        if self._server is not None:
            self._server.should_exit = True
