"""The import's reading: chunking, line numbers, rejections and file-level errors, with a fake writer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

import pytest
from pydantic import ValidationError

from services.procedure.bulk import (
    MAX_LINE_BYTES,
    READ_ONLY_COLUMNS,
    ChunkOutcome,
    ImportFormat,
    ImportLine,
    ImportTooLarge,
    InvalidImport,
    LineSplitter,
    Rejected,
    import_eos,
)
from services.procedure.schemas import EoCreate


class Writer:
    def __init__(self) -> None:
        self.chunks: list[list[tuple[int, str]]] = []
        self.lines: list[EoCreate] = []

    async def __call__(self, lines: Sequence[ImportLine]) -> ChunkOutcome:
        self.chunks.append([(line.line, line.eo.eori) for line in lines])
        self.lines += [line.eo for line in lines]
        return ChunkOutcome(created=len(lines), keys=[(line.eo.eori, f"key-{line.eo.eori}") for line in lines])


async def _body(data: bytes, piece: int = 7) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):  # lines cut anywhere, as the network delivers them
        yield data[start:start + piece]


def test_the_splitter_numbers_lines_cut_anywhere_and_drops_overlong_ones() -> None:
    splitter = LineSplitter()
    lines = [*splitter.feed(b"a\r\nb"), *splitter.feed(b"c\n" + b"x" * (MAX_LINE_BYTES + 5)),
             *splitter.feed(b"yy\nlast"), *splitter.finish()]
    assert lines == [(1, b"a"), (2, b"bc"), (3, None), (4, b"last")]


async def test_ndjson_is_written_chunk_by_chunk_with_duplicates_and_bad_lines_rejected() -> None:
    lines = [json.dumps({"eori": f"LU{i}", "name": f"EO {i}"}) for i in range(5)]
    lines.insert(2, json.dumps({"eori": "lu1", "name": "again"}))
    lines.insert(4, "[" * 30_000)
    writer = Writer()
    report = await import_eos(body=_body("\n".join(lines).encode(), piece=1000), fmt=ImportFormat.NDJSON,
                              upsert_chunk=writer, chunk_lines=2, max_bytes=100_000)
    assert writer.chunks == [[(1, "LU0"), (2, "LU1")], [(4, "LU2"), (6, "LU3")], [(7, "LU4")]]
    assert (report.rejected[0].line, report.rejected[0].reason) == (3, "EORI LU1 is already on line 2")
    assert report.rejected[1] == Rejected(5, "not JSON this parser reads: nested too deeply")
    assert report.created == 5
    assert bytes(report.keys).splitlines()[0] == b'{"eori": "LU0", "api_key": "key-LU0"}'


async def test_csv_header_errors_stop_the_file_before_anything_is_written() -> None:
    writer = Writer()
    for body, message in ((b"eori,nom\nLU1,x\n", "unknown CSV column"), (b"eori\nLU1\n", "lacks name"),
                          (b"eori,name,eori\n", "named twice"), (b"\n\n", "empty CSV")):
        with pytest.raises(InvalidImport, match=message):
            await import_eos(body=_body(body), fmt=ImportFormat.CSV, upsert_chunk=writer, chunk_lines=2,
                             max_bytes=10_000)
    assert writer.chunks == []


async def test_csv_cells_export_columns_and_keys_file() -> None:
    body = ("\ufeffeori,name,email,has_webhook_secret,created_at\n"
            "LU1,\"One, Ltd\",,false,2026-01-01T00:00:00+00:00\n"
            "LU2,Two,not-mail,true,\n"
            "LU3,\"unclosed,x,,\n").encode()
    writer = Writer()
    report = await import_eos(body=_body(body), fmt=ImportFormat.CSV, upsert_chunk=writer, chunk_lines=10,
                              max_bytes=10_000)
    assert writer.chunks == [[(2, "LU1")]]
    assert [(r.line, r.reason.split(":")[0]) for r in report.rejected] == [
        (3, "email"), (4, "not a CSV record on one line")]
    assert bytes(report.keys) == b"LU1,key-LU1\r\n"


async def test_past_the_limit_the_chunks_read_so_far_are_written_and_reported() -> None:
    writer = Writer()
    body = b"".join(json.dumps({"eori": f"LU{i}", "name": "x"}).encode() + b"\n" for i in range(100))
    with pytest.raises(ImportTooLarge) as raised:
        await import_eos(body=_body(body, piece=100), fmt=ImportFormat.NDJSON, upsert_chunk=writer, chunk_lines=5,
                         max_bytes=1000)
    assert raised.value.report.created == sum(len(c) for c in writer.chunks) > 0


async def test_the_next_chunk_is_read_while_one_is_written_never_two_writes_at_once() -> None:
    """The writer of the first chunk waits (bounded) until the reader asks the body for the second chunk's
    lines: a reader that waited for each write before reading on would never ask."""
    second_chunk_read = asyncio.Event()
    writing = 0
    most_at_once = 0
    written: list[list[int]] = []

    async def body() -> AsyncIterator[bytes]:
        for i in range(6):
            if i == 2:  # line 3, the first of the second chunk
                second_chunk_read.set()
            yield json.dumps({"eori": f"LU{i}", "name": "x"}).encode() + b"\n"

    async def upsert(lines: Sequence[ImportLine]) -> ChunkOutcome:
        nonlocal writing, most_at_once
        writing += 1
        most_at_once = max(most_at_once, writing)
        if not written:
            await asyncio.wait_for(second_chunk_read.wait(), timeout=10)
        await asyncio.sleep(0)
        written.append([line.line for line in lines])
        writing -= 1
        return ChunkOutcome(created=len(lines), keys=[(line.eo.eori, "k") for line in lines])

    report = await import_eos(body=body(), fmt=ImportFormat.NDJSON, upsert_chunk=upsert, chunk_lines=2,
                              max_bytes=10_000)
    assert written == [[1, 2], [3, 4], [5, 6]]
    assert most_at_once == 1
    assert report.created == 6
    assert [line.split(b'"')[3] for line in bytes(report.keys).splitlines()] == [f"LU{i}".encode() for i in range(6)]


async def test_a_failed_write_fails_the_import() -> None:
    async def upsert(lines: Sequence[ImportLine]) -> ChunkOutcome:
        raise RuntimeError("database gone")

    body = b"".join(json.dumps({"eori": f"LU{i}", "name": "x"}).encode() + b"\n" for i in range(5))
    with pytest.raises(RuntimeError, match="database gone"):
        await import_eos(body=_body(body), fmt=ImportFormat.NDJSON, upsert_chunk=upsert, chunk_lines=2,
                         max_bytes=10_000)


@pytest.mark.parametrize("line", [
    '{"eori": " lu1 ", "name": " One ", "language": "de", "webhook_url": "https://x.example/h?a=1#f", '
    '"webhook_secret": "sixteen-chars-ok"}',
    '{"eori": "LU1", "name": "One", "has_webhook_secret": true, "created_at": "2026-01-01"}',  # export columns
    '{"eori": "LU1", "name": "One", "as4_endpoint": "HTTPS://X.example:8443/msh"}',
    '{"eori": "LU1", "name": "One", "email": "no-at-sign"}',
    '{"eori": "LU1", "name": "One", "colour": "blue"}',
    '{"eori": "LU1", "name": "One", "language": "it"}',
    '{"eori": "LU1", "name": 5}',
    '{"eori": "LU1", "name": "One", "webhook_url": "ftp://x.example/"}',
    '{"eori": "LU1", "name": "One", "webhook_url": "http://[::1/"}',
    '{"eori": "LU1", "name": "One", "webhook_url": "http:///path-only"}',
    '{"eori": "LU1", "name": "One"} trailing',
    '["LU1"]',
    '{"eori": "LU1", "name": "One", "eori": "LU2"}',
])
async def test_a_line_reads_as_the_model_reads_its_json_object(line: str) -> None:
    """The one-pass reading of a line gives what the step-by-step reading (json.loads, leave out the export's
    read-only columns, validate) gives: the same EO or a rejection with that reasoning's words."""
    writer = Writer()
    report = await import_eos(body=_body(line.encode()), fmt=ImportFormat.NDJSON, upsert_chunk=writer,
                              chunk_lines=10, max_bytes=10_000)
    try:
        fields = json.loads(line)
    except ValueError as exc:
        reason = f"not JSON: {exc}"
    else:
        reason = ""
    if reason:
        assert report.rejected == [Rejected(1, reason)]
        return
    if not isinstance(fields, dict):
        assert len(report.rejected) == 1 and "not a JSON object" in report.rejected[0].reason
        return
    try:
        expected = EoCreate.model_validate({k: v for k, v in fields.items() if k not in READ_ONLY_COLUMNS})
    except ValidationError:
        assert len(report.rejected) == 1 and writer.chunks == []
        return
    assert report.rejected == [] and writer.lines == [expected]


async def test_a_line_holding_a_lone_surrogate_is_rejected_not_a_failed_import() -> None:
    """JSON may escape a lone surrogate, which no database stores and no registry event encodes: such a line was
    taken, and the whole import then failed with a 500 as its chunk was written."""
    lines = [json.dumps({"eori": "LU1", "name": "caf\udce9"}), json.dumps({"eori": "LU2", "name": "café"}),
             json.dumps({"eori": "LU3", "name": "ok", "webhook_secret": "a-secret-long-enough-\ud800"})]
    writer = Writer()
    report = await import_eos(body=_body("\n".join(lines).encode()), fmt=ImportFormat.NDJSON, upsert_chunk=writer,
                              chunk_lines=10, max_bytes=10_000)
    assert [line.eori for line in writer.lines] == ["LU2"]
    assert [(r.line, "not valid Unicode" in r.reason) for r in report.rejected] == [(1, True), (3, True)]
