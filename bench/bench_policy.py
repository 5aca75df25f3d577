"""Benchmark of the command policy: time per ``validate_command`` over both test corpora.

Run: ``.venv/bin/python bench/bench_policy.py [--rounds N]``. Prints median and p99 per command
(targets: median < 1 ms, p99 < 5 ms) and exits 1 when a target is missed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmsandbox.safety import SafetyValidator  # noqa: E402

CORPORA = [ROOT / "tests/data/policy_dangerous.yaml", ROOT / "tests/data/policy_ordinary.yaml"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="passes over the corpora (default 20)")
    args = ap.parse_args()
    commands = [e["cmd"] for path in CORPORA for e in yaml.safe_load(path.read_text())]
    validator = SafetyValidator()
    for cmd in commands:                      # warm-up: grammar load, regex compilation
        validator.validate_command(cmd)
    samples: list[float] = []
    for _ in range(args.rounds):
        for cmd in commands:
            t0 = time.perf_counter()
            validator.validate_command(cmd)
            samples.append(time.perf_counter() - t0)
    samples.sort()
    median = statistics.median(samples) * 1000
    p99 = samples[int(len(samples) * 0.99) - 1] * 1000
    worst = samples[-1] * 1000
    print(f"commands: {len(commands)}  samples: {len(samples)}")
    print(f"median: {median:.3f} ms  p99: {p99:.3f} ms  max: {worst:.3f} ms")
    ok = median < 1.0 and p99 < 5.0
    print("targets (median < 1 ms, p99 < 5 ms):", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
