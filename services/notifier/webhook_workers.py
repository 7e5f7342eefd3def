"""Webhook sending on every core: ``notifier.workers`` child processes do the webhook POSTs (the parent's side).

The notifier process keeps everything durable and deciding: claims, lanes and their limits, retries, outcome
batches, reach and escalation, the deliveries feed, and e-mail (SMTP stays here). What a fan-out spends
most of its CPU on besides that, the HTTP exchange of each webhook (URL rules, signature, request bytes,
socket writes and reads, answer parsing), runs in the children (``webhook_worker.py``), each with keep-alive
pools of its own.

:class:`WebhookWorkers` is a :class:`~services.notifier.jobs.Sender`: the dispatcher hands it jobs as it
hands the in-process :class:`~services.notifier.webhooks.WebhookSender` them. Each job goes, as a plain tuple
(address, body, secret, Idempotency-Key, timeout), to the live child with the fewest attempts in flight; the
child's answer resolves the future the dispatcher awaits. The jobs of one event-loop turn travel in one frame,
so a notice's body sent to many EOs is pickled once per frame.

A child that dies fails its attempts in flight with a transient error: the dispatcher retries them later with
the same Idempotency-Key (at least once, as always: the child may have sent some of them). It is restarted
after a pause that grows while it keeps dying (0.5 s, doubling, at most 10 s; back to 0.5 s once a restarted
child has answered). A child that hangs (attempts in flight, no answer for ``webhook_timeout_s`` + 5 s) is
killed, and so handled as one that died. While no child is live (all dead, or before :meth:`start`),
webhooks are sent in the notifier process itself, by the same code as with ``workers = 1``: deliveries go on
at the single-process pace rather than burning attempts and backing off (a child that cannot start at all,
e.g. a broken install, would otherwise dead-letter every webhook after ``max_attempts``). Stopping the
notifier closes the children's input: they cancel what they have in flight and exit (killed after 5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
import time
from collections.abc import Awaitable

from services.notifier.jobs import Job, Outcome
from services.notifier.webhook_worker import SENDING_FIELDS
from services.notifier.webhooks import WebhookSender
from shared.config import LoggingSettings, NotifierSettings
from shared.pipe_channel import Channel, receive

__all__ = ["WebhookWorkers"]

log = logging.getLogger(__name__)

STOP_WAIT_S = 5.0
MAX_RESTART_PAUSE_S = 10.0
HANG_GRACE_S = 5.0
"""A child with attempts in flight that answers nothing for ``webhook_timeout_s`` plus this long is killed."""


class _Child:
    __slots__ = ("answered", "channel", "failures", "live", "name", "pending", "process", "progress_at")

    def __init__(self, name: str) -> None:
        self.name = name
        self.process: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.live = False
        self.pending: dict[int, asyncio.Future[Outcome]] = {}
        self.failures = 0  # deaths in a row, for the restart pause
        self.answered = False
        self.progress_at = 0.0  # when it last answered, or was given work while it had none (monotonic)


class WebhookWorkers:
    """Sends webhooks through ``workers`` child processes (see the module docstring)."""

    def __init__(
        self,
        *,
        workers: int,
        settings: NotifierSettings,
        in_process: WebhookSender,
        logs: LoggingSettings | None = None,
        command: list[str] | None = None,
        restart_s: float = 0.5,
    ) -> None:
        if workers < 2:
            raise ValueError("webhook workers are for notifier.workers >= 2 (1: send in the notifier process)")
        self._timeout_s = settings.webhook_timeout_s
        self._fields = settings.model_dump(include=set(SENDING_FIELDS))
        self._in_process = in_process
        self._logs = logs or LoggingSettings()
        self.command = command or [sys.executable, "-m", "services.notifier.webhook_worker"]
        """The child's command line (a test points it at something that cannot start)."""
        self._restart_s = restart_s
        self._children = [_Child(f"webhook-worker-{i}") for i in range(workers)]
        self._live: list[_Child] = []
        self._numbers = itertools.count()
        self._keepers: list[asyncio.Task[None]] = []
        self.restarts = 0
        self.sent_in_process = 0

    # --- the Sender ---------------------------------------------------------------------------------

    def send(self, job: Job) -> Awaitable[Outcome]:
        live = self._live
        if not live:
            self.sent_in_process += 1
            return self._in_process.send(job)
        child = live[0]
        if len(live) > 1:
            load = len(child.pending)
            for other in live:
                if len(other.pending) < load:
                    child, load = other, len(other.pending)
        assert child.channel is not None
        n = next(self._numbers)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        if not child.pending:
            child.progress_at = time.monotonic()
        child.pending[n] = future
        child.channel.send(("post", n, job.address, job.webhook_body, job.webhook_secret, job.idempotency_key,
                            self._timeout_s))
        return future

    async def aclose(self) -> None:
        """Stop the children (their input closes; killed after 5 s) and close the in-process sender's pool."""
        keepers, self._keepers = self._keepers, []
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        await asyncio.gather(*(self._stop(child) for child in self._children), return_exceptions=True)
        await self._in_process.aclose()

    # --- the processes ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the children (live once spawned: what is sent before a child has read its settings waits in
        its pipe) and keep them running until :meth:`aclose`."""
        if self._keepers:
            return
        await asyncio.gather(*(self._spawn(child) for child in self._children), return_exceptions=True)
        self._keepers = [asyncio.create_task(self._keep(child), name=child.name) for child in self._children]
        self._keepers.append(asyncio.create_task(self._watch(), name="webhook-workers-watch"))

    async def _watch(self) -> None:
        """Kill a child that has attempts in flight and has answered none for longer than an attempt may take
        (it hangs: stopped, or its loop blocked); it is then buried and restarted like one that died, and its
        attempts are retried."""
        limit = self._timeout_s + HANG_GRACE_S
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for child in self._live:
                if child.pending and now - child.progress_at > limit and child.process is not None:
                    log.error("webhook worker %s answered nothing for %.0fs with %d attempts in flight: killing it",
                              child.name, now - child.progress_at, len(child.pending))
                    with contextlib.suppress(ProcessLookupError):
                        child.process.kill()

    def in_flight(self) -> dict[str, int]:
        """Per live child, the attempts it has not answered yet."""
        return {c.name: len(c.pending) for c in self._live}

    def pids(self) -> dict[str, int]:
        """The process id of every live child."""
        return {c.name: c.process.pid for c in self._children if c.live and c.process is not None}

    async def _keep(self, child: _Child) -> None:
        while True:
            if child.live:
                await self._serve(child)  # until the child's output closes: it died
                await self._bury(child)
                child.failures += 1
                self.restarts += 1
            pause = min(self._restart_s * 2 ** max(0, child.failures - 1), MAX_RESTART_PAUSE_S)
            log.error("webhook worker %s is down (exit code %s); restarting it in %.1fs (meanwhile its share of "
                      "webhooks goes to the others)", child.name,
                      child.process.returncode if child.process else None, pause)
            await asyncio.sleep(pause)
            await self._spawn(child)
            if child.live:
                log.info("webhook worker %s restarted (pid %s)", child.name,
                         child.process.pid if child.process else None)

    async def _spawn(self, child: _Child) -> None:
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
            )
        except OSError as exc:
            log.error("webhook worker %s could not be started: %s", child.name, exc)
            child.failures += 1
            return
        assert process.stdin is not None
        child.process, child.channel = process, Channel(process.stdin)
        child.channel.send(("settings", self._fields, self._logs.level, self._logs.format))
        child.answered = False
        child.live = True
        self._live = [c for c in self._children if c.live]

    async def _serve(self, child: _Child) -> None:
        assert child.process is not None and child.process.stdout is not None
        reader = child.process.stdout
        pending = child.pending
        while (batch := await receive(reader)) is not None:
            for message in batch:
                if message[0] != "outcome":
                    log.error("webhook worker %s: unknown message %r", child.name, message[0])
                    continue
                future = pending.pop(message[1], None)
                if future is not None and not future.done():
                    future.set_result(Outcome(message[2], message[3], message[4], message[5]))
            child.progress_at = time.monotonic()
            if not child.answered:
                child.answered, child.failures = True, 0  # it works: a later death restarts it quickly again

    async def _bury(self, child: _Child) -> None:
        """A child's output closed: fail its attempts in flight (retried later), close its input, reap it."""
        child.live = False
        self._live = [c for c in self._children if c.live]
        channel, child.channel = child.channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                channel.close()
        process = child.process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        self._fail_pending(child, f"webhook worker {child.name} died (exit code "
                                  f"{process.returncode if process else None}) before answering: will be retried "
                                  "with the same Idempotency-Key")

    @staticmethod
    def _fail_pending(child: _Child, error: str) -> None:
        pending, child.pending = child.pending, {}
        outcome = Outcome.failed(error)
        for future in pending.values():
            if not future.done():
                future.set_result(outcome)

    async def _stop(self, child: _Child) -> None:
        child.live = False
        self._live = [c for c in self._children if c.live]
        process, channel = child.process, child.channel
        child.channel = None
        try:
            if process is None or process.returncode is not None:
                return
            if channel is not None:
                with contextlib.suppress(Exception):
                    channel.close()  # its input closes: it cancels its attempts and exits
            try:
                async with asyncio.timeout(STOP_WAIT_S):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        finally:
            self._fail_pending(child, f"the notifier stopped before webhook worker {child.name} answered")
