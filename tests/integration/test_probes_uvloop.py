"""The detector's probe workers run on uvloop when it is installed (``shared/eventloop.py``): the same probes
against the same loopback servers give the same verdicts, reasons and certificate expiries there as on
asyncio's own loop (uvloop's transports are not ``asyncio.Transport`` instances, and its TLS is its own).

Each loop runs in a child process (``python -m tests.integration.test_probes_uvloop asyncio|uvloop``): a loop
made and closed inside the test process would leave its servers' streams to be collected, warning, during
whichever test runs next, and would replace the test process's current event loop."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import trustme

from shared import eventloop
from tests.integration.test_probes_servers import Hang, LoopbackServer, Reply, Reset, static
from tests.integration.test_probes_tls import probe, server_context, start, target
from tests.support import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

Verdict = tuple[str, bool, str, bool]  # case, ok, reason, a certificate expiry seen


async def _probe_every_kind(ca: trustme.CA, ca_file: str) -> tuple[str, list[Verdict]]:
    other_ca = trustme.CA()
    servers: list[LoopbackServer] = []
    verdicts: list[Verdict] = []

    async def check(case: str, url: str, **overrides: object) -> None:
        result = await probe(target(url, **overrides))
        verdicts.append((case, result.ok, result.reason, result.cert_expires_at is not None))

    try:
        plain = await start(servers, None)
        await check("http", plain.url("/health"), probe="http")
        chunked = await start(servers, None, static(Reply(status=503, chunked=True)))  # h11 judges this one
        await check("http chunked 503", chunked.url("/"), probe="http")
        reset = await start(servers, None, static(Reset()))
        await check("http reset", reset.url("/"), probe="http")
        hang = await start(servers, None, static(Hang()))
        await check("http hangs", hang.url("/"), probe="http", timeout_s=0.3)
        await check("tcp", f"127.0.0.1:{plain.port}", probe="tcp")
        await check("refused", f"http://127.0.0.1:{free_port()}/", probe="http")
        https = await start(servers, server_context(ca.issue_cert("127.0.0.1")))
        await check("https", https.url("/health"), probe="http", ca_file=ca_file)
        await check("tls", f"127.0.0.1:{https.port}", ca_file=ca_file)
        untrusted = await start(servers, server_context(other_ca.issue_cert("127.0.0.1")))
        await check("tls untrusted", f"127.0.0.1:{untrusted.port}", ca_file=ca_file)
        await check("tls to a plain server", f"127.0.0.1:{plain.port}", ca_file=ca_file, timeout_s=0.3)  # it waits
    finally:
        for server in servers:
            await server.close()
    return type(asyncio.get_running_loop()).__module__.split(".")[0], verdicts


EXPECTED = [
    ("http", True, "ok", False),
    ("http chunked 503", False, "http_503", False),
    ("http reset", False, "reset", False),
    ("http hangs", False, "timeout", False),
    ("tcp", True, "ok", False),
    ("refused", False, "refused", False),
    ("https", True, "ok", True),
    ("tls", True, "ok", True),
    ("tls untrusted", False, "tls_invalid", False),
    ("tls to a plain server", False, "timeout", False),
]


def _cases_on(loop: str) -> tuple[str, list[Verdict]]:
    """In the child process: every case on ``loop``, against a CA of its own."""
    ca = trustme.CA()
    with tempfile.TemporaryDirectory() as folder:
        ca_file = str(Path(folder) / "ca.pem")
        ca.cert_pem.write_to_path(ca_file)
        return eventloop.run(_probe_every_kind(ca, ca_file), prefer_uvloop=loop == "uvloop")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_every_kind_of_probe_gives_the_same_verdict_on_either_loop(loop: str) -> None:
    done = subprocess.run([sys.executable, "-m", "tests.integration.test_probes_uvloop", loop], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    ran_on, verdicts = json.loads(done.stdout.strip().splitlines()[-1])
    assert ran_on == loop, "uvloop is a dependency: it must be the one used"
    assert [tuple(v) for v in verdicts] == EXPECTED


if __name__ == "__main__":
    print(json.dumps(_cases_on(sys.argv[1])))
