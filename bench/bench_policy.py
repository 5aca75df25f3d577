"""Benchmark of the command policy: time per ``validate_command`` over the test corpora.

Run: ``.venv/bin/python bench/bench_policy.py [--rounds N]``. Prints the corpus sizes, detection
at level (dangerous and held-out), false positives above MEDIUM (ordinary), and median and p99
per command (targets: median <= 1 ms, p99 <= 5 ms); exits 1 when a target is missed.
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
sys.path.insert(0, str(ROOT / "bench"))

from harness import machine_state  # noqa: E402

from vmsandbox.safety import RiskLevel, SafetyValidator  # noqa: E402

DATA = ROOT / "tests/data"
CORPORA = [DATA / "policy_dangerous.yaml", DATA / "policy_heldout.yaml", DATA / "policy_ordinary.yaml"]


def rates(validator: SafetyValidator) -> bool:
    """Print detection / false-positive rates per corpus; True when all are at target."""
    ok = True
    for path in CORPORA:
        corpus = yaml.safe_load(path.read_text())
        if "ordinary" in path.name:
            bad = sum(validator.validate_command(e["cmd"]).risk_level > RiskLevel.MEDIUM for e in corpus)
            print(f"{path.name}: {len(corpus)} commands, false positives above MEDIUM: {bad} ({bad / len(corpus):.1%})")
        else:
            hit = sum(validator.validate_command(e["cmd"]).risk_level >= RiskLevel(e["level"]) for e in corpus)
            bad = len(corpus) - hit
            print(f"{path.name}: {len(corpus)} commands, detected at level: {hit} ({hit / len(corpus):.1%})")
        ok = ok and bad == 0
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=20, help="passes over the corpora (default 20)")
    args = ap.parse_args()
    machine_state("before")
    commands = [e["cmd"] for path in CORPORA for e in yaml.safe_load(path.read_text())]
    validator = SafetyValidator()
    corpora_ok = rates(validator)
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
    machine_state("after")
    print(f"commands: {len(commands)}  samples: {len(samples)}")
    print(f"median: {median:.3f} ms  p99: {p99:.3f} ms  max: {worst:.3f} ms")
    ok = median <= 1.0 and p99 <= 5.0
    print("targets (median <= 1 ms, p99 <= 5 ms):", "met" if ok else "MISSED")
    return 0 if ok and corpora_ok else 1


if __name__ == "__main__":
    sys.exit(main())
