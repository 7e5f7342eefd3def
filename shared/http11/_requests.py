"""Requests as they go on the wire: rendered once per URL or target, sent as one write of bytes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import h11

__all__ = ["RequestHead", "header_lines", "render_head", "request_bytes", "request_head"]

_UNSAFE = re.compile("[\r\n\0]")


def request_bytes(method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes = b"") -> bytes:
    """The request as it goes on the wire: request line, ``headers`` (Host among them; Content-Length added
    when there is a body and none is given), an empty line, ``body``.

    Raises ``ValueError`` when a name or value would break the head (a line break or NUL in it).
    """
    if body and not any(name.lower() == "content-length" for name, _ in headers):
        headers = [*headers, ("Content-Length", str(len(body)))]
    return request_head(method, target, headers) + b"\r\n" + body


def request_head(method: str, target: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """The request line and ``headers``, without the empty line that ends the head: a caller sending many
    requests to one URL renders this once and appends each request's own :func:`header_lines`."""
    line = f"{method} {target} HTTP/1.1"
    if _UNSAFE.search(line):
        raise ValueError("the request line holds a line break or NUL")
    return line.encode("latin-1") + b"\r\n" + header_lines(headers)


def header_lines(headers: Sequence[tuple[str, str]]) -> bytes:
    """``Name: value`` lines, each ending with CRLF; ``ValueError`` when one holds a line break or NUL."""
    text = "".join(f"{name}: {value}\r\n" for name, value in headers)
    if _UNSAFE.search(text.replace("\r\n", "")) or text.count("\r\n") != len(headers):
        raise ValueError("a header holds a line break or NUL")
    return text.encode("latin-1")


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request's head without Content-Length, checked as h11 checks a request (the probes' heads)."""

    prefix: bytes  # request line and headers, without Content-Length and the blank line
    with_length: bool  # a Content-Length is sent (a body, or a method that has one)

    def payload(self, body: bytes) -> bytes:
        """The whole request with ``body`` (and its Content-Length when the head has one)."""
        if not self.with_length:
            return self.prefix + b"\r\n" + body
        return b"%sContent-Length: %d\r\n\r\n%s" % (self.prefix, len(body), body)


def render_head(method: str, target: str, headers: tuple[tuple[str, str], ...], *, with_length: bool) -> RequestHead:
    """The head of a request, rendered once per target: directly when every field is plain ASCII that h11
    would accept and write unchanged (the bytes are h11's), by h11 otherwise (which raises
    ``h11.LocalProtocolError`` for what it refuses)."""
    if _plain_head(method, target, headers):
        lines = [f"{method} {target} HTTP/1.1\r\n", *(f"{name}: {value}\r\n" for name, value in headers)]
        return RequestHead("".join(lines).encode("ascii"), with_length)
    data = h11.Connection(h11.CLIENT).send(h11.Request(method=method, target=target, headers=list(headers)))
    assert data is not None and data.endswith(b"\r\n\r\n")
    return RequestHead(data[:-2], with_length)


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"[\x21-\x7e]+")
_VALUE = re.compile(r"(?:[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?")
_FRAMING = frozenset({"host", "content-length", "transfer-encoding"})


def _plain_head(method: str, target: str, headers: tuple[tuple[str, str], ...]) -> bool:
    # h11 writes the Host header first and checks framing headers: only a head that starts with the one
    # Host header and has no framing header of its own is rendered here.
    if not headers or headers[0][0].lower() != "host":
        return False
    if _TOKEN.fullmatch(method) is None or _TARGET.fullmatch(target) is None:
        return False
    for index, (name, value) in enumerate(headers):
        if _TOKEN.fullmatch(name) is None or _VALUE.fullmatch(value) is None:
            return False
        if index and name.lower() in _FRAMING:
            return False
    return True
