"""Bulk registry: import EOs from NDJSON or CSV (upsert by EORI), export them without secrets.

An import is read as it arrives: lines are parsed one by one and written ``import_chunk_lines`` at a time,
one database transaction per chunk (through :meth:`EoRegistry.upsert_chunk`, so with the lease fencing and
the outbox like every registry write), so a 100,000-line file never sits in memory whole.

Lines and their numbers:
- NDJSON: one JSON object per line, the fields of ``POST /api/v1/eos``; blank lines are skipped.
- CSV: a header row naming the columns, then one EO per line (a record may not span lines); an empty cell
  is an absent field. Line numbers count the header (the first EO is line 2).
- An import line is the EO's whole record: a field it leaves out is cleared (or defaults, ``language``: fr),
  except ``webhook_secret``: left out, the stored secret stays (an export carries none, so an export
  imported back changes nothing). The export's read-only columns (``has_webhook_secret``, ``created_at``,
  ``updated_at``) are accepted and ignored.
- A line that does not parse, or fails the rules of ``POST /api/v1/eos``, or repeats an EORI given on an
  earlier line of the same file, is rejected with its number and the reason; the other lines go on.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from services.procedure.schemas import EoCreate

__all__ = [
    "EXPORT_COLUMNS", "MAX_LINE_BYTES", "ChunkOutcome", "ImportFormat", "ImportLine", "ImportReport", "ImportTooLarge",
    "InvalidImport", "LineSplitter", "Rejected", "csv_line", "export_line", "import_eos",
]

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 65_536
READ_ONLY_COLUMNS = frozenset({"has_webhook_secret", "created_at", "updated_at"})
EXPORT_COLUMNS = ("eori", "name", "language", "email", "webhook_url", "as4_endpoint", "has_webhook_secret",
                  "created_at", "updated_at")
_FIELDS = frozenset(EoCreate.model_fields)


class ImportFormat(StrEnum):
    NDJSON = "ndjson"
    CSV = "csv"


class InvalidImport(ValueError):
    """The file as a whole cannot be imported (e.g. a CSV header naming unknown columns): a 400."""


class ImportTooLarge(Exception):
    """The body went past ``import_max_bytes``: the chunks before it are imported (``report``)."""

    def __init__(self, limit: int, report: ImportReport) -> None:
        super().__init__(f"import body larger than {limit} bytes")
        self.limit = limit
        self.report = report


@dataclass(frozen=True)
class Rejected:
    line: int
    reason: str


@dataclass(frozen=True)
class ImportLine:
    line: int
    eo: EoCreate


@dataclass
class ChunkOutcome:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    keys: list[tuple[str, str]] = field(default_factory=list)
    """(EORI, API key) of each EO created, when keys are issued."""


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    keys: bytearray = field(default_factory=bytearray)
    """The new EOs' API keys, as the keys file (NDJSON ``{eori, api_key}`` or CSV ``eori,api_key``)."""

    def add(self, outcome: ChunkOutcome, fmt: ImportFormat) -> None:
        self.created += outcome.created
        self.updated += outcome.updated
        self.unchanged += outcome.unchanged
        self.rejected += outcome.rejected
        for eori, key in outcome.keys:
            line = (f"{eori},{key}\r\n" if fmt == ImportFormat.CSV
                    else json.dumps({"eori": eori, "api_key": key}) + "\n")
            self.keys += line.encode()


