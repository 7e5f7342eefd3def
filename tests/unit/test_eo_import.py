"""The import's reading: chunking, line numbers, rejections and file-level errors, with a fake writer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import pytest

from services.procedure.bulk import (
    MAX_LINE_BYTES,
    ChunkOutcome,
    ImportFormat,
    ImportLine,
    ImportTooLarge,
    InvalidImport,
    LineSplitter,
    Rejected,
    import_eos,
)


class Writer:
    def __init__(self) -> None:
        self.chunks: list[list[tuple[int, str]]] = []

    async def __call__(self, lines: Sequence[ImportLine]) -> ChunkOutcome:
        self.chunks.append([(line.line, line.eo.eori) for line in lines])
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
