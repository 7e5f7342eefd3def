"""Detector benchmark: probes per second, scheduler lag, CPU and memory at 1,000 and 5,000 targets.

For each target count N, two processes are started:

* a responder: a raw asyncio HTTP/1.1 server listening on ``--ports`` loopback ports, answering any GET
  with ``200 ok`` and any POST with an ebMS3 receipt (targets share ports, with distinct paths); pinned to
  ``--server-cpu``;
* the detector: the real scheduler, prober, state machine, latest-state buffer (the broker replaced by a counter) and
  write-behind of target states to a SQLite file in a temporary folder (``--database URL`` for another,
  e.g. PostgreSQL; ``--no-database`` for none) probing N targets, half ``http`` and half ``as4``, every
  ``--interval`` seconds; pinned to ``--cpu``.

After a warm-up of one interval, it measures for ``--duration`` seconds and prints, per N: probes per
second (completed), scheduler lag p50/p99/max (due to started, concurrency waits included), the
detector's CPU (share of one core) and resident memory, the target states saved per second and the p99
duration of one batch save, and the probe results by reason.

    .venv/bin/python -m bench.detector_bench                       # N = 1000 and 5000, 10 s, 30 s each
    .venv/bin/python -m bench.detector_bench --targets 5000 --duration 60
    .venv/bin/python -m bench.detector_bench --tls                 # HTTPS targets: a handshake per probe
    .venv/bin/python -m bench.detector_bench --as4-signed --targets 1000   # as4 only: unsigned, then signed

``--workers N`` runs the detector with ``detector.workers = N`` (probe processes; the detector is then not
pinned, and its CPU and RSS include the workers'); the row also gives the share of the schedule kept
(probes/s against N targets / interval). ``--vantage INSTANCES:K`` then runs INSTANCES detectors in one
process with ``vantage_points = K`` over ``--vantage-eos`` EO endpoints (the live set handed to them, no
broker) and prints how many instances probe each EO endpoint and how often it is probed per interval:

    .venv/bin/python -m bench.detector_bench --targets 40000 --workers 2 --vantage 3:2

``--as4-signed`` probes only ``as4`` targets and runs each N twice, unsigned pings then signed ones (RSA
2048, ``as4_signing`` with a partner certificate): the responder is then a receiving MSH by the ``as4``
package (a test dependency) that verifies each signature and answers with a signed receipt, which the
detector verifies. Keys and certificates are made for the run in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from shared import eventloop

RECEIPT = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" '
    b'xmlns:eb="http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/">'
    b'<env:Header><eb:Messaging env:mustUnderstand="true"><eb:SignalMessage><eb:MessageInfo>'
    b"<eb:Timestamp>2024-01-01T00:00:00.000Z</eb:Timestamp><eb:MessageId>bench-receipt@bench</eb:MessageId>"
    b"</eb:MessageInfo><eb:Receipt/></eb:SignalMessage></eb:Messaging></env:Header><env:Body/></env:Envelope>"
)


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n".encode()
        + b"Content-Type: " + content_type + b"\r\n\r\n" + body
    )


GET_ANSWER = _response("200 OK", b"text/plain", b"ok")
POST_ANSWER = _response("200 OK", b"application/soap+xml; charset=UTF-8", RECEIPT)


class _Responder(asyncio.Protocol):
    """Reads one request (head, then Content-Length bytes of body) and answers it, then closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport's
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buffer[:head_end].lower()
        length = 0
        marker = head.find(b"content-length:")
        if marker >= 0:
            length = int(head[marker + 15 :].split(b"\r\n", 1)[0])
        if len(self.buffer) - head_end - 4 < length:
            return
        if self.buffer.startswith(b"POST") and _MSH is not None:
            body = self.buffer[head_end + 4 : head_end + 4 + length]
            answer = _response("200 OK", b"application/soap+xml; charset=UTF-8", _MSH.answer(body))
        else:
            answer = POST_ANSWER if self.buffer.startswith(b"POST") else GET_ANSWER
        self.transport.write(answer)
        self.transport.close()


_MSH: Any = None  # the signing MSH of --as4-signed runs (tests.as4_msh.ReceivingMsh)


