"""A Kafka client whose start is cancelled half-way leaves no connection open.

aiokafka's bootstrap holds its first connection in a local variable until the broker's metadata comes back;
a start cancelled then left that connection open, and the garbage collector warned about it later, during
whichever test was running (clean-clone runs on a loaded machine: a service stopped while its consumer was
still starting). Here the cancel lands in that window every time: the test waits until the bootstrap is
awaiting the broker's answer.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from shared.config import KafkaSettings
from shared.kafka import start_client

CLIENTS: dict[str, Callable[[str], Any]] = {
    "consumer": lambda servers: AIOKafkaConsumer(bootstrap_servers=servers, group_id=None),
    "producer": lambda servers: AIOKafkaProducer(bootstrap_servers=servers),
    "admin": lambda servers: AIOKafkaAdminClient(bootstrap_servers=servers),
}


def _awaiting(task: asyncio.Task[Any]) -> list[str]:
    """The names of the coroutines ``task`` is suspended in, outermost first."""
    names: list[str] = []
    coroutine: Any = task.get_coro()
    while coroutine is not None and getattr(coroutine, "cr_frame", None) is not None:
        names.append(coroutine.cr_code.co_name)
        coroutine = coroutine.cr_await
    return names


async def _bootstrap_waiting_for_the_broker() -> None:
    async with asyncio.timeout(10):
        while not any(names[-2:] == ["bootstrap", "wait_for"] for names in map(_awaiting, asyncio.all_tasks())):
            await asyncio.sleep(0)


@pytest.mark.parametrize("kind", sorted(CLIENTS))
async def test_a_start_cancelled_while_the_broker_answers_its_bootstrap_leaves_no_connection_open(
    kind: str, kafka_bootstrap: str
) -> None:
    client = CLIENTS[kind](kafka_bootstrap)

    async def run() -> None:
        try:
            await start_client(client, KafkaSettings(bootstrap_servers=kafka_bootstrap))
        finally:
            await (client.close() if kind == "admin" else client.stop())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = asyncio.create_task(run())
        await _bootstrap_waiting_for_the_broker()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)  # the broker's answer arrives; a connection nobody holds is then collected
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
