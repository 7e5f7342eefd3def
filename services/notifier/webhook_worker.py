"""A webhook worker process (``notifier.workers`` > 1): it POSTs the webhooks the notifier process hands it.

The worker applies the URL rules, signs, and POSTs over keep-alive pools of its own (``webhooks.py``,
``webhook_http.py``: the code the notifier runs with ``workers = 1``), and answers each job's outcome. It
keeps nothing durable and decides nothing: claims, lanes, retries, outcomes and e-mail stay in the notifier
process (``webhook_workers.py``). Started as ``python -m services.notifier.webhook_worker``; its settings come
in the first frame (never on the command line: they may name files and hosts an operator keeps to himself);
it exits when its input closes (the notifier stopped or died), and only then: it ignores SIGINT and SIGTERM,
which a Ctrl-C, ``systemctl stop`` or an init's group signal sends to every process of the notifier at once,
so that its attempts in flight finish within the notifier's own stop grace (the notifier also starts it in a
session of its own). Logs go to stderr.

Protocol: the framing of :mod:`shared.pipe_channel`. Parent to worker: ``("settings", fields, log_level,
log_format)`` first (``fields``: the ``[notifier]`` settings the sending needs), then ``("post", n, address,
body, secret, idempotency_key, timeout_s, lane, share)`` per attempt (``lane``: the host; ``share``: how many
of that host's attempts this worker may have in flight at once, its share of ``per_host_concurrency``: what
it is given beyond that waits here for one to end). Worker to parent: ``("ready",)`` once it is
configured (the parent gives it attempts only from then on: one that dies at start fails none), then
``("outcome", n, ok, error, http_status, permanent)`` per attempt (the fields of
:class:`~services.notifier.jobs.Outcome`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

from services.notifier.jobs import Outcome
from services.notifier.webhook_http import WebhookHttpClient
from services.notifier.webhooks import WebhookSender, webhook_ssl_context
from shared.config import NotifierSettings
from shared.eventloop import run
from shared.gc_settle import GcSettler
from shared.keyed_limits import KeyedLimits
from shared.logging import bind_service, configure_logging
from shared.pipe_channel import Channel, Message, child_channel, handle_frames, reserve_stdout

log = logging.getLogger(__name__)

SENDING_FIELDS = frozenset({
    "allow_insecure_webhooks", "allow_private_webhooks", "webhook_timeout_s", "per_host_concurrency",
    "webhook_ca_file",
})
"""The ``[notifier]`` settings a worker is sent: those that sending a webhook reads."""


class WebhookWorker:
    """The worker's side: one task per attempt, at most its share of a host's attempts in flight at once, each
    outcome sent back with the attempt's number."""

    def __init__(self, channel: Channel, *, settler: GcSettler | None = None) -> None:
        self._channel = channel
        self._settler = settler
        self._sender: WebhookSender | None = None
        self._attempts: set[asyncio.Task[None]] = set()
        self._shares = KeyedLimits()  # per host: at most its share in flight here

    def handle(self, message: Message) -> None:
        kind = message[0]
        if kind == "post":
            task = asyncio.create_task(self._post(*message[1:]))
            self._attempts.add(task)
            task.add_done_callback(self._attempts.discard)
        elif kind == "settings":
            self._configure(message[1], message[2], message[3])
        else:
            log.error("webhook worker: unknown message %r", kind)

    def _configure(self, fields: dict[str, Any], log_level: str, log_format: Any) -> None:
        configure_logging(level=log_level, log_format=log_format, stream=sys.stderr)
        bind_service(f"notifier-webhook-worker-{os.getpid()}")
        settings = NotifierSettings.model_validate(fields)
        client = WebhookHttpClient(
            allow_private=settings.allow_private_webhooks, ssl_context=webhook_ssl_context(settings),
            max_idle_per_origin=settings.per_host_concurrency,
        )
        self._sender = WebhookSender(settings=settings, client=client)
        if self._settler is not None:
            self._settler.settle()  # what the start built (modules, settings, pools) frozen before any attempt
        self._channel.send(("ready",))

    async def _post(
        self, n: int, address: str, body: bytes | None, secret: str | None, idempotency_key: str, timeout_s: float,
        lane: str, share: int,
    ) -> None:
        try:
            async with self._shares.hold(lane, share):
                if self._sender is None:
                    raise RuntimeError("no settings received before the first webhook")
                outcome = await self._sender.post(address=address, body=body, secret=secret,
                                                  idempotency_key=idempotency_key, timeout_s=timeout_s)
        except Exception as exc:  # the parent must hear of every attempt, whatever happened to it
            log.exception("webhook worker: attempt %s failed unexpectedly", n)
            outcome = Outcome.failed(f"{type(exc).__name__}: {exc}")
        self._channel.send(("outcome", n, *outcome))

    async def aclose(self) -> None:
        for task in self._attempts:
            task.cancel()
        await asyncio.gather(*self._attempts, return_exceptions=True)
        if self._sender is not None:
            await self._sender.aclose()


async def _serve(out_fd: int) -> None:
    reader, channel = await child_channel(out_fd)
    settler = GcSettler().install()  # the collector's cost kept off the sending, as in the notifier (gc_settle.py)
    worker = WebhookWorker(channel, settler=settler)
    try:
        await handle_frames(reader, channel, worker.handle)
    finally:
        await worker.aclose()
        settler.close()
        with contextlib.suppress(Exception):
            channel.close()


def main() -> None:
    # Stopped by the notifier alone (its input closes; killed after its grace), not by the signals that stop it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The protocol gets stdout's pipe to itself; anything printed by a library goes to stderr instead.
    out_fd = reserve_stdout()
    run(_serve(out_fd))


if __name__ == "__main__":
    main()
