"""The notifier bench's summary of several runs: medians, ranges, and in how many runs each goal was met."""

from __future__ import annotations

from bench.notifier_bench import RunFigures, summary, within_s


def _run(last_2xx_s: float, capacity: float, n: int = 100_000) -> RunFigures:
    return RunFigures(last_2xx_s=last_2xx_s, rate=n / last_2xx_s, capacity=capacity)


def test_webhook_runs_are_summed_up_by_their_medians_and_the_runs_that_met_each_goal() -> None:
    # shares: 100,000 / 10 s of 36,000/s = 28 %; / 12.5 s of 40,000/s = 20 %; / 25 s of 10,000/s = 40 %
    runs = [_run(10.0, 36_000), _run(12.5, 40_000), _run(25.0, 10_000)]

    lines = summary("webhook", 100_000, runs)

    assert lines[1:] == [
        "  last 2xx: median 12.50 s (10.00-25.00)",
        "  raw capacity: median 36,000/s (10,000-40,000)",
        "  share of raw capacity: median 28% (20%-40%)",
        "  goals met: under 20 s in 2 of 3 runs; at least 25% of the raw capacity in 2 of 3",
    ]


def test_a_share_of_exactly_a_quarter_meets_the_goal_and_the_time_goal_scales_with_the_eos() -> None:
    runs = [_run(4.0, 10_000, n=10_000), _run(5.0, 10_000, n=10_000)]  # 2,500/s and 2,000/s: 25 % and 20 %

    lines = summary("webhook", 10_000, runs)

    assert within_s(10_000) == 2
    assert lines[-1] == "  goals met: under 2 s in 0 of 2 runs; at least 25% of the raw capacity in 1 of 2"


def test_email_runs_are_judged_on_half_of_the_plain_loop() -> None:
    runs = [_run(10.0, 1_000, n=1_000), _run(10.0, 150, n=1_000)]  # 100/s: 10 % and 67 %

    lines = summary("email", 1_000, runs)

    assert lines[1] == "  last accepted message: median 10.00 s (10.00-10.00)"
    assert lines[-1] == "  goal met: at least 50% of the plain aiosmtplib loop in 1 of 2 runs"