class LineSplitter:
    """Bytes in as they arrive, numbered lines out; a line longer than ``MAX_LINE_BYTES`` comes out as
    None (rejected) without being held."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._number = 0
        self._overlong = False

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes | None]]:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE_BYTES:
                    self._overlong = True
                    self._buffer.clear()
                return
            line = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            self._number += 1
            overlong, self._overlong = self._overlong or len(line) > MAX_LINE_BYTES, False
            yield self._number, None if overlong else line.rstrip(b"\r")

    def finish(self) -> Iterator[tuple[int, bytes | None]]:
        if self._buffer or self._overlong:
            yield from self.feed(b"\n")


def _reason(error: ValidationError) -> str:
    parts = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"])
        message = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def _validate(number: int, fields: dict[str, Any]) -> ImportLine | Rejected:
    fields = {k: v for k, v in fields.items() if k not in READ_ONLY_COLUMNS}
    try:
        eo = EoCreate.model_validate(fields)
    except ValidationError as exc:
        return Rejected(number, _reason(exc))
    return ImportLine(number, eo)


class _Parser:
    def __init__(self, fmt: ImportFormat) -> None:
        self.fmt = fmt
        self.header: list[str] | None = None

    def parse(self, number: int, raw: bytes | None) -> ImportLine | Rejected | None:
        """The line's EO, its rejection, or None for a line that holds none (blank, the CSV header)."""
        if raw is None:
            return Rejected(number, f"line longer than {MAX_LINE_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Rejected(number, "not UTF-8")
        if number == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            return None
        return self._json(number, text) if self.fmt == ImportFormat.NDJSON else self._csv(number, text)

    def _json(self, number: int, text: str) -> ImportLine | Rejected:
        try:  # the usual line in one pass; any other line takes the steps below, which name what is wrong
            return ImportLine(number, EoCreate.model_validate_json(text))
        except ValidationError:
            pass
        try:
            fields = json.loads(text)
        except ValueError as exc:
            return Rejected(number, f"not JSON: {exc}")
        except RecursionError:
            return Rejected(number, "not JSON this parser reads: nested too deeply")
        if not isinstance(fields, dict):
            return Rejected(number, "not a JSON object: each line is one EO, e.g. {\"eori\": \"LU123\", \"name\": ...}")
        return _validate(number, fields)

    def _csv(self, number: int, text: str) -> ImportLine | Rejected | None:
        try:
            cells = next(csv.reader([text], strict=True))
        except csv.Error as exc:
            return Rejected(number, f"not a CSV record on one line: {exc}")
        if self.header is None:
            self.header = _header(cells)
            return None
        if len(cells) != len(self.header):
            return Rejected(number, f"{len(cells)} cells where the header names {len(self.header)}")
        return _validate(number, {k: v for k, v in zip(self.header, cells, strict=True) if v != ""})


def _header(cells: list[str]) -> list[str]:
    header = [c.strip() for c in cells]
    unknown = [c for c in header if c not in _FIELDS | READ_ONLY_COLUMNS]
    if unknown:
        raise InvalidImport(f"unknown CSV column(s) {', '.join(map(repr, unknown))}: the columns are "
                            f"{', '.join(EoCreate.model_fields)}")
    if len(set(header)) != len(header):
        raise InvalidImport("a CSV column is named twice in the header")
    missing = [c for c in ("eori", "name") if c not in header]
    if missing:
        raise InvalidImport(f"the CSV header lacks {', '.join(missing)}")
    return header


UpsertChunk = Callable[[Sequence[ImportLine]], Coroutine[Any, Any, ChunkOutcome]]


async def import_eos(
    *, body: AsyncIterator[bytes], fmt: ImportFormat, upsert_chunk: UpsertChunk, chunk_lines: int, max_bytes: int,
) -> ImportReport:
    """Read ``body`` as it comes and upsert its EOs ``chunk_lines`` at a time; raise :class:`InvalidImport`
    before writing anything when the file cannot be read at all, :class:`ImportTooLarge` past ``max_bytes``."""
    report = ImportReport()
    splitter = LineSplitter()
    parser = _Parser(fmt)
    first_line: dict[str, int] = {}
    pending: list[ImportLine] = []
    writing: asyncio.Task[ChunkOutcome] | None = None
    size = 0

    async def written() -> None:
        """Wait for the chunk being written, if any, and count it."""
        nonlocal writing
        if writing is not None:
            task, writing = writing, None
            report.add(await task, fmt)

    async def flush() -> None:
        # One chunk is written while the next is read and parsed (the database works beside the parsing);
        # never two at once, so each chunk's transaction sees the ones before it committed.
        nonlocal writing
        if pending:
            await written()
            writing = asyncio.create_task(upsert_chunk(pending.copy()))
            pending.clear()

    async def take(lines: Iterator[tuple[int, bytes | None]]) -> None:
        for number, raw in lines:
            parsed = parser.parse(number, raw)
            if parsed is None:
                continue
            if isinstance(parsed, Rejected):
                report.rejected.append(parsed)
                continue
            earlier = first_line.setdefault(parsed.eo.eori, number)
            if earlier != number:
                report.rejected.append(Rejected(number, f"EORI {parsed.eo.eori} is already on line {earlier}"))
                continue
            pending.append(parsed)
            if len(pending) >= chunk_lines:
                await flush()

    try:
        async for data in body:
            size += len(data)
            if size > max_bytes:
                await flush()
                await written()
                raise ImportTooLarge(max_bytes, report)
            await take(splitter.feed(data))
        await take(splitter.finish())
        if fmt == ImportFormat.CSV and parser.header is None:
            raise InvalidImport("empty CSV: a header row naming the columns comes first")
        await flush()
        await written()
    finally:
        if writing is not None:  # the body failed (the client went away): the chunk under way still commits
            try:
                await asyncio.shield(writing)
            except Exception:  # the import's own error is the one raised; this one must not vanish unseen
                log.exception("a chunk of the interrupted import failed to be written")
    report.rejected.sort(key=lambda r: r.line)
    return report


def export_line(view: dict[str, Any], fmt: ImportFormat) -> bytes:
    """One EO of the export (``view``: :func:`services.procedure.registry.eo_view`, never a secret)."""
    values = {c: view[c].isoformat() if hasattr(view[c], "isoformat") else view[c] for c in EXPORT_COLUMNS}
    if fmt == ImportFormat.NDJSON:
        return (json.dumps(values) + "\n").encode()
    return csv_line(["" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
                     for v in values.values()])


def csv_line(cells: Sequence[str]) -> bytes:
    class _Line:
        text = ""

        def write(self, s: str) -> None:
            self.text += s

    out = _Line()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.text.encode()
