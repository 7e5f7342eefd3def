"""``luccs-fallback eos import FILE`` and ``luccs-fallback eos export``: the bulk registry from a shell.

The file is streamed to ``POST /api/v1/eos:import`` (the service imports as it reads, so the bytes sent
are the progress shown on stderr); the new EOs' API keys are saved to ``--keys-out`` (see
:mod:`services.procedure.api.bulk` for the answer's two parts).
"""

from __future__ import annotations

import argparse
import csv
import email.parser
import email.policy
import io
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

__all__ = ["ImportAnswer", "main", "read_import_answer"]

_CHUNK = 256 * 1024


@dataclass
class ImportAnswer:
    counts: dict[str, Any]
    keys_file: bytes = b""
    keys: list[dict[str, str]] = field(default_factory=list)


def read_import_answer(content_type: str, body: bytes, *, parse_keys: bool = True) -> ImportAnswer:
    """The counts and the keys file of an import's answer (JSON, or multipart/mixed with ``keys=file``);
    ``parse_keys``: read the keys file into ``keys`` too (the CLI only saves it: 100,000 keys cost it 0.5 s)."""
    if not content_type.startswith("multipart/"):
        return ImportAnswer(json.loads(body))
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = [p for p in message.iter_parts()]
    counts = json.loads(_payload(parts[0]))
    keys_file = _payload(parts[1])
    if not parse_keys:
        return ImportAnswer(counts, keys_file)
    if parts[1].get_content_type() == "text/csv":
        keys = list(csv.DictReader(io.StringIO(keys_file.decode())))
    else:
        keys = [json.loads(line) for line in keys_file.splitlines() if line.strip()]
    return ImportAnswer(counts, keys_file, keys)


def _payload(part: Any) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


class Progress:
    """One self-rewriting line on stderr: bytes sent of the file, share, elapsed time."""

    def __init__(self, total: int, out: TextIO, *, clock: Any = time.monotonic) -> None:
        self.total, self.out, self.clock = total, out, clock
        self.started = self.shown = clock()
        self.sent = 0

    def advance(self, sent: int) -> None:
        self.sent += sent
        now = self.clock()
        if now - self.shown >= 0.2 or self.sent >= self.total:
            self.shown = now
            self.show("sent")

    def show(self, what: str) -> None:
        share = self.sent / self.total if self.total else 1.0
        bar = "#" * int(share * 30)
        print(f"\r[{bar:<30}] {share:4.0%} {what} {self.sent / 1e6:.1f}/{self.total / 1e6:.1f} MB "
              f"{self.clock() - self.started:.1f} s", end="", file=self.out, flush=True)


def _file_chunks(path: Path, progress: Progress) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk
            progress.advance(len(chunk))
    progress.show("sent; the service finishes the last chunk")


def _client(args: argparse.Namespace) -> httpx.Client:
    token = args.token or os.environ.get("LUCCS_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    verify: Any = args.ca_file if args.ca_file else True
    return httpx.Client(base_url=args.url, headers=headers, verify=verify, timeout=httpx.Timeout(30, read=None))


def _import(args: argparse.Namespace) -> int:
    path = Path(args.file)
    fmt = args.format or ("csv" if path.suffix.lower() == ".csv" else "ndjson")
    media = "text/csv" if fmt == "csv" else "application/x-ndjson"
    progress = Progress(path.stat().st_size, sys.stderr)
    with _client(args) as client:
        response = client.post("/api/v1/eos:import", content=_file_chunks(path, progress),
                               params={"keys": "none" if args.no_keys else "file"}, headers={"Content-Type": media})
    print(file=sys.stderr)
    if response.status_code != 200:
        print(f"luccs-fallback: import refused ({response.status_code}): {response.text}", file=sys.stderr)
        return 1
    answer = read_import_answer(response.headers.get("content-type", ""), response.content, parse_keys=False)
    counts = answer.counts
    print(f"created {counts['created']}, updated {counts['updated']}, unchanged {counts['unchanged']}, "
          f"rejected {len(counts['rejected'])} in {time.monotonic() - progress.started:.1f} s", file=sys.stderr)
    for rejected in counts["rejected"][:args.show_rejected]:
        print(f"  line {rejected['line']}: {rejected['reason']}", file=sys.stderr)
    if len(counts["rejected"]) > args.show_rejected:
        print(f"  ... and {len(counts['rejected']) - args.show_rejected} more (--json shows all)", file=sys.stderr)
    saved = sum(1 for line in answer.keys_file.splitlines() if line.strip()) - (fmt == "csv")  # less the header
    if saved > 0:
        keys_out = Path(args.keys_out or f"eo-api-keys.{fmt}")
        fd = os.open(keys_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # API keys: readable by this user
        with os.fdopen(fd, "wb") as handle:
            handle.write(answer.keys_file)
        print(f"{saved} new API keys saved to {keys_out} (shown this once)", file=sys.stderr)
    if args.json:
        print(json.dumps(counts, indent=2))
    return 0 if not counts["rejected"] else 3


def _export(args: argparse.Namespace) -> int:
    accept = "text/csv" if args.format == "csv" else "application/x-ndjson"
    out = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115 - closed below
    count = 0
    try:
        with _client(args) as client, client.stream("GET", "/api/v1/eos:export", headers={"Accept": accept}) as r:
            if r.status_code != 200:
                r.read()
                print(f"luccs-fallback: export refused ({r.status_code}): {r.text}", file=sys.stderr)
                return 1
            for chunk in r.iter_bytes():
                out.write(chunk)
                count += chunk.count(b"\n")
                print(f"\r{count} lines", end="", file=sys.stderr, flush=True)
    finally:
        if args.output:
            out.close()
    print(file=sys.stderr)
    return 0


def main(argv: Sequence[str]) -> int:
    """``eos import|export`` (the words after ``luccs-fallback eos``)."""
    parser = argparse.ArgumentParser(prog="luccs-fallback eos", description="Bulk EO registry import and export.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default="http://127.0.0.1:8002", help="the procedure service (default %(default)s)")
    common.add_argument("--token", help="an operator token (import) or operator/bureau token (export); "
                        "default: $LUCCS_TOKEN")
    common.add_argument("--ca-file", help="PEM CAs an https --url must chain to")
    commands = parser.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("import", parents=[common], help="create or update EOs from an NDJSON or CSV file")
    imp.add_argument("file", help="NDJSON (one EO per line) or CSV (header row, then one EO per line)")
    imp.add_argument("--format", choices=["ndjson", "csv"], help="default: csv for *.csv, else ndjson")
    keys = imp.add_mutually_exclusive_group()
    keys.add_argument("--keys-out", help="where the new EOs' API keys go (default: eo-api-keys.<format>, mode 600)")
    keys.add_argument("--no-keys", action="store_true", help="hand out no API key (issue them later, one by one)")
    imp.add_argument("--show-rejected", type=int, default=20, metavar="N", help="rejected lines listed (default 20)")
    imp.add_argument("--json", action="store_true", help="print the whole answer (every rejected line) on stdout")
    exp = commands.add_parser("export", parents=[common], help="every EO, without secrets, to a file or stdout")
    exp.add_argument("--format", choices=["ndjson", "csv"], default="ndjson")
    exp.add_argument("-o", "--output", help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    try:
        return _import(args) if args.command == "import" else _export(args)
    except (OSError, httpx.HTTPError) as exc:
        print(f"\nluccs-fallback: {exc}", file=sys.stderr)
        return 1