def _signing_files(directory: Path) -> None:
    """Our signing key and certificate and the partner's, issued by a throw-away CA (a test helper)."""
    from tests.as4_msh import Pki

    pki = Pki()
    pki.issue("luccs-fallback bench").write(directory, "ours")
    pki.issue("bench MSH").write(directory, "partner")


def _load_msh(directory: Path) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from tests.as4_msh import Identity, ReceivingMsh

    def load(name: str) -> Identity:
        key = serialization.load_pem_private_key((directory / f"{name}.key.pem").read_bytes(), None)
        cert = x509.load_pem_x509_certificate((directory / f"{name}.cert.pem").read_bytes())
        return Identity(key, cert)  # type: ignore[arg-type]

    return ReceivingMsh(load("partner"), trusted_senders=[load("ours").certificate])


async def _serve(ports: int, cert_dir: str | None, signing_dir: str | None) -> None:
    global _MSH
    if signing_dir is not None:
        _MSH = _load_msh(Path(signing_dir))
    loop = asyncio.get_running_loop()
    context = None
    if cert_dir is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(Path(cert_dir) / "server.pem"))
    servers = [
        await loop.create_server(_Responder, "127.0.0.1", 0, backlog=4096, ssl=context) for _ in range(ports)
    ]
    print(json.dumps([s.sockets[0].getsockname()[1] for s in servers]), flush=True)
    await asyncio.Event().wait()


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pids: Iterable[int] = ()) -> float:
    """CPU seconds of this process and of the live ``pids`` (probe workers)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    ticks = os.sysconf("SC_CLK_TCK")
    children = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return usage.ru_utime + usage.ru_stime + children


def _workers_rss_mib(pids: Iterable[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) / 1024 for line in lines if line.startswith("VmRSS:"))
    return total


async def _detect(
    count: int, ports: list[int], interval: float, duration: float, timeout: float, cert_dir: str | None,
    database_url: str | None, *, as4_only: bool = False, signing_dir: str | None = None, workers: int = 1,
    warmup: float | None = None,
) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from services.detector.metrics import DetectorMetrics
    from services.detector.probes import Prober
    from services.detector.service import Detector
    from services.detector.targets import from_settings
    from services.detector.workers import WorkerPool
    from shared.config import DetectorSettings, TargetSettings
    from shared.events import AvailabilityData, CloudEvent
    from shared.gc_settle import GcSettler

    settings = DetectorSettings(
        instance_id="bench", interval_s=interval, timeout_s=timeout, heartbeat_s=15, eo_targets=False,
        max_concurrency=500, per_host_limit=100, workers=workers,
        ca_file=str(Path(cert_dir) / "ca.pem") if cert_dir else None,
    )
    scheme = "https" if cert_dir else "http"
    published = Counter[str]()

    async def send(target_id: str, event: CloudEvent[AvailabilityData]) -> None:
        published[event.type] += 1

    settler = GcSettler().install()  # as the service does (services/detector/app.py)
    detector = Detector(
        settings=settings, prober=Prober(), send=send, metrics=DetectorMetrics.create(CollectorRegistry()),
        settler=settler,
    )
    signing: dict[str, Any] = {}
    if signing_dir is not None:
        folder = Path(signing_dir)
        signing = {"as4_signing": True, "as4_key_file": str(folder / "ours.key.pem"),
                   "as4_cert_file": str(folder / "ours.cert.pem"),
                   "as4_partner_cert_file": str(folder / "partner.cert.pem")}
    for i in range(count):
        kind = "as4" if as4_only or i % 2 else "http"
        port = ports[i % len(ports)]
        configured = TargetSettings(
            id=f"{kind}-{i:05d}", component="ada_b2g" if kind == "as4" else "ntp", probe=kind,
            url=f"{scheme}://127.0.0.1:{port}/{kind}/{i}", **(signing if kind == "as4" else {}),
        )
        detector.put(from_settings(configured, settings))
    loops = [
        asyncio.create_task(detector.scheduler.run()),
        asyncio.create_task(detector.latest.run()),
        asyncio.create_task(detector.heartbeat_loop()),
    ]
    save_seconds: list[float] = []
    write_behind = None
    engine = None
    if database_url is not None:  # imported here: without a database, the memory figure is without them too
        from services.detector.migrate import upgrade
        from services.detector.store import TargetStore, WriteBehind
        from shared.db import make_engine, session_factory

        engine = make_engine(database_url)
        await upgrade(engine)
        write_behind = WriteBehind(
            detector=detector, store=TargetStore(session_factory(engine), instance_id="bench"),
            on_save=save_seconds.append,
        )
        loops.append(asyncio.create_task(write_behind.run()))
    scheduler = detector.scheduler
    pids = scheduler.pids if isinstance(scheduler, WorkerPool) else dict
    # Warm-up: every target has been probed once (one interval); longer (--warmup) to measure past the
    # confirmation retries of every target's first state too.
    await asyncio.sleep(interval if warmup is None else warmup)
    scheduler.lag_samples.clear()
    save_seconds.clear()
    saved_before = write_behind.saved if write_behind is not None else 0
    reasons_before = Counter(s.last.reason for s in detector.statuses.values() if s.last)
    worker_pids = list(pids().values())
    completed, cpu, started = scheduler.completed, _cpu_s(worker_pids), time.perf_counter()
    own_cpu = _cpu_s()
    lags: list[float] = []
    deadline = started + duration
    while time.perf_counter() < deadline:  # bounded by --duration
        await asyncio.sleep(min(1.0, max(0.0, deadline - time.perf_counter())))
        lags.extend(scheduler.lag_samples)
        scheduler.lag_samples.clear()
    elapsed = time.perf_counter() - started
    cpu_used = _cpu_s(worker_pids) - cpu
    own_cpu_used = _cpu_s() - own_cpu
    rss = _rss_mib() + _workers_rss_mib(worker_pids)
    restarted = worker_pids != list(pids().values())
    probes = scheduler.completed - completed
    saved = (write_behind.saved - saved_before) if write_behind is not None else 0
    for task in loops:
        task.cancel()
    await asyncio.gather(*loops, return_exceptions=True)
    if engine is not None:
        await engine.dispose()
    save_seconds.sort()
    lags.sort()
    states = Counter(s.state.value for s in detector.statuses.values())
    reasons = Counter(s.last.reason for s in detector.statuses.values() if s.last)
    return {
        "targets": count,
        "probes_per_s": probes / elapsed,
        "expected_per_s": count / interval,
        "lag_p50_ms": 1000 * statistics.median(lags) if lags else None,
        "lag_p99_ms": 1000 * lags[int(0.99 * (len(lags) - 1))] if lags else None,
        "lag_max_ms": 1000 * lags[-1] if lags else None,
        "cpu_share": cpu_used / elapsed,
        "rss_mib": rss,
        "workers": workers,
        "parent_cpu_share": own_cpu_used / elapsed,
        "worker_restarted": restarted,
        "skipped": scheduler.skipped,
        "saved_per_s": saved / elapsed if write_behind is not None else None,
        "save_p99_ms": 1000 * save_seconds[int(0.99 * (len(save_seconds) - 1))] if save_seconds else None,
        "states": dict(states),
        "last_reasons": dict(reasons),
        "warmup_reasons": dict(reasons_before),
        "published": dict(published),
    }


async def _vantage(
    eos: int, instances: int, k: int, ports: list[int], interval: float, duration: float, timeout: float
) -> dict[str, Any]:
    """``instances`` detectors in this process, ``vantage_points = k``, the live set given to them (no broker):
    how often each EO endpoint and the national target are probed per interval, over all instances."""
    from prometheus_client import CollectorRegistry

    from services.detector.domain import ProbeResult
    from services.detector.metrics import DetectorMetrics
    from services.detector.probes import Prober
    from services.detector.service import Detector
    from services.detector.targets import Target, from_settings
    from shared.config import DetectorSettings, TargetSettings
    from shared.events import AvailabilityData, CloudEvent, EoData

    probes = Counter[str]()
    failed = Counter[str]()
    probed_by: dict[str, set[str]] = {}
    counting = False

    class CountingProber(Prober):
        def __init__(self, instance: str) -> None:
            super().__init__()
            self.instance = instance

        async def probe(self, target: Target) -> ProbeResult:
            result = await super().probe(target)
            if counting:
                probes[target.id] += 1
                probed_by.setdefault(target.id, set()).add(self.instance)
                if not result.ok:
                    failed[result.reason] += 1  # a failed probe is retried at the retry pace: more probes
            return result

    async def send(target_id: str, event: CloudEvent[AvailabilityData]) -> None:
        return None

    names = [f"bench-{i}" for i in range(instances)]
    detectors = []
    for name in names:
        settings = DetectorSettings(instance_id=name, interval_s=interval, timeout_s=timeout, heartbeat_s=15,
                                    vantage_points=k, max_concurrency=500, per_host_limit=100)
        detector = Detector(settings=settings, prober=CountingProber(name), send=send,
                            metrics=DetectorMetrics.create(CollectorRegistry()))
        detector.put(from_settings(TargetSettings(id="ntp", component="ntp", probe="http",
                                                  url=f"http://127.0.0.1:{ports[0]}/ntp"), settings))
        for i in range(eos):
            detector.on_eo(EoData(eori=f"LU{i:012d}", name=f"EO {i}",
                                  as4_endpoint=f"http://127.0.0.1:{ports[i % len(ports)]}/as4/{i}"))
        detector.set_vantage_members(frozenset(names))
        detectors.append(detector)
    loops = [asyncio.create_task(d.scheduler.run()) for d in detectors]
    loops += [asyncio.create_task(d.latest.run()) for d in detectors]
    await asyncio.sleep(2 * interval)  # warm-up: first probes, and the retries that decide the unknown states
    counting = True
    await asyncio.sleep(duration)
    counting = False
    for task in loops:
        task.cancel()
    await asyncio.gather(*loops, return_exceptions=True)
    intervals = duration / interval
    per_eo = [probes[f"eo:LU{i:012d}"] / intervals for i in range(eos)]
    return {
        "instances": instances, "k": k, "eos": eos, "intervals": intervals,
        "eo_min": min(per_eo), "eo_mean": statistics.fmean(per_eo), "eo_max": max(per_eo),
        "eo_exactly_k": sum(1 for n in per_eo if round(n * intervals) == k * round(intervals)) / eos,
        "eo_probes_per_interval": sum(per_eo), "unsharded_per_interval": eos * instances,
        "national_per_interval": probes["ntp"] / intervals,
        "failed": dict(failed),
        "probed_by": sorted(Counter(len(probed_by.get(f"eo:LU{i:012d}", ())) for i in range(eos)).items()),
        "eo_targets_per_instance": [sum(1 for t in d.targets if t.startswith("eo:")) for d in detectors],
        "owners": sorted(Counter(sum(1 for d in detectors if f"eo:LU{i:012d}" in d.targets) for i in range(eos))
                         .items()),
    }


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def _certificates(directory: Path) -> None:
    """A throw-away CA and a certificate for 127.0.0.1 (trustme, a test dependency)."""
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(directory / "server.pem"))


def _run_vantage(args: argparse.Namespace) -> dict[str, Any]:
    me = [sys.executable, "-m", "bench.detector_bench"]
    server_cpu = [] if args.server_cpu is None else ["--server-cpu", str(args.server_cpu)]
    server = subprocess.Popen([*me, "--serve", str(args.ports), *server_cpu, "--responder-loop", args.responder_loop],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        ports = server.stdout.readline().strip()
        cpu = [] if args.cpu is None else ["--cpu", str(args.cpu)]
        run = subprocess.run(
            [*me, "--vantage-run", str(args.vantage_eos), "--vantage", args.vantage, "--ports-json", ports,
             "--interval", str(args.interval), "--duration", str(args.duration), "--timeout", str(args.timeout),
             "--loop", args.loop, *cpu],
            capture_output=True, text=True, timeout=args.interval + args.duration + 120, check=False,
        )
        if run.returncode != 0:
            raise RuntimeError(f"vantage run failed:\n{run.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
        return result
    finally:
        server.terminate()
        server.wait(timeout=10)


def _run_one(
    args: argparse.Namespace, count: int, cert_dir: str | None, scratch: str, *, signed: bool = False
) -> dict[str, Any]:
    me = [sys.executable, "-m", "bench.detector_bench"]
    server_cpu = [] if args.server_cpu is None else ["--server-cpu", str(args.server_cpu)]
    tls = [] if cert_dir is None else ["--cert-dir", cert_dir]
    tls += ["--signing-dir", scratch] if signed else []
    tls += ["--as4-signed"] if args.as4_signed else []
    server = subprocess.Popen(
        [*me, "--serve", str(args.ports), *server_cpu, *tls, "--responder-loop", args.responder_loop],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        ports = server.stdout.readline().strip()
        # Probe workers spread over the cores: the detector is not pinned then.
        cpu = [] if args.cpu is None or args.workers > 1 else ["--cpu", str(args.cpu)]
        cpu += ["--workers", str(args.workers)]
        database = [] if args.no_database else ["--database", args.database or f"sqlite:///{scratch}/detector-{count}.db"]
        warmup = args.interval if args.warmup is None else args.warmup
        server_cpu_before, wall_before = cpu_seconds_of(server.pid), time.perf_counter()
        detector = subprocess.run(
            [*me, "--detect", str(count), "--ports-json", ports, "--interval", str(args.interval),
             "--duration", str(args.duration), "--timeout", str(args.timeout), "--warmup", str(warmup),
             "--loop", args.loop, *cpu, *tls, *database],
            capture_output=True, text=True, timeout=warmup + args.duration + 120, check=False,
        )
        if detector.returncode != 0:
            raise RuntimeError(f"detector run failed:\n{detector.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(detector.stdout.strip().splitlines()[-1])
        # Over the detector's whole run (start-up and warm-up included): near 100% means the responder limits.
        wall = time.perf_counter() - wall_before
        result["responder_cpu_share"] = (cpu_seconds_of(server.pid) - server_cpu_before) / wall
        return result
    finally:
        server.terminate()
        server.wait(timeout=10)


def cpu_seconds_of(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per target count")
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, help="seconds before measuring (default: one interval)")
    parser.add_argument("--ports", type=int, default=64, help="loopback ports the responder listens on")
    parser.add_argument("--cpu", type=int, default=0, help="CPU the detector is pinned to")
    parser.add_argument("--server-cpu", type=int, default=1 if (os.cpu_count() or 1) > 1 else None)
    parser.add_argument("--tls", action="store_true", help="HTTPS targets: a TLS handshake per probe")
    parser.add_argument("--database", help="detector database URL (default: a SQLite file in a temporary folder)")
    parser.add_argument("--no-database", action="store_true", help="save no target states (no write-behind)")
    parser.add_argument("--workers", type=int, default=1, help="detector.workers (probe processes); > 1: not pinned")
    parser.add_argument("--vantage", metavar="INSTANCES:K",
                        help="then count probes per EO endpoint with INSTANCES detectors and vantage_points = K")
    parser.add_argument("--vantage-eos", type=int, default=2000, help="EO endpoints of the --vantage run")
    parser.add_argument("--vantage-run", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop",
                        help="the detector process's event loop (uvloop, as `luccs-fallback detector`; its probe "
                        "workers run on uvloop either way)")
    parser.add_argument("--responder-loop", choices=["uvloop", "asyncio"], default="uvloop",
                        help="the responder's event loop (it stands for the EOs' own servers)")
    parser.add_argument("--as4-signed", action="store_true",
                        help="as4 targets only, each N run unsigned then signed (verified receipts)")
    parser.add_argument("--signing-dir", help=argparse.SUPPRESS)
    parser.add_argument("--cert-dir", help=argparse.SUPPRESS)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--detect", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ports-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _pin(args.server_cpu)
        eventloop.run(_serve(args.serve, args.cert_dir, args.signing_dir),
                      prefer_uvloop=args.responder_loop == "uvloop")
        return 0
    if args.detect:
        # Probe workers inherit the detector's affinity: pinned, all of them would share one core.
        _pin(args.cpu if args.workers == 1 else None)
        result = eventloop.run(
            _detect(args.detect, json.loads(args.ports_json), args.interval, args.duration, args.timeout, args.cert_dir,
                    args.database, as4_only=args.as4_signed, signing_dir=args.signing_dir, workers=args.workers,
                    warmup=args.warmup),
            prefer_uvloop=args.loop == "uvloop",
        )
        print(json.dumps(result))
        return 0
    if args.vantage_run:
        _pin(args.cpu)
        instances, k = (int(part) for part in args.vantage.split(":"))
        vantage = _vantage(args.vantage_run, instances, k, json.loads(args.ports_json), args.interval, args.duration,
                           args.timeout)
        print(json.dumps(eventloop.run(vantage, prefer_uvloop=args.loop == "uvloop")))
        return 0
    saving = "no database" if args.no_database else f"states saved to {args.database or 'a SQLite file'}"
    warmup = args.interval if args.warmup is None else args.warmup
    mix = "as4 only, unsigned then signed" if args.as4_signed else "half http, half as4"
    print(f"detector bench: {'https' if args.tls else 'http'} targets ({mix}), interval "
          f"{args.interval:g}s, measured {args.duration:g}s after a {warmup:g}s warm-up, detector on CPU "
          f"{args.cpu if args.workers == 1 else 'any'} ({args.workers} probe worker(s)) on {args.loop}, responder "
          f"on CPU {args.server_cpu} on {args.responder_loop}, {args.ports} ports, {saving}")
    header = f"{'pings':>8} " if args.as4_signed else ""
    header += f"{'targets':>8} {'probes/s':>9} {'expected':>9} {'lag p50':>9} {'lag p99':>9} {'lag max':>9} " \
             f"{'CPU':>6} {'RSS':>8} {'saved/s':>8} {'save p99':>9}  results (last per target)"
    print(header)
    with tempfile.TemporaryDirectory() as scratch:
        cert_dir = None
        if args.tls:
            _certificates(Path(scratch))
            cert_dir = scratch
        if args.as4_signed:
            _signing_files(Path(scratch))
        for count in args.targets:
            if args.as4_signed:
                _report(_run_one(args, count, cert_dir, scratch), label="unsigned")
                _report(_run_one(args, count, cert_dir, scratch, signed=True), label="signed")
            else:
                _report(_run_one(args, count, cert_dir, scratch))
    if args.vantage:
        v = _run_vantage(args)
        print(f"vantage points: {v['instances']} instances, vantage_points = {v['k']}, {v['eos']} EO endpoints, "
              f"{v['intervals']:g} intervals measured")
        print(f"  instances owning each EO endpoint: {', '.join(f'{n} for {c}' for n, c in v['owners'])}; "
              f"instances that probed it while measured: {', '.join(f'{n} for {c}' for n, c in v['probed_by'])}")
        print(f"  probes per EO endpoint per interval, over all instances: min {v['eo_min']:.2f}, mean "
              f"{v['eo_mean']:.2f}, max {v['eo_max']:.2f} (k = {v['k']}; without vantage_points: {v['instances']}); "
              f"exactly k x intervals: {100 * v['eo_exactly_k']:.1f}% of them")
        print(f"  EO probes per interval: {v['eo_probes_per_interval']:.0f} (every instance probing every EO: "
              f"{v['unsharded_per_interval']}); EO endpoints per instance: {v['eo_targets_per_instance']}; "
              f"national target probes per interval: {v['national_per_interval']:.2f} (every instance); failed probes "
              f"(each retried at the retry pace): {v['failed'] or 0}", flush=True)
    return 0


def _report(r: dict[str, Any], label: str | None = None) -> None:
    prefix = "" if label is None else f"{label:>8} "
    print(
        prefix + f"{r['targets']:>8} {r['probes_per_s']:>9.1f} {r['expected_per_s']:>9.1f} {r['lag_p50_ms']:>7.1f}ms "
        f"{r['lag_p99_ms']:>7.1f}ms {r['lag_max_ms']:>7.1f}ms {100 * r['cpu_share']:>5.1f}% "
        f"{r['rss_mib']:>5.0f}MiB {_figure(r['saved_per_s'], '', '.0f'):>8} {_figure(r['save_p99_ms'], 'ms'):>9}  "
        f"{r['last_reasons']} states={r['states']} skipped={r['skipped']}"
        + (f" responder_cpu={100 * r['responder_cpu_share']:.0f}%" if "responder_cpu_share" in r else "")
        + (f" kept={100 * r['probes_per_s'] / r['expected_per_s']:.0f}% workers={r['workers']} "
           f"(detector process {100 * r['parent_cpu_share']:.0f}% of the CPU)"
           + (" (a worker restarted)" if r["worker_restarted"] else "") if r["workers"] > 1 else ""),
        flush=True,
    )


def _figure(value: float | None, unit: str, spec: str = ".1f") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


if __name__ == "__main__":
    sys.exit(main())
