"""Logging for the services: one line per event, JSON for machines, a readable line for a person.

``configure_logging`` sends every record to stderr once, as a JSON object per line or, on a terminal, as
``time level service logger: message key=value ...``. Each record says which service it comes from:
``luccs-fallback all`` runs three uvicorn servers in one process, and a task started under
:func:`bind_service` (with every task it starts in turn) tags its records with that name. Fields given
with ``log.info(..., extra={"eori": ...})`` are printed as well (keys in JSON, ``key=value`` on a terminal).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

__all__ = ["ConsoleFormatter", "JsonFormatter", "LogFormat", "bind_service", "configure_logging", "record_fields"]

LogFormat = Literal["auto", "json", "console"]

_service: ContextVar[str | None] = ContextVar("luccs_service", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "service", "taskName",
    "color_message",  # uvicorn's coloured copy of the message
}

# uvicorn logs these once per server; with several servers in one process they say the same thing each time.
_STARTED = "Started server process [%d]"
_FINISHED = "Finished server process [%d]"  # said by the first server to stop, while others still run

_QUIET = ("aiokafka", "kafka", "uvicorn.access", "httpx", "alembic")


def bind_service(name: str) -> None:
    """Tag the log records of the current task, and of the tasks it starts from now on, with ``name``."""
    _service.set(name)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a log call added with ``extra={...}``, in the order given."""
    return {key: value for key, value in vars(record).items()
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_")}


class _ServiceTag(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "service"):
            record.service = _service.get()
        return True


class _OncePerProcess(logging.Filter):
    """Lets uvicorn's "Started server process [pid]" through once, untagged, and drops "Finished server
    process", which the first server to stop says while the others still run (the CLI says when it stopped)."""

    def __init__(self) -> None:
        super().__init__()
        self._started = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _FINISHED:
            return False
        if record.msg != _STARTED:
            return True
        if self._started:
            return False
        self._started = True
        record.service = None  # about the process, not about the server that happened to say it first
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC), ``level``, ``service`` (when known), ``logger``, ``message``,
    the ``extra`` fields, ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
        }
        service = getattr(record, "service", None)
        if service:
            entry["service"] = service
        entry["logger"] = record.name
        entry["message"] = record.getMessage()
        for key, value in record_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


_COLOURS = {"DEBUG": "\x1b[2m", "WARNING": "\x1b[33m", "ERROR": "\x1b[31m", "CRITICAL": "\x1b[1;31m"}
_RESET = "\x1b[0m"


def _console_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if not text or any(c.isspace() or c in "\"=" for c in text) else text


class ConsoleFormatter(logging.Formatter):
    """One readable line: ``14:02:28.856 INFO    detector  services.detector.registry: message key=value``.

    Local time to the millisecond; ``-`` where no service is known; a traceback follows on its own lines.
    With ``colour``, warnings and errors are coloured (for a terminal).
    """

    def __init__(self, *, colour: bool = False) -> None:
        super().__init__()
        self._colour = colour

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).astimezone()
        level = f"{record.levelname:<7}"
        if self._colour and record.levelname in _COLOURS:
            level = f"{_COLOURS[record.levelname]}{level}{_RESET}"
        service = getattr(record, "service", None) or "-"
        line = (f"{when:%H:%M:%S}.{int(record.msecs):03d} {level} {service:<9} {record.name}: "
                f"{record.getMessage()}")
        fields = record_fields(record)
        if fields:
            line += "  " + " ".join(f"{key}={_console_value(value)}" for key, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def configure_logging(*, level: str = "INFO", log_format: LogFormat = "auto", stream: TextIO | None = None) -> None:
    """Send every log record once to ``stream`` (stderr): JSON lines, or readable lines when ``log_format``
    is ``console``, or ``auto`` and the stream is a terminal. Quiets the chattiest libraries."""
    stream = sys.stderr if stream is None else stream
    terminal = _is_terminal(stream)
    console = log_format == "console" or (log_format == "auto" and terminal)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        ConsoleFormatter(colour=terminal and "NO_COLOR" not in os.environ) if console else JsonFormatter()
    )
    handler.addFilter(_ServiceTag())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    uvicorn_error = logging.getLogger("uvicorn.error")
    for old in [f for f in uvicorn_error.filters if isinstance(f, _OncePerProcess)]:
        uvicorn_error.removeFilter(old)
    uvicorn_error.addFilter(_OncePerProcess())
    for noisy in _QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
