"""Unit tests of the log output (shared/logging.py): one line per record, JSON or readable, tagged by service."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from shared.logging import ConsoleFormatter, JsonFormatter, bind_service, configure_logging

CONSOLE_LINE = re.compile(r"^(?P<time>\d\d:\d\d:\d\d\.\d{3}) (?P<level>[A-Z]+) +(?P<service>\S+) +(?P<logger>\S+): "
                          r"(?P<rest>.*)$")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging changes the root logger: give pytest's handlers back afterwards."""
    root = logging.getLogger()
    uvicorn_error = logging.getLogger("uvicorn.error")
    handlers, level, filters = root.handlers[:], root.level, uvicorn_error.filters[:]
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    uvicorn_error.filters[:] = filters


def _record(message: str = "target %s is down", *args: object, level: int = logging.WARNING,
            **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("services.detector.service", level, __file__, 1, message, args or ("ada-as4",), None)
    record.__dict__.update(fields)
    return record


def test_console_line_has_time_level_service_logger_message_and_fields() -> None:
    line = ConsoleFormatter().format(_record(service="detector", reason="refused", detail="connection refused"))
    match = CONSOLE_LINE.match(line)
    assert match, line
    assert (match["level"], match["service"], match["logger"]) == ("WARNING", "detector", "services.detector.service")
    assert match["rest"] == 'target ada-as4 is down  reason=refused detail="connection refused"'
    assert "\x1b[" not in line  # no colour unless asked for


def test_console_line_without_a_service_or_fields() -> None:
    line = ConsoleFormatter().format(_record(level=logging.INFO))
    match = CONSOLE_LINE.match(line)
    assert match, line
    assert (match["level"], match["service"], match["rest"]) == ("INFO", "-", "target ada-as4 is down")


def test_console_puts_a_traceback_under_its_line_and_colours_errors_on_request() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = _record(level=logging.ERROR, exc_info=sys.exc_info())
    text = ConsoleFormatter(colour=True).format(record)
    first, *rest = text.splitlines()
    assert "\x1b[31mERROR" in first and first.endswith("target ada-as4 is down")
    assert rest[0].startswith("Traceback") and rest[-1] == "RuntimeError: boom"


def test_json_line_carries_the_service_and_the_extra_fields_but_not_uvicorns_colour_copy() -> None:
    entry = json.loads(JsonFormatter().format(_record(service="notifier", eori="LU123", color_message="x")))
    assert entry["level"] == "WARNING" and entry["service"] == "notifier"
    assert entry["logger"] == "services.detector.service" and entry["message"] == "target ada-as4 is down"
    assert entry["eori"] == "LU123"
    assert "color_message" not in entry
    assert "service" not in json.loads(JsonFormatter().format(_record()))


@pytest.mark.parametrize(
    ("log_format", "terminal", "console"),
    [("auto", True, True), ("auto", False, False), ("json", True, False), ("console", False, True)],
)
def test_the_format_follows_the_setting_and_whether_stderr_is_a_terminal(
    log_format: str, terminal: bool, console: bool
) -> None:
    stream = _Terminal() if terminal else io.StringIO()
    configure_logging(level="info", log_format=log_format, stream=stream)  # type: ignore[arg-type]
    logging.getLogger("luccs_fallback").info("hello %s", "operator")
    (line,) = stream.getvalue().splitlines()
    if console:
        assert CONSOLE_LINE.match(line) and line.endswith("luccs_fallback: hello operator"), line
    else:
        assert json.loads(line)["message"] == "hello operator"


def test_configuring_twice_still_writes_each_record_once() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    configure_logging(stream=stream)
    logging.getLogger("luccs_fallback").warning("once")
    assert len(stream.getvalue().splitlines()) == 1


def test_the_level_is_applied() -> None:
    stream = io.StringIO()
    configure_logging(level="WARNING", stream=stream)
    logging.getLogger("luccs_fallback").info("not shown")
    assert stream.getvalue() == ""


def test_each_task_tags_its_records_with_its_service_and_uvicorns_process_line_comes_once() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    uvicorn_log = logging.getLogger("uvicorn.error")

    async def server(name: str) -> None:
        bind_service(name)
        uvicorn_log.info("Started server process [%d]", 42)
        await asyncio.sleep(0)
        uvicorn_log.info("Waiting for application startup.")
        await asyncio.create_task(lifespan())  # a task it starts is tagged too
        uvicorn_log.info("Finished server process [%d]", 42)

    async def lifespan() -> None:
        logging.getLogger("services.detector.registry").info("EO registry replayed")

    async def three() -> None:
        await asyncio.gather(*(server(name) for name in ("detector", "procedure", "notifier")))

    asyncio.run(three())
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    started = [e for e in lines if e["message"].startswith("Started server process")]
    assert len(started) == 1 and "service" not in started[0]
    waiting = sorted(e["service"] for e in lines if e["message"] == "Waiting for application startup.")
    assert waiting == ["detector", "notifier", "procedure"]
    replayed = sorted(e["service"] for e in lines if e["message"] == "EO registry replayed")
    assert replayed == ["detector", "notifier", "procedure"]
    assert not [e for e in lines if e["message"].startswith("Finished server process")]
