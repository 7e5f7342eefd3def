"""The demo's set-up steps that ``scripts/run.sh`` runs: wait for the services, register the demo EOs, show the way.

Run as ``python -m services.simulator.demo ready|register``; it talks to the services over HTTP only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.simulator.app import DEFAULT_BASE_PORT, RECEIVER, Layout, eo_name, layout

DEMO_TOKEN = "demo-operator-token"  # noqa: S105 - the published token of deploy/demo/luccs.toml, local demo only


@dataclass(frozen=True)
class DemoEo:
    """One demo economic operator: its registry entry points at the simulator."""

    eori: str
    name: str
    language: str
    index: int  # its simulated AS4 endpoint is eo-<index>

    def body(self, plan: Layout) -> dict[str, str]:
        """The registry entry (POST /api/v1/eos) pointing at the simulator of ``plan``."""
        return {
            "eori": self.eori,
            "name": self.name,
            "language": self.language,
            "webhook_url": plan.url(RECEIVER).rstrip("/") + f"/hooks/{self.language}",
            "webhook_secret": f"demo-webhook-secret-{self.language}",
            "as4_endpoint": plan.url(eo_name(self.index)),
        }


DEMO_EOS = (
    DemoEo("LU10000000001", "Demo Transports SARL", "fr", 1),
    DemoEo("LU10000000002", "Demo Logistics Ltd", "en", 2),
    DemoEo("LU10000000003", "Demo Spedition GmbH", "de", 3),
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _answers(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(urls: Sequence[str], *, within_s: float, watch: Sequence[int]) -> bool:
    """Poll ``urls`` until each answers 200; False after ``within_s`` or as soon as a ``watch`` process dies."""
    deadline = time.monotonic() + within_s
    pending = list(urls)
    with httpx.Client(timeout=2) as client:
        while pending:
            pending = [url for url in pending if not _answers(client, url)]
            if not pending:
                return True
            dead = [pid for pid in watch if not _alive(pid)]
            if dead:
                print(f"demo: process {dead[0]} exited before {pending[0]} answered", file=sys.stderr)
                return False
            if time.monotonic() > deadline:
                print(f"demo: no answer from {', '.join(pending)} within {within_s:.0f}s", file=sys.stderr)
                return False
            time.sleep(0.5)
    return True


def register(*, procedure_url: str, token: str, host: str, base_port: int, keys_file: Path | None) -> int:
    """Register the demo EOs through the procedure API; a 409 (already registered) is fine. Returns an exit code."""
    keys: dict[str, str] = {}
    if keys_file is not None and keys_file.exists():
        keys = json.loads(keys_file.read_text(encoding="utf-8"))
    failed = 0
    plan = layout(host=host, base_port=base_port, eos=len(DEMO_EOS))
    with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {token}"}) as client:
        for eo in DEMO_EOS:
            body = eo.body(plan)
            answer = client.post(f"{procedure_url}/api/v1/eos", json=body)
            if answer.status_code == 201:
                keys[eo.eori] = answer.json()["api_key"]
                state = "registered"
            elif answer.status_code == 409:
                state = "already registered"
            else:
                failed += 1
                print(f"demo: registering {eo.eori} failed: HTTP {answer.status_code} {answer.text}", file=sys.stderr)
                continue
            print(f"demo: EO {eo.eori} ({eo.language}, {eo.name}) {state}: webhook {body['webhook_url']}, "
                  f"AS4 {body['as4_endpoint']} (simulator endpoint {eo_name(eo.index)})")
    if keys_file is not None and keys:
        keys_file.parent.mkdir(parents=True, exist_ok=True)
        keys_file.write_text(json.dumps(keys, indent=2) + "\n", encoding="utf-8")
        keys_file.chmod(0o600)
        print(f"demo: the EOs' API keys (for POST /api/v1/eo-reports) are in {keys_file}")
    return 1 if failed else 0


GUIDE = """
demo: up and running. Look:
  status              http://127.0.0.1:8002/api/v1/status
  procedures          http://127.0.0.1:8002/api/v1/procedures?state=open
  deliveries          http://127.0.0.1:8003/api/v1/deliveries
  API docs            http://127.0.0.1:8001/docs  http://127.0.0.1:8002/docs  http://127.0.0.1:8003/docs
  simulator           http://127.0.0.1:{base}/control  (docs: http://127.0.0.1:{base}/docs)
  notices received    http://127.0.0.1:{base}/receiver/notices  (also in var/demo/simulator.log)
Cause an outage (README, section "Demo"), e.g. scenario 2:
  .venv/bin/luccs-fallback simulator-ctl ada-as4 refuse     # and back: ... ada-as4 ok
Ctrl-C stops everything.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m services.simulator.demo ready|register|guide``."""
    parser = argparse.ArgumentParser(prog="python -m services.simulator.demo", description=__doc__)
    parser.add_argument("step", choices=["ready", "register", "guide"])
    parser.add_argument("urls", nargs="*", help="ready: the URLs that must answer 200")
    parser.add_argument("--within-s", type=float, default=120.0)
    parser.add_argument("--watch", type=int, action="append", default=[], metavar="PID",
                        help="ready: give up when this process exits; repeatable")
    parser.add_argument("--procedure-url", default="http://127.0.0.1:8002")
    parser.add_argument("--token", default=DEMO_TOKEN)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT)
    parser.add_argument("--keys-file", type=Path)
    args = parser.parse_args(argv)
    if args.step == "ready":
        return 0 if wait_ready(args.urls, within_s=args.within_s, watch=args.watch) else 1
    if args.step == "register":
        return register(procedure_url=args.procedure_url.rstrip("/"), token=args.token, host=args.host,
                        base_port=args.base_port, keys_file=args.keys_file)
    print(GUIDE.format(base=args.base_port))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
