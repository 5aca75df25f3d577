"""bench/harness.py: spreads, per-round ratios and the rotated order of interleaved rounds."""
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import harness  # noqa: E402
from harness import Sides, Spread, differences, pair_ratios  # noqa: E402


def test_spread_of_odd_and_even_samples():
    s = Spread.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.median, s.min, s.max, s.n) == (3.0, 1.0, 5.0, 5)
    assert s.p95 == 5.0                       # nearest rank: 95 % of 5 rounds to the 5th
    assert Spread.of([1.0, 2.0, 3.0, 10.0]).median == 2.5
    twenty = Spread.of([float(x) for x in range(1, 21)])
    assert twenty.p95 == 19.0                 # the 19th of 20, not the maximum


def test_spread_of_nothing_is_nan_with_n_0():
    s = Spread.of([])
    assert s.n == 0 and all(math.isnan(x) for x in (s.median, s.p95, s.min, s.max))


def test_pair_ratios_are_taken_round_by_round():
    # bimodal sides: the ratio of the medians (4/2 = 2.0) says nothing about any round
    ours = [1.0, 4.0, 4.0, 6.0]
    peer = [1.0, 2.0, 4.0, 6.0]
    r = pair_ratios(ours, peer)
    assert r.n == 4 and (r.min, r.max) == (1.0, 2.0) and r.median == 1.0
    assert pair_ratios([1.0, 2.0], [0.0, 1.0]).n == 1       # a zero peer sample is skipped
    assert differences([3.0, 1.0], [1.0, 2.0]).min == -1.0


def test_sides_rotate_the_order_and_drop_the_warmup():
    calls: list[str] = []
    rounds: list[tuple[int, dict]] = []
    t = iter(float(x) for x in range(100))

    def step(name):
        def run():
            calls.append(name)
            return next(t)                    # a float: the step's own sample
        return run
    sides = Sides(runs=3, warmup=1, on_round=lambda i, r: rounds.append((i, r)))
    for name in "abc":
        sides.add(name, step(name))
    samples = sides.run()
    assert calls == list("abc" "bca" "cab" "abc")    # warm-up, then one rotation per round
    assert samples == {"a": [5.0, 7.0, 9.0], "b": [3.0, 8.0, 10.0], "c": [4.0, 6.0, 11.0]}
    assert [i for i, _ in rounds] == [0, 1, 2] and rounds[0][1] == {"b": 3.0, "c": 4.0, "a": 5.0}


def test_a_step_without_a_float_is_timed():
    samples = Sides(runs=2, warmup=0).add("x", lambda: None).run()
    assert len(samples["x"]) == 2 and all(0 <= x < 1 for x in samples["x"])


def test_report_compares_the_median_ratio_with_the_target(capsys):
    out = harness.report("t", {"a": [2.0, 2.0, 9.0], "b": [1.0, 1.0, 1.0]}, "a", "b", target=2.5)
    assert out["ratio"]["median"] == 2.0 and out["met"] is True and out["ratio"]["max"] == 9.0
    assert "| ratio per round | 2.00x" in capsys.readouterr().out
