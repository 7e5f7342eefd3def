"""Webhook sending on every core: ``notifier.workers`` child processes do the webhook POSTs (the parent's side).

The notifier process keeps everything durable and deciding: claims, lanes and their limits, retries, outcome
batches, reach and escalation, the deliveries feed, and e-mail (SMTP stays here). What a fan-out spends
most of its CPU on besides that, the HTTP exchange of each webhook (URL rules, signature, request bytes,
socket writes and reads, answer parsing), runs in the children (``webhook_worker.py``), each with keep-alive
pools of its own.

:class:`WebhookWorkers` is a :class:`~services.notifier.jobs.Sender`: the dispatcher hands it jobs as it
hands the in-process :class:`~services.notifier.webhooks.WebhookSender` them. Each job goes, as a plain tuple
(address, body, secret, Idempotency-Key, timeout), to the live child with the fewest attempts unanswered (in
flight or queued) among those with a share of the host's limit (below); the
child's answer resolves the future the dispatcher awaits. The jobs of one event-loop turn travel in one frame,
so a notice's body sent to many EOs is pickled once per frame. A child is live, and given attempts, once it
has said it is ready (its settings read, its pools made): one that dies at start (import error, bad settings,
out of memory) fails no attempt.

Each child keeps to its share of ``per_host_concurrency`` (the limit split among the ``workers`` children by their
number: 50 over 2 is 25 each; with fewer than ``workers``, some get none and are given none of that host's
attempts; ``workers`` beyond ``per_host_concurrency`` are never given any): ``per_host_concurrency`` attempts are
at most in flight to one host together. The dispatcher may then hand a host's attempts out ahead
(:attr:`WebhookWorkers.ahead` beyond the host's limit, as many as the live children take at once, while the
dispatcher's lanes hold at most half its global slots), each child queueing what exceeds its share and starting the
next one the moment one ends. Without it each attempt waited for the round trip through the notifier's event loop
(the answer read, the dispatcher's worker woken, the next attempt sent): a host's limit of attempts in flight then
spent much of its time between attempts (a 100,000-webhook fan-out to one host, limit 50, on PostgreSQL: 21 s
before, 19 s with attempts handed out ahead). An attempt queued in a child that dies fails with the ones in flight
there (it is retried, as they are, and counts as an attempt). While webhooks go out in this process (no child
live), it keeps to the host's limit itself; once a child is live again, attempts go to the children only when none
is in flight here.

A child that dies fails its attempts in flight with a transient error: the dispatcher retries them later with
the same Idempotency-Key (at least once, as always: the child may have sent some of them). So does one whose
answers cannot be read (a malformed frame): it is killed. It is restarted after a pause that grows while it
keeps dying (0.5 s, doubling, at most 10 s; back to 0.5 s once a restarted child has answered an attempt). A
child that hangs (attempts in flight, no answer for ``webhook_timeout_s`` + 5 s; or not ready that long after
its start) is killed, and so handled as one that died. While no child is live (all dead or starting, or
before :meth:`start`), webhooks are sent in the notifier process itself, by the same code as with
``workers = 1``: deliveries go on at the single-process pace rather than burning attempts and backing off (a
child that cannot start at all, e.g. a broken install, would otherwise dead-letter every webhook after
``max_attempts``). The children run in a session of their own and ignore SIGINT and SIGTERM: the signals
that stop the notifier (Ctrl-C, ``systemctl stop``, an init's group signal) leave their attempts in flight to
finish within the notifier's stop grace. Stopping the notifier then closes the children's input: they cancel
what they still have in flight and exit (killed after 5 s); none is restarted once the stop has begun.
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
from shared.keyed_limits import KeyedLimits
from shared.pipe_channel import Channel, receive, stop_child

__all__ = ["WebhookWorkers"]

log = logging.getLogger(__name__)

STOP_WAIT_S = 5.0
MAX_RESTART_PAUSE_S = 10.0
HANG_GRACE_S = 5.0
"""A child with attempts in flight that answers nothing for ``webhook_timeout_s`` plus this long is killed."""


def shares(limit: int, workers: int) -> list[int]:
    """Each child's share of a host's ``limit`` of attempts in flight, by the child's number: together exactly
    ``limit`` (50 over 2: 25 and 25; 5 over 3: 2, 2, 1; 1 over 2: 1 and 0)."""
    return [limit // workers + (1 if i < limit % workers else 0) for i in range(workers)]


class _Child:
    __slots__ = ("answered", "channel", "failures", "live", "name", "pending", "process", "progress_at", "share",
                 "spawned_at", "started")

    def __init__(self, name: str, share: int) -> None:
        self.name = name
        self.share = share  # of a host's per_host_concurrency: in flight at once to one host, at most
        self.process: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.live = False  # ready: given attempts (a spawned child is not, until it says it is ready)
        self.pending: dict[int, asyncio.Future[Outcome]] = {}
        self.failures = 0  # deaths in a row, for the restart pause
        self.answered = False
        self.progress_at = 0.0  # when it last answered, or was given work while it had none (monotonic)
        self.spawned_at = 0.0  # monotonic
        self.started = asyncio.Event()  # set once its first start ended: ready, dead, or not started at all


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
        self._limit = settings.per_host_concurrency
        self._children = [_Child(f"webhook-worker-{i}", share)
                          for i, share in enumerate(shares(self._limit, workers))]
        self._live: list[_Child] = []  # live, with a share of a host's limit: given attempts
        self._here_per_host = KeyedLimits()  # each host's limit, for the webhooks sent in this process
        self._here = 0  # attempts sent in this process and not answered yet
        self._changed = asyncio.Event()  # set (and replaced) as the last one here ends or the live children change
        self._numbers = itertools.count()
        self._keepers: list[asyncio.Task[None]] = []
        self._closing = False
        self.restarts = 0
        self.sent_in_process = 0

    # --- the Sender ---------------------------------------------------------------------------------

    @property
    def ahead(self) -> int:
        """Attempts of one host the dispatcher may hand out beyond its limit (queued in the children): as many as
        the live children take in flight together; none while webhooks go out in this process (or some still
        are in flight here: the children's attempts wait for those)."""
        return 0 if self._here else sum(child.share for child in self._live)

    def send(self, job: Job) -> Awaitable[Outcome]:
        live = self._live
        if not live:
            return self._send_here(job)
        if self._here:
            # Attempts still in flight here hold the hosts' limits here: a child given that host's attempts
            # meanwhile would add its share to them.
            return self._send_after_those_here(job)
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
                            self._timeout_s, job.lane, child.share))
        return future

    async def _send_here(self, job: Job) -> Outcome:
        """In this process, within the host's limit (the dispatcher hands a lane's attempts out ahead)."""
        self.sent_in_process += 1
        self._here += 1
        try:
            async with self._here_per_host.hold(job.lane, self._limit):
                return await self._in_process.send(job)
        finally:
            self._here -= 1
            if not self._here:
                self._notify()

    async def _send_after_those_here(self, job: Job) -> Outcome:
        # Until none is in flight here, or no child is live any more (then this one goes out here too).
        while self._here and self._live:
            await self._changed.wait()
        return await self.send(job)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def aclose(self) -> None:
        """Stop the children (their input closes; killed after 5 s) and close the in-process sender's pool."""
        self._closing = True  # none is restarted from now on
        keepers, self._keepers = self._keepers, []
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        await asyncio.gather(*(self._stop(child) for child in self._children), return_exceptions=True)
        await self._in_process.aclose()

    # --- the processes ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the children and keep them running until :meth:`aclose`; return once each is ready or has
        died (or could not start), at most ``webhook_timeout_s`` + 5 s (what is sent meanwhile goes out in
        this process)."""
        if self._keepers or self._closing:
            return
        await asyncio.gather(*(self._spawn(child) for child in self._children), return_exceptions=True)
        self._keepers = [asyncio.create_task(self._keep(child), name=child.name) for child in self._children]
        self._keepers.append(asyncio.create_task(self._watch(), name="webhook-workers-watch"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout_s + HANG_GRACE_S):
                await asyncio.gather(*(child.started.wait() for child in self._children))

    async def _watch(self) -> None:
        """Kill a child that has attempts in flight and has answered none for longer than an attempt may take
        (it hangs: stopped, or its loop blocked), or that has not said it is ready that long after its start;
        it is then buried and restarted like one that died, and its attempts are retried."""
        limit = self._timeout_s + HANG_GRACE_S
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for child in self._children:
                if child.process is None or child.channel is None:  # down (buried), or never started
                    continue
                if child.live and child.pending and now - child.progress_at > limit:
                    log.error("webhook worker %s answered nothing for %.0fs with %d attempts in flight: killing it",
                              child.name, now - child.progress_at, len(child.pending))
                elif not child.live and now - child.spawned_at > limit:
                    log.error("webhook worker %s was not ready %.0fs after its start: killing it", child.name,
                              now - child.spawned_at)
                else:
                    continue
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()

    def in_flight(self) -> dict[str, int]:
        """Per live child, the attempts it has not answered yet (in flight, or queued behind its share)."""
        return {c.name: len(c.pending) for c in self._children if c.live}

    def pids(self) -> dict[str, int]:
        """The process id of every live child."""
        return {c.name: c.process.pid for c in self._children if c.live and c.process is not None}

    async def _keep(self, child: _Child) -> None:
        while not self._closing:
            if child.channel is not None:  # spawned
                why = None
                try:
                    await self._serve(child)  # until the child's output closes: it died
                except Exception as exc:  # its answers cannot be read: it is killed, its attempts fail
                    log.exception("webhook worker %s sent what cannot be read: killing it", child.name)
                    why = f"was killed (its answers could not be read: {type(exc).__name__})"
                await self._bury(child, why)
                child.failures += 1
                self.restarts += 1
            if self._closing:
                return
            pause = min(self._restart_s * 2 ** max(0, child.failures - 1), MAX_RESTART_PAUSE_S)
            log.error("webhook worker %s is down (exit code %s); restarting it in %.1fs (meanwhile the others "
                      "send the webhooks, each within its own share of a host's limit)", child.name,
                      child.process.returncode if child.process else None, pause)
            await asyncio.sleep(pause)
            if not self._closing:
                await self._spawn(child)

    async def _spawn(self, child: _Child) -> None:
        try:
            # A session of its own: the signals sent to the notifier's process group do not reach it.
            process = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            log.error("webhook worker %s could not be started: %s", child.name, exc)
            child.failures += 1
            child.started.set()
            return
        assert process.stdin is not None
        child.process, child.channel = process, Channel(process.stdin)
        child.channel.send(("settings", self._fields, self._logs.level, self._logs.format))
        child.answered = False
        child.spawned_at = time.monotonic()

    async def _serve(self, child: _Child) -> None:
        assert child.process is not None and child.process.stdout is not None
        reader = child.process.stdout
        pending = child.pending
        while (batch := await receive(reader)) is not None:
            for message in batch:
                if message[0] != "outcome":
                    if message[0] == "ready":
                        self._ready(child)
                    else:
                        log.error("webhook worker %s: unknown message %r", child.name, message[0])
                    continue
                future = pending.pop(message[1], None)
                if future is not None and not future.done():
                    future.set_result(Outcome(message[2], message[3], message[4], message[5]))
                if not child.answered:
                    child.answered, child.failures = True, 0  # it works: a later death restarts it quickly again
            child.progress_at = time.monotonic()

    def _relist(self) -> None:
        """The live children with a share of a host's limit, in a list :meth:`send` reads on every attempt."""
        self._live = [c for c in self._children if c.live and c.share]
        self._notify()

    def _ready(self, child: _Child) -> None:
        if child.live or self._closing:
            return
        child.live = True
        self._relist()
        child.started.set()
        log.info("webhook worker %s ready (pid %s)", child.name, child.process.pid if child.process else None)

    async def _bury(self, child: _Child, why: str | None = None) -> None:
        """A child's output closed (or cannot be read): fail its attempts in flight (retried later), close its
        input, kill and reap it."""
        child.live = False
        self._relist()
        channel, child.channel = child.channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                channel.close()
        process = child.process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        child.started.set()
        why = why or f"died (exit code {process.returncode if process else None})"
        self._fail_pending(child, f"webhook worker {child.name} {why} before answering: will be retried "
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
        self._relist()
        process, channel = child.process, child.channel
        child.channel = None
        try:
            await stop_child(process, channel, wait_s=STOP_WAIT_S)  # it cancels its attempts and exits
        finally:
            self._fail_pending(child, f"the notifier stopped before webhook worker {child.name} answered")
