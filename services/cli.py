"""The ``luccs-fallback`` command: run one service, or all of them in one process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy.ext.asyncio import AsyncEngine

    from shared.config import Settings

# The settings, the web stack and the services are imported where they are used: ``luccs-fallback eos import``
# is an HTTP client only, and importing the rest (about a second) was part of every import's time.

SERVICES = ("detector", "procedure", "notifier")
SIMULATOR_COMMANDS = ("simulator", "simulator-ctl")
_ON_UVLOOP = (("detector",), ("notifier",))
"""The services that run on uvloop when one runs alone (shared/eventloop.py)."""
MigratedDatabase = Literal["procedure", "notifier", "detector"]
MIGRATED_DATABASES: tuple[MigratedDatabase, ...] = ("procedure", "notifier", "detector")
log = logging.getLogger("luccs_fallback")


def _app(name: str, settings: Settings, *, alone: bool) -> tuple[FastAPI, int]:
    # Imported here so that running one service does not import the others.
    if name == "detector":
        from services.detector.app import create_app as detector_app

        return detector_app(settings, own_process=alone), settings.detector.port
    if name == "procedure":
        from services.procedure.app import create_app as procedure_app

        return procedure_app(settings), settings.procedure.port
    from services.notifier.app import create_app as notifier_app

    return notifier_app(settings, own_process=alone), settings.notifier.port


async def _serve(name: str, app: FastAPI, settings: Settings, port: int) -> None:
    from shared.http import serve
    from shared.logging import bind_service

    bind_service(name)  # this task's log records, and those of every task its app starts, say whose they are
    await serve(app, host=settings.api.host, port=port, ssl_context=settings.api.server_ssl_context())


async def _run(names: Sequence[str], settings: Settings) -> None:
    apps = [(name, *_app(name, settings, alone=len(names) == 1)) for name in names]
    async with asyncio.TaskGroup() as group:
        for name, app, port in apps:
            group.create_task(_serve(name, app, settings, port))


def _migrate(settings: Settings, databases: Sequence[MigratedDatabase]) -> int:
    """Upgrade each database's schema to the latest revision, saying what was done to each."""
    from services.detector import migrate as detector_migrate
    from services.notifier import migrate as notifier_migrate
    from services.procedure import migrate as procedure_migrate
    from shared.config import ConfigError
    from shared.db import async_url, make_engine

    async def procedure(engine: AsyncEngine) -> str:
        before = await procedure_migrate.current_revision(engine)
        await procedure_migrate.upgrade(engine)
        return _migration_done(before, await procedure_migrate.current_revision(engine))

    async def notifier(engine: AsyncEngine) -> str:
        result = await notifier_migrate.upgrade(engine)
        if not result.adopted:
            return _migration_done(result.before, result.after)
        done = f"made before migrations, its tables match: stamped at {notifier_migrate.FIRST_REVISION}"
        return done if result.after == notifier_migrate.FIRST_REVISION else f"{done}, upgraded to {result.after}"

    async def detector(engine: AsyncEngine) -> str:
        before = await detector_migrate.current_revision(engine)
        await detector_migrate.upgrade(engine)
        return _migration_done(before, await detector_migrate.current_revision(engine))

    upgrades = {"procedure": procedure, "notifier": notifier, "detector": detector}

    async def run(database: MigratedDatabase) -> str:
        engine = make_engine(settings.database_url(database))
        try:
            return await upgrades[database](engine)
        finally:
            await engine.dispose()

    for database in databases:
        where = async_url(settings.database_url(database)).render_as_string(hide_password=True)
        try:
            done = asyncio.run(run(database))
        except ConfigError as exc:
            print(f"luccs-fallback: {database} database: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            print(f"luccs-fallback: {database} database ({where}): {exc}", file=sys.stderr)
            return 1
        print(f"{database} database: {done} ({where})")
    return 0


def _default_migrations(settings: Settings) -> list[MigratedDatabase]:
    """The procedure's and the notifier's databases, and the detector's when one is configured: a detector's
    default SQLite file lives on the detector's own machine, not where ``migrate`` runs."""
    databases: list[MigratedDatabase] = ["procedure", "notifier"]
    return [*databases, "detector"] if settings.detector.database_url else databases


def _migration_done(before: str | None, after: str | None) -> str:
    if before == after:
        return f"already at {after}"
    if before is None:
        return f"created at {after}"
    return f"upgraded from {before} to {after}"


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in SIMULATOR_COMMANDS:
        # The simulator has options of its own and reads no Settings.
        from services.simulator.cli import main as simulator_main

        return simulator_main(arguments[0], arguments[1:])
    if arguments and arguments[0] == "eos":
        # A client of a running procedure service: reads no Settings either.
        from services.eo_cli import main as eos_main

        return eos_main(arguments[1:])
    from shared.config import CONFIG_ENV, ConfigError, load_settings
    from shared.logging import configure_logging

    parser = argparse.ArgumentParser(
        prog="luccs-fallback", description="LUCCS National Import System fallback procedure, run automatically."
    )
    parser.add_argument(
        "service", choices=[*SERVICES, "all", "migrate", *SIMULATOR_COMMANDS, "eos"],
        help="what to run ('all': the three services; 'migrate': upgrade the procedure, notifier and detector "
        "databases and exit; 'simulator': a local LUCCS stand-in, 'simulator-ctl': switch its modes; "
        "'eos': bulk EO import/export; see their --help)",
    )
    parser.add_argument("--config", help=f"TOML configuration file (default: ${CONFIG_ENV}, else built-in defaults)")
    parser.add_argument(
        "--database", choices=MIGRATED_DATABASES,
        help="with 'migrate': upgrade this database only (default: the procedure's, the notifier's, and the "
        "detector's when detector.database_url is set)",
    )
    args = parser.parse_args(arguments)
    if args.database and args.service != "migrate":
        parser.error("--database goes with 'migrate' only")
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"luccs-fallback: {exc}", file=sys.stderr)
        return 2
    configure_logging(level=settings.logging.level, log_format=settings.logging.format)
    if args.service == "migrate":
        return _migrate(settings, [args.database] if args.database else _default_migrations(settings))
    names = SERVICES if args.service == "all" else (args.service,)
    from shared import eventloop

    try:
        # A detector or a notifier alone runs on uvloop when installed (shared/eventloop.py): the parent of the
        # probe workers folds thousands of results a second into the targets' states, the notifier's loop feeds
        # and records thousands of deliveries a second. The procedure service and `all` stay on asyncio's loop.
        eventloop.run(_run(names, settings), prefer_uvloop=names in _ON_UVLOOP)
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
    log.info("stopped (process %d)", os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
