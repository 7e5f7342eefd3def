"""``bench/notifier_bench.py`` measures a server's raw capacity in a fresh process of its own: against a real
loopback receiver it answers a rate, and a server that is not there is a clear error, not a figure."""

from __future__ import annotations

import multiprocessing

import pytest

from bench.notifier_bench import _free_port, _wait_for_port, capacity_in_own_process, run_receiver

pytestmark = pytest.mark.integration


def test_the_raw_capacity_is_measured_in_a_process_of_its_own() -> None:
    spawn = multiprocessing.get_context("spawn")
    count, last = spawn.Value("i", 0), spawn.Value("d", 0.0)
    port = _free_port()
    server = spawn.Process(target=run_receiver, args=(port, count, last, None), daemon=True)
    server.start()
    try:
        _wait_for_port(port, 60)
        rate = capacity_in_own_process(spawn, "webhook", port, 500, 5, 60)
    finally:
        server.terminate()
        server.join(10)
    assert rate > 0
    assert count.value == 500, "every request of the loop reached the receiver"


def test_a_server_that_is_not_there_is_an_error_not_a_figure() -> None:
    spawn = multiprocessing.get_context("spawn")
    with pytest.raises(RuntimeError, match="raw capacity client of the webhook server failed"):
        capacity_in_own_process(spawn, "webhook", _free_port(), 100, 2, 60)
