"""One outage, one story: ADA B2G and NTP fail (and return) at the same instant, N times, with the defaults.

Starts the simulator and the three services as processes, with the default detection settings (probe
interval, timeout, thresholds, retry interval: nothing set in the config), registers ``--eos`` EOs whose
webhooks point at a receiver in this process, then repeats: switch ADA AS4 and NTP to ``refuse`` in one
request, wait until the EOs were told of the national procedure and it stands in scenario 3, switch both
back in one request, wait until they were told it closed. It counts the runs (and EOs) that were ever told
scenario 2 during a joint failure, and the runs whose return went 3 -> 2 -> closed instead of 3 -> closed,
and reports outage -> first EO notice (``opened``) and return -> ``closed`` notice.

    python -m bench.joint_outage_bench --bootstrap 127.0.0.1:9092 [--runs 50] [--eos 10]
    python -m bench.joint_outage_bench --only ada-as4     # ADA B2G alone: scenario 2, the detection time

Every wait is bounded (``--timeout`` per step); nothing here fails on a number.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import httpx

from bench.launcher import running_pipeline, wait_for, wait_status
from shared.config import KafkaSettings
from shared.kafka import ensure_topics
from tests.support import ReceivedWebhook, WebhookReceiver


@dataclass
class Run:
    failed_at: float
    first_notice_s: float
    failure_story: list[str]  # the national notices one EO got, e.g. ["opened:LUCCS_UNAVAILABLE"]
    eos_told_scenario_2: int
    returned_at: float
    closed_notice_s: float
    return_story: list[str]


def _story(hooks: list[ReceivedWebhook]) -> list[str]:
    out = []
    for hook in hooks:
        data = hook.event["data"]
        if data.get("scope") == "national":
            out.append(f"{hook.event['type'].rsplit('.', 1)[-1]}:{data['scenario']}")
    return out


def _national(receiver: WebhookReceiver, path: str, since: int) -> list[ReceivedWebhook]:
    with receiver._lock:
        hooks = [h for h in receiver.received[since:] if h.path == path]
    return sorted(hooks, key=lambda h: h.event["time"])


async def main(args: argparse.Namespace) -> None:
    prefix = f"joint-bench-{uuid.uuid4().hex[:8]}"
    await ensure_topics(KafkaSettings(bootstrap_servers=args.bootstrap, topic_prefix=prefix))
    runs: list[Run] = []
    eoris = [f"LU{9000000000 + n}" for n in range(args.eos)]
    targets = "all" if args.only is None else args.only
    async with running_pipeline(bootstrap=args.bootstrap, prefix=prefix) as pipeline:
        client = pipeline.client
        for eori in eoris:
            await pipeline.register_eo(eori, name=f"Bench EO {eori}", path=f"/{eori}")
        await wait_status(client, pipeline.status_url, {"ada_b2g": "up", "ntp": "up"}, timeout_s=args.timeout)
        await asyncio.sleep(3)  # the notifier has read the EOs by now
        what = "ADA AS4 and NTP" if targets == "all" else targets
        print(f"joint outage: {args.runs} runs, {what} refusing at once, {args.eos} EOs, default detection "
              "settings", flush=True)
        for n in range(args.runs):
            runs.append(await _one_run(client, pipeline.control, pipeline.status_url, pipeline.receiver, eoris,
                                       targets, args))
            r = runs[-1]
            print(f"  run {n + 1:>3}: outage -> notice {r.first_notice_s:5.2f} s {r.failure_story}; "
                  f"return -> notice {r.closed_notice_s:5.2f} s {r.return_story}", flush=True)
    _report(runs, targets)


async def _one_run(client: httpx.AsyncClient, control: str, status_url: str, receiver: WebhookReceiver,
                   eoris: list[str], targets: str, args: argparse.Namespace) -> Run:
    watched = f"/{eoris[0]}"
    since = len(receiver.received)
    expected = "LUCCS_UNAVAILABLE" if targets == "all" else "ADA_B2G_UNAVAILABLE"
    # The probes run at fixed phases and this loop follows them: without a random pause every run would
    # fail the channels at the same point of the probe interval, and tell the same story.
    await asyncio.sleep(random.uniform(0, args.interval))
    failed_at = time.time()
    (await client.post(f"{control}/{targets}/refuse")).raise_for_status()
    await wait_for(lambda: bool(_national(receiver, watched, since)), args.timeout, "first notice")
    first_notice = time.time() - failed_at
    down = {"ada_b2g": "down", "ntp": "down" if targets == "all" else "up"}
    await wait_status(client, status_url, down, timeout_s=args.timeout)
    await wait_for(lambda: _scenario_is(receiver, watched, since, expected), args.timeout, f"{expected} notice")
    await asyncio.sleep(args.settle)  # room for a late, contradictory notice to show up
    with receiver._lock:
        told = {h.path for h in receiver.received[since:] if h.event["data"].get("scope") == "national"
                and h.event["data"].get("scenario") == "ADA_B2G_UNAVAILABLE"}
    failure_story = _story(_national(receiver, watched, since))

    since = len(receiver.received)
    await asyncio.sleep(random.uniform(0, args.interval))
    returned_at = time.time()
    (await client.post(f"{control}/{targets}/ok")).raise_for_status()
    await wait_for(lambda: any(h.event["type"] == "luccs.procedure.closed"
                               for h in _national(receiver, watched, since)), args.timeout, "closed notice")
    closed_notice = time.time() - returned_at
    await wait_status(client, status_url, {"ada_b2g": "up", "ntp": "up"}, timeout_s=args.timeout)
    await asyncio.sleep(args.settle)
    return Run(failed_at, first_notice, failure_story, len(told) if targets == "all" else 0, returned_at,
               closed_notice, _story(_national(receiver, watched, since)))


def _scenario_is(receiver: WebhookReceiver, path: str, since: int, scenario: str) -> bool:
    hooks = _national(receiver, path, since)
    return bool(hooks) and hooks[-1].event["data"]["scenario"] == scenario


def _report(runs: list[Run], targets: str) -> None:
    def line(name: str, values: list[float]) -> None:
        cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
        print(f"  {name:<40} p50 {statistics.median(values):6.2f} s  p99 {cuts[98]:6.2f} s  "
              f"min {min(values):6.2f} s  max {max(values):6.2f} s")

    print(f"{len(runs)} runs:")
    line("outage -> first EO notice", [r.first_notice_s for r in runs])
    line("return -> closed notice", [r.closed_notice_s for r in runs])
    if targets == "all":
        first_s2 = sum(1 for r in runs if r.failure_story[:1] == ["opened:ADA_B2G_UNAVAILABLE"])
        ever_s2 = sum(1 for r in runs if any("ADA_B2G_UNAVAILABLE" in s for s in r.failure_story))
        stepped = sum(1 for r in runs if any(s == "updated:ADA_B2G_UNAVAILABLE" for s in r.return_story))
        print(f"  joint failures with a scenario-2 notice first: {first_s2} of {len(runs)} "
              f"(ever told scenario 2: {ever_s2} runs, {sum(r.eos_told_scenario_2 for r in runs)} EO notices)")
        print(f"  joint returns with a 3 -> 2 step: {stepped} of {len(runs)}")
    print("  stories:", dict(Counter(" ".join(r.failure_story) + " | " + " ".join(r.return_story) for r in runs)))


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=os.environ.get("LUCCS_BENCH_KAFKA", "127.0.0.1:9092"))
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--eos", type=int, default=10)
    parser.add_argument("--only", choices=["ada-as4"], default=None,
                        help="fail this endpoint alone instead of ADA AS4 and NTP together")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="the probe interval (the default's): each step starts at a random point within it")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds to wait for late notices after each step")
    parser.add_argument("--timeout", type=float, default=90.0, help="bound of every wait, in seconds")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
