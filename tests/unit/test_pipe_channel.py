"""The pipe framing shared by the detector's probe workers and the notifier's webhook workers."""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
from collections.abc import AsyncIterator

import pytest

from shared.pipe_channel import MAX_BATCH, MAX_FRAME_BYTES, Channel, FrameError, Message, receive


class _CountingWriter(asyncio.StreamWriter):
    """Notes the size of each frame written."""

    sizes: list[int]

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sizes.append(len(data))
        super().write(data)


@pytest.fixture
async def pipe() -> AsyncIterator[tuple[Channel, asyncio.StreamReader, list[int]]]:
    """A channel writing into an OS pipe, the reader of its other end, and the size of each frame written."""
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    reader = asyncio.StreamReader(limit=1 << 24)
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(write_fd, "wb", buffering=0)
    )
    writer = _CountingWriter(transport, protocol, None, loop)
    writer.sizes = []
    channel = Channel(writer)
    yield channel, reader, writer.sizes
    channel.close()
    read_transport.close()


async def test_the_messages_of_one_turn_travel_in_one_frame_in_order(
    pipe: tuple[Channel, asyncio.StreamReader, list[int]],
) -> None:
    channel, reader, sizes = pipe
    for n in range(10):
        channel.send(("post", n, f"https://eo{n}.example/hook"))
    first = await receive(reader)
    channel.send(("outcome", 99, True, None, 204, False))
    second = await receive(reader)
    assert first == [("post", n, f"https://eo{n}.example/hook") for n in range(10)]
    assert second == [("outcome", 99, True, None, 204, False)]
    assert len(sizes) == 2


async def test_a_body_shared_by_the_messages_of_a_frame_is_pickled_once(
    pipe: tuple[Channel, asyncio.StreamReader, list[int]],
) -> None:
    channel, reader, sizes = pipe
    body = os.urandom(10_000)
    for n in range(100):
        channel.send(("post", n, body))
    batch = await receive(reader)
    assert batch is not None and [m[1] for m in batch] == list(range(100))
    assert all(m[2] == body for m in batch)
    assert sizes == [sizes[0]] and sizes[0] < 2 * len(body)  # 100 copies would be 1,000,000 bytes


async def test_a_long_turn_is_cut_into_frames_of_at_most_max_batch(
    pipe: tuple[Channel, asyncio.StreamReader, list[int]],
) -> None:
    channel, reader, sizes = pipe
    total = 2 * MAX_BATCH + 7
    for n in range(total):
        channel.send(("put", n))
    received: list[Message] = []
    frames = []
    while len(received) < total:
        batch = await receive(reader)
        assert batch is not None
        frames.append(len(batch))
        received.extend(batch)
    assert frames == [MAX_BATCH, MAX_BATCH, 7]
    assert received == [("put", n) for n in range(total)]
    assert len(sizes) == 3


async def test_receive_says_none_once_the_other_end_closed(
    pipe: tuple[Channel, asyncio.StreamReader, list[int]],
) -> None:
    channel, reader, _ = pipe
    channel.send(("last",))
    channel.close()  # what is queued goes out first
    assert await receive(reader) == [("last",)]
    assert await receive(reader) is None


def _fed(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_a_length_beyond_any_frame_is_refused_before_its_body_is_read() -> None:
    # Only the header follows: a reader that believed it would wait for (or buffer) 64 MiB and more.
    with pytest.raises(FrameError, match="announced"):
        await receive(_fed(struct.pack(">I", MAX_FRAME_BYTES + 1)))


@pytest.mark.parametrize("body", [b"not a pickle", pickle.dumps({"not": "a list"})])
async def test_a_body_that_is_no_list_of_messages_is_refused(body: bytes) -> None:
    with pytest.raises(FrameError):
        await receive(_fed(struct.pack(">I", len(body)) + body))
