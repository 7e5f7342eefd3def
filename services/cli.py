"""The ``luccs-fallback`` command: run one service, or all of them in one process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from fastapi import FastAPI

from shared.config import CONFIG_ENV, ConfigError, Settings, load_settings
from shared.http import serve
from shared.logging import configure_logging

SERVICES = ("detector", "procedure", "notifier")
SIMULATOR_COMMANDS = ("simulator", "simulator-ctl")
log = logging.getLogger("luccs_fallback")


def _app(name: str, settings: Settings) -> tuple[FastAPI, int]:
    # Imported here so that running one service does not import the others.
    if name == "detector":
        from services.detector.app import create_app as detector_app

        return detector_app(settings), settings.detector.port
    if name == "procedure":
        from services.procedure.app import create_app as procedure_app

        return procedure_app(settings), settings.procedure.port
    from services.notifier.app import create_app as notifier_app

    return notifier_app(settings), settings.notifier.port


async def _run(names: Sequence[str], settings: Settings) -> None:
    apps = [_app(name, settings) for name in names]
    async with asyncio.TaskGroup() as group:
        for app, port in apps:
            group.create_task(serve(app, host=settings.api.host, port=port))


def _migrate(settings: Settings) -> int:
    from sqlalchemy.engine import make_url

    from services.procedure.migrate import upgrade
    from shared.db import make_engine

    async def run() -> None:
        engine = make_engine(settings.database_url("procedure"))
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())
    where = make_url(settings.database_url("procedure")).render_as_string(hide_password=True)
    print(f"procedure database is up to date ({where})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in SIMULATOR_COMMANDS:
        # The simulator has options of its own and reads no Settings.
        from services.simulator.cli import main as simulator_main

        return simulator_main(arguments[0], arguments[1:])
    parser = argparse.ArgumentParser(
        prog="luccs-fallback", description="LUCCS National Import System fallback procedure, run automatically."
    )
    parser.add_argument(
        "service", choices=[*SERVICES, "all", "migrate", *SIMULATOR_COMMANDS],
        help="what to run ('all': the three services; 'migrate': upgrade the procedure database and exit; "
        "'simulator': a local LUCCS stand-in, 'simulator-ctl': switch its modes; see their --help)",
    )
    parser.add_argument("--config", help=f"TOML configuration file (default: ${CONFIG_ENV}, else built-in defaults)")
    args = parser.parse_args(arguments)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"luccs-fallback: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.service == "migrate":
        return _migrate(settings)
    names = SERVICES if args.service == "all" else (args.service,)
    try:
        asyncio.run(_run(names, settings))
    except ConfigError as exc:
        print(f"luccs-fallback: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        causes = exc.exceptions if isinstance(exc, ExceptionGroup) else (exc,)
        for cause in causes:
            log.error("stopping: %s", cause)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
