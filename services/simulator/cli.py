"""``luccs-fallback simulator`` (run the stand-in) and ``luccs-fallback simulator-ctl`` (switch its modes)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from services.simulator.app import ALL, DEFAULT_BASE_PORT, MAX_EOS, Simulator, layout
from services.simulator.behaviour import MODE_HELP, Mode
from services.simulator.receiver import NoticeLog
from services.simulator.server import EndpointError
from shared.logging import bind_service, configure_logging

COMMANDS = ("simulator", "simulator-ctl")
DEFAULT_CONTROL_URL = f"http://127.0.0.1:{DEFAULT_BASE_PORT}"
_NOTICES = "notices"


def _port_override(text: str) -> tuple[str, int]:
    name, sep, port = text.partition("=")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=PORT (e.g. ntp=9202), not {text!r}")
    return name.strip(), int(port)


def _simulator_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="luccs-fallback simulator",
        description="A local LUCCS stand-in: the ADA AS4 MSH, the NTP portal, EO AS4 endpoints and an EO webhook "
        "receiver, each on its own port, with a control API to cause outages.",
        epilog=f"Ports: control = base, ada-as4 = base+1, ntp = base+2, receiver = base+3, eo-1.. = base+10... "
        f"Modes: {', '.join(m.value for m in Mode)}.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help="accepted like the other commands, but not read: the simulator's options are its own")
    parser.add_argument("--host", default="127.0.0.1", help="address every endpoint listens on (default %(default)s)")
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT, help="first port (default %(default)s)")
    parser.add_argument("--eos", type=int, default=3, help=f"simulated EO AS4 endpoints, 0..{MAX_EOS} (default 3)")
    parser.add_argument("--port", action="append", type=_port_override, default=[], metavar="NAME=PORT",
                        help="put one endpoint (or 'control') on another port; repeatable")
    parser.add_argument("--keep-notices", type=int, default=500, help="notices kept for GET /receiver/notices")
    parser.add_argument("--notices-file", type=Path, help="also append every notice (a JSON line) to this file")
    parser.add_argument("--log-level", default="INFO", help="log level (default %(default)s)")
    return parser


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_simulator(argv: Sequence[str]) -> int:
    """Run the simulator until Ctrl-C or SIGTERM."""
    args = _simulator_parser().parse_args(argv)
    try:
        plan = layout(host=args.host, base_port=args.base_port, eos=args.eos, ports=dict(args.port))
    except ValueError as exc:
        print(f"luccs-fallback simulator: {exc}", file=sys.stderr)
        return 2
    if args.keep_notices < 1:
        print("luccs-fallback simulator: --keep-notices must be at least 1", file=sys.stderr)
        return 2
    configure_logging(level=args.log_level)
    bind_service("simulator")
    simulator = Simulator(plan=plan, notices=NoticeLog(keep=args.keep_notices, path=args.notices_file))
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        asyncio.run(simulator.serve())
    except KeyboardInterrupt:
        pass
    except EndpointError as exc:
        print(f"luccs-fallback simulator: {exc}", file=sys.stderr)
        return 1
    return 0


def _ctl_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="luccs-fallback simulator-ctl",
        description="Show the simulator's endpoints, switch one to a mode, or list the notices its receiver got.",
        epilog="Modes: " + "; ".join(f"{m.value}: {text}" for m, text in MODE_HELP.items()),
    )
    parser.add_argument("endpoint", nargs="?",
                        help=f"an endpoint name (ada-as4, ntp, receiver, eo-1, ...), '{ALL}', or '{_NOTICES}'")
    parser.add_argument("mode", nargs="?", choices=[m.value for m in Mode], help="the mode to switch to")
    parser.add_argument("--url", default=DEFAULT_CONTROL_URL, help="the control API (default %(default)s)")
    return parser


def _table(endpoints: list[dict[str, Any]]) -> str:
    rows = [("ENDPOINT", "KIND", "MODE", "URL")]
    rows += [(e["name"], e["kind"], e["mode"], e["url"]) for e in endpoints]
    widths = [max(len(str(r[i])) for r in rows) for i in range(3)]
    return "\n".join(
        "  ".join(str(cell).ljust(widths[i]) if i < 3 else str(cell) for i, cell in enumerate(row)) for row in rows
    )


def control(argv: Sequence[str]) -> int:
    """``simulator-ctl``: talk to a running simulator's control API."""
    parser = _ctl_parser()
    args = parser.parse_args(argv)
    base = args.url.rstrip("/")
    try:
        with httpx.Client(timeout=10) as client:
            if args.endpoint == _NOTICES:
                for item in client.get(f"{base}/receiver/notices").raise_for_status().json()["items"]:
                    print(json.dumps(item, ensure_ascii=False))
                return 0
            if args.endpoint is None:
                print(_table(client.get(f"{base}/control").raise_for_status().json()["endpoints"]))
                return 0
            if args.mode is None:
                answer = client.get(f"{base}/control/{args.endpoint}")
            else:
                answer = client.post(f"{base}/control/{args.endpoint}/{args.mode}")
            if answer.status_code >= 400:
                print(f"simulator-ctl: {answer.json().get('detail', answer.text)}", file=sys.stderr)
                return 1
            found = answer.json()
            print(_table(found.get("endpoints", [found])))
            return 0
    except httpx.HTTPError as exc:
        print(f"simulator-ctl: cannot reach the simulator at {base}: {exc}", file=sys.stderr)
        return 1


def main(command: str, argv: Sequence[str]) -> int:
    """Entry point of both commands (``command`` is one of :data:`COMMANDS`)."""
    return run_simulator(argv) if command == "simulator" else control(argv)
