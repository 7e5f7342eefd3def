"""Container health check of the luccs-fallback image: exit 0 when the service(s) of this container answer.

It reads the container's command line (``/proc/1/cmdline``: ``luccs-fallback <service> --config FILE``),
loads the same configuration the service loaded (file plus ``LUCCS_*`` environment), and GETs
``/healthz`` (or ``/readyz`` with ``--ready``) on the port of each service it runs, over https when
``[api] tls_cert_file`` is set (presenting that certificate when ``tls_client_ca_file`` asks for one).
``migrate`` has nothing to check. Only the standard library and the project itself are used: the image
has no curl.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

SERVICES = ("detector", "procedure", "notifier")
COMMANDS = (*SERVICES, "all", "migrate")
CONFIG_ENV = "LUCCS_CONFIG"


def parse_command(argv: list[str]) -> tuple[str | None, str | None]:
    """The subcommand and the ``--config`` value of a luccs-fallback command line (either may be None)."""
    command: str | None = None
    config: str | None = None
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            config = next(args, None)
        elif arg.startswith("--config="):
            config = arg.partition("=")[2]
        elif command is None and arg in COMMANDS:
            command = arg
    return command, config


def services_of(command: str | None) -> tuple[str, ...]:
    if command == "all":
        return SERVICES
    if command in SERVICES:
        return (command,)
    return ()


def probe_host(listen_host: str) -> str:
    """Where to reach a server that listens on ``listen_host`` from inside its own container."""
    if listen_host in ("", "0.0.0.0"):  # noqa: S104 - a listen address, not one we bind
        return "127.0.0.1"
    if listen_host == "::":
        return "[::1]"
    return f"[{listen_host}]" if ":" in listen_host else listen_host


def health_urls(command: str | None, config: str | None, *, path: str = "/healthz") -> list[str]:
    """The URLs to check for this command line; raises the configuration's error if it cannot be loaded."""
    return health_plan(command, config, path=path)[0]


def health_plan(
    command: str | None, config: str | None, *, path: str = "/healthz"
) -> tuple[list[str], ssl.SSLContext | None]:
    """The URLs to check for this command line and, for https ports, the TLS context to check them with."""
    names = services_of(command)
    if not names:
        return [], None
    from shared.config import load_settings  # the image's own project: same defaults, same overrides

    settings = load_settings(config)
    host = probe_host(settings.api.host)
    ports = {"detector": settings.detector.port, "procedure": settings.procedure.port,
             "notifier": settings.notifier.port}
    scheme = "https" if settings.api.uses_tls else "http"
    context = None
    if settings.api.uses_tls:
        # The server is this container's own, reached on loopback: what matters is that it answers, not who
        # it is (its certificate names the service, not 127.0.0.1). Our certificate is presented if asked for.
        context = settings.api.client_ssl_context(ca_file=None, ca_setting="")
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return [f"{scheme}://{host}:{ports[name]}{path}" for name in names], context


def check(url: str, *, timeout_s: float = 3.0, context: ssl.SSLContext | None = None) -> str | None:
    """None if ``url`` answers 2xx, else what went wrong."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:  # noqa: S310 - built above
            return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"


def main(argv: list[str]) -> int:
    path = "/readyz" if "--ready" in argv[1:] else "/healthz"
    try:
        cmdline = [a.decode() for a in Path("/proc/1/cmdline").read_bytes().split(b"\0") if a]
    except OSError as exc:
        print(f"healthcheck: cannot read the container's command line: {exc}", file=sys.stderr)
        return 1
    command, config = parse_command(cmdline)
    if command is None:
        print(f"healthcheck: not a luccs-fallback command: {' '.join(cmdline)}", file=sys.stderr)
        return 1
    try:
        urls, context = health_plan(command, config or os.environ.get(CONFIG_ENV), path=path)
    except Exception as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    problems = [f"{url}: {problem}" for url in urls if (problem := check(url, context=context)) is not None]
    for problem in problems:
        print(f"healthcheck: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
