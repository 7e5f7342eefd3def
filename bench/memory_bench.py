"""Memory at scale: the RSS of each service once 100,000 registered EOs have reached all three.

Starts the procedure service, the notifier and the detector as processes (``luccs-fallback <service>
--config FILE``, SQLite files in a temporary folder) on the broker with a topic prefix
of their own, imports ``--eos`` EOs with ``luccs-fallback eos import`` (each with an e-mail and an AS4
endpoint, half with a webhook and its secret), and waits until the notifier holds every EO
(``luccs_notifier_registered_eos``) and the detector has read every registry record
(``luccs_detector_registry_records_total``), i.e. follows every EO's AS4 endpoint as a target. Then it
prints, for each service, its RSS when idle (after start), after the import and after catching up
(``--settle`` seconds later), and its peak (VmHWM). With ``--workers`` N > 1 the detector probes in N worker
processes (``detector.workers``): each worker gets a row of its own; so does each of the notifier's webhook
workers with ``--notifier-workers`` N > 1 (``notifier.workers``).

Wall-clock is not what it measures, so the figures hold on a loaded machine; still, the load average at the
start and at the end is printed beside them.

The detector's EO targets point at one loopback responder that answers every AS4 ping with a receipt (a
process of its own); ``--interval`` (default 3600 s) keeps the probing slow, so the figures are about
holding the targets, not probing them.

    .venv/bin/python -m bench.memory_bench                        # 100,000 EOs
    .venv/bin/python -m bench.memory_bench --eos 20000 --settle 30

The broker is ``--kafka`` (default ``$LUCCS_BENCH_KAFKA``, else ``$LUCCS_TEST_KAFKA``, else 127.0.0.1:19092).
Every wait is bounded (``--timeout``). Goal (issue 14): under 300 MiB per service once caught up, and at its peak.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from bench import checkout_env, luccs_fallback
from bench.notifier_bench import metric
from tests.support import free_port

TOKEN = "bench-operator-token"
SERVICES = ("procedure", "notifier", "detector")
GOAL_MIB = 300


def _status_mib(pid: int, field: str) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # gone (a worker restarted)
        return 0.0
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (the detector's probe workers, the notifier's webhook workers)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_responder(port: int) -> None:
    """Answers every request with an ebMS3 receipt (the detector bench's responder), one port."""
    from bench.detector_bench import _Responder

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(_Responder, "127.0.0.1", port, backlog=4096)
        await server.serve_forever()

    asyncio.run(serve())


def _write_eos(path: Path, count: int, as4_port: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            eo: dict[str, object] = {
                "eori": f"LU{i:010d}", "name": f"Operator {i}", "language": ("fr", "en", "de")[i % 3],
                "email": f"ops{i}@eo.example", "as4_endpoint": f"http://127.0.0.1:{as4_port}/msh/{i}",
            }
            if i % 2 == 0:
                eo |= {"webhook_url": f"https://hooks.eo.example/{i}", "webhook_secret": f"bench-secret-{i:012d}"}
            out.write(json.dumps(eo) + "\n")


def _wait(predicate: Callable[[], bool], timeout: float, what: str, processes: dict[str, subprocess.Popen[bytes]],
          tmp: Path) -> float:
    started = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        for name, process in processes.items():
            if process.poll() is not None:
                raise SystemExit(f"the {name} exited ({process.returncode}): see {tmp / f'{name}.log'}")
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what} (logs in {tmp})")
        time.sleep(0.5)


def main(args: argparse.Namespace) -> None:
    script = luccs_fallback()[0]
    tmp = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    ports = {name: free_port() for name in SERVICES}
    as4_port = free_port()
    config = tmp / "luccs.toml"
    config.write_text(f"""
data_dir = "{tmp}"
[logging]
level = "WARNING"
[api]
operator_tokens = ["{TOKEN}"]
[kafka]
bootstrap_servers = "{args.kafka}"
topic_prefix = "bench-memory-{uuid.uuid4().hex[:8]}"
[procedure]
port = {ports['procedure']}
notifier_url = ""
[notifier]
port = {ports['notifier']}
registry_catchup_s = {args.timeout}
workers = {args.notifier_workers}
[detector]
port = {ports['detector']}
interval_s = {args.interval}
workers = {args.workers}
""", encoding="utf-8")
    data = tmp / "eos.ndjson"
    _write_eos(data, args.eos, as4_port)
    print(f"memory benchmark: {args.eos:,} EOs, broker {args.kafka}, detector interval {args.interval:g} s, "
          f"{args.workers} detector worker{'s' if args.workers > 1 else ''}, {args.notifier_workers} notifier "
          f"worker{'s' if args.notifier_workers > 1 else ''}; {_load()}", flush=True)
    responder = mp.get_context("spawn").Process(target=run_responder, args=(as4_port,), daemon=True)
    responder.start()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: (tmp / f"{name}.log").open("wb") for name in SERVICES}
    try:
        for name in SERVICES:
            processes[name] = subprocess.Popen([script, name, "--config", str(config)], stdout=logs[name],
                                               stderr=subprocess.STDOUT, env=checkout_env())
        url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        for name in SERVICES:
            _wait(lambda name=name: httpx.get(f"{url[name]}/readyz", timeout=2).status_code == 200,  # type: ignore[misc]
                  args.timeout, f"the {name} to be ready", processes, tmp)
        figures: dict[str, dict[str, float]] = {name: {} for name in SERVICES}
        children: dict[str, int] = {}  # row name -> pid: the detector's probe workers, the notifier's webhook ones
        for service, count, row in (("detector", args.workers, "worker"), ("notifier", args.notifier_workers,
                                                                           "webhook")):
            if count > 1:
                pid = processes[service].pid
                _wait(lambda pid=pid, count=count: len(_children(pid)) >= count,  # type: ignore[misc]
                      args.timeout, f"the {service}'s {count} workers to start", processes, tmp)
                children |= {f"{row} {i + 1}": child for i, child in enumerate(_children(pid))}
        figures |= {name: {} for name in children}

        def pids() -> dict[str, int]:
            return {name: process.pid for name, process in processes.items()} | children

        def sample(label: str) -> None:
            for name, pid in pids().items():
                figures[name][label] = _status_mib(pid, "VmRSS")

        sample("idle")
        started = time.monotonic()
        done = subprocess.run([script, "eos", "import", str(data), "--url", url["procedure"], "--token", TOKEN,
                               "--keys-out", str(tmp / "keys.ndjson")], capture_output=True, text=True, check=False,
                              env=checkout_env())
        imported_s = time.monotonic() - started
        summary = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.startswith("created")]
        print(f"  import: {imported_s:.1f} s; {summary[-1] if summary else done.stderr[-500:]}", flush=True)
        sample("imported")

        def scraped(name: str, metric_name: str) -> float:
            return metric(httpx.get(f"{url[name]}/metrics", timeout=30).text, metric_name)

        notifier_s = _wait(lambda: scraped("notifier", "luccs_notifier_registered_eos") >= args.eos,
                           args.timeout, "the notifier to hold every EO", processes, tmp)
        detector_s = _wait(lambda: scraped("detector", "luccs_detector_registry_records_total") >= args.eos,
                           args.timeout, "the detector to read every registry record", processes, tmp)
        notifier_at, detector_at = imported_s + notifier_s, imported_s + notifier_s + detector_s
        print(f"  caught up {notifier_at:.1f} s (notifier) and {detector_at:.1f} s (detector) after the import "
              f"started; settling {args.settle:g} s", flush=True)
        time.sleep(args.settle)
        sample("caught up")
        for name, pid in pids().items():
            figures[name]["peak"] = _status_mib(pid, "VmHWM")
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs.values():
            log.close()
        responder.terminate()
    shutil.rmtree(tmp, ignore_errors=True)  # kept when the run failed: its messages name the logs in it
    print(f"\n  {'service':<10} {'idle':>9} {'imported':>9} {'caught up':>10} {'peak':>9}   "
          f"goal: < {GOAL_MIB} MiB caught up, and at the peak")
    for name in figures:
        f = figures[name]
        verdict = ("met" if f["caught up"] < GOAL_MIB else "NOT met") + (
            ", peak too" if f["peak"] < GOAL_MIB else ", NOT at the peak")
        print(f"  {name:<10} {f['idle']:>5.0f} MiB {f['imported']:>5.0f} MiB {f['caught up']:>6.0f} MiB "
              f"{f['peak']:>5.0f} MiB   {verdict}")
    print(f"  ({_load()}; logs in {tmp})")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kafka", default=os.environ.get("LUCCS_BENCH_KAFKA")
                        or os.environ.get("LUCCS_TEST_KAFKA") or "127.0.0.1:19092")
    parser.add_argument("--eos", type=int, default=100_000)
    parser.add_argument("--interval", type=float, default=3600.0, help="detector.interval_s")
    parser.add_argument("--workers", type=int, default=1, help="detector.workers (probe processes)")
    parser.add_argument("--notifier-workers", type=int, default=1,
                        help="notifier.workers (webhook sending processes; each gets a row, 'webhook N')")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds between catching up and sampling")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on every wait, in seconds")
    cli_args = parser.parse_args()
    main(cli_args)


if __name__ == "__main__":
    cli()
