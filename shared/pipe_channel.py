"""The pipe protocol between a service and its worker processes (the detector's probe workers, the notifier's
webhook workers).

Frames of a 4-byte big-endian length and a pickled list of messages (tuples), both ways; the messages of one
event-loop turn travel in one frame (at most ``MAX_BATCH`` per frame), so pickle memoizes an object shared by
many of them (a notice's body sent to thousands of EOs is pickled once per frame). Pickle is safe here: both
ends are this code, the child started by the parent over an anonymous pipe. The child reads the parent's
frames on its stdin and writes its own on the stdout it had at start; whatever a library prints goes to
stderr (:func:`reserve_stdout`). A child exits when its stdin closes: the parent stopped or died.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import struct
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_BATCH", "MAX_FRAME_BYTES", "Channel", "FrameError", "Message", "child_channel", "handle_frames",
           "receive", "reserve_stdout", "stop_child"]

_HEADER = struct.Struct(">I")
MAX_BATCH = 500  # messages per frame: 40,000 targets put at start go out as many moderate frames
MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Larger than any frame this code writes (500 messages; a webhook notice's body is a few KiB and shared by the
frame's messages): a length beyond it is a stream out of step or a child writing something else to its
stdout, not a frame to buffer up to 4 GiB of."""


class FrameError(ValueError):
    """What came through the pipe is not a frame of this protocol."""

Message = tuple[Any, ...]


class Channel:
    """Sends messages over a pipe, those of one event-loop turn batched into frames."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._queued: list[Message] = []

    def send(self, message: Message) -> None:
        if not self._queued:
            asyncio.get_running_loop().call_soon(self._flush)
        self._queued.append(message)

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        if self._writer.is_closing():
            return
        for start in range(0, len(queued), MAX_BATCH):
            body = pickle.dumps(queued[start : start + MAX_BATCH], protocol=pickle.HIGHEST_PROTOCOL)
            self._writer.write(_HEADER.pack(len(body)) + body)

    async def drain(self) -> None:
        """Wait until the pipe takes more; at once if the other end is gone (its reader then sees the pipe
        closed: the caller learns it there, not from an exception here)."""
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    def close(self) -> None:
        self._flush()
        self._writer.close()


async def receive(reader: asyncio.StreamReader) -> list[Message] | None:
    """The next frame's messages, or None once the other end has closed the pipe; :class:`FrameError` if what
    comes is not a frame (a length over MAX_FRAME_BYTES, a body that does not unpickle to a list)."""
    try:
        (length,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        if length > MAX_FRAME_BYTES:
            raise FrameError(f"a frame of {length} bytes announced (at most {MAX_FRAME_BYTES})")
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        return None
    try:
        batch = pickle.loads(body)  # noqa: S301 (our own child)
    except Exception as exc:
        raise FrameError(f"a frame that does not unpickle: {type(exc).__name__}: {exc}") from exc
    if not isinstance(batch, list):
        raise FrameError(f"a frame of a {type(batch).__name__}, not a list of messages")
    return batch


def reserve_stdout() -> int:
    """In a child, at start: a descriptor of its stdout for the protocol alone; fd 1 then points at stderr,
    so that anything a library prints goes there rather than into a frame."""
    out_fd = os.dup(1)
    os.dup2(2, 1)
    return out_fd


async def child_channel(out_fd: int) -> tuple[asyncio.StreamReader, Channel]:
    """In a child: the reader of the parent's frames (stdin) and the channel to it (``out_fd``)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(out_fd, "wb", buffering=0)
    )
    return reader, Channel(asyncio.StreamWriter(transport, protocol, None, loop))


async def handle_frames(reader: asyncio.StreamReader, channel: Channel, handle: Callable[[Message], None]) -> None:
    """In a child: hand each of the parent's messages to ``handle`` until the parent closes the pipe."""
    while (batch := await receive(reader)) is not None:
        for message in batch:
            handle(message)
        await channel.drain()  # the parent reads slower than we write: wait rather than buffer


async def stop_child(process: asyncio.subprocess.Process | None, channel: Channel | None, *, wait_s: float) -> None:
    """In the parent: close a child's input (it ends what it has in flight and exits) and wait for it to exit,
    ``wait_s`` at most; then kill it."""
    if process is None or process.returncode is not None:
        return
    if channel is not None:
        with contextlib.suppress(Exception):
            channel.close()
    try:
        async with asyncio.timeout(wait_s):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
