"""The one way benchmarks compare two sides: interleaved rounds, ratios taken pair by pair.

Boot and restore times on this machine fall in two modes (TCG on a loaded 2-core host), so a
ratio of two medians can flip with one run; a ratio per round (vmsandbox's sample over the peer's
sample of the same round) cannot. Every round runs all sides, and the order of the sides rotates
from one round to the next, so slow drift of the load hits every side alike.

    from harness import Sides, report
    sides = Sides(runs=20)
    sides.add("vmsandbox", lambda: core.execute(sid, "true"))
    sides.add("paramiko", lambda: raw_exec(client))
    samples = sides.run()                         # {side: [seconds, ...]} in round order
    report("exec `true`", samples, "vmsandbox", "paramiko", target=1.15)

A side's callable is timed with ``perf_counter`` unless it returns a float itself (then that is
its sample: for steps that must time only part of what they do).

Every script prints the machine's state before and after (``machine_state``: load averages and
the running domains, other people's included) and writes ``--json`` through ``write_json``.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class Spread:
    """A sample set: median, 95th percentile, min and max, and how many."""
    median: float
    p95: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, xs: list[float]) -> "Spread":
        if not xs:
            nan = float("nan")
            return cls(nan, nan, nan, nan, 0)
        s = sorted(xs)
        p95 = s[min(len(s) - 1, max(0, round(0.95 * len(s)) - 1))]
        return cls(statistics.median(s), p95, s[0], s[-1], len(s))


class Sides:
    """Named steps run in interleaved rounds (``warmup`` rounds first, not recorded)."""

    def __init__(self, runs: int, warmup: int = 1, on_round: Optional[Callable[[int, dict], None]] = None) -> None:
        self.runs = runs
        self.warmup = warmup
        self.on_round = on_round
        self.steps: dict[str, Callable[[], Any]] = {}

    def add(self, name: str, step: Callable[[], Any]) -> "Sides":
        self.steps[name] = step
        return self

    def run(self) -> dict[str, list[float]]:
        names = list(self.steps)
        samples: dict[str, list[float]] = {n: [] for n in names}
        for i in range(self.warmup + self.runs):
            k = i % len(names)
            this_round = {}
            for name in names[k:] + names[:k]:          # rotate who goes first
                this_round[name] = timed(self.steps[name])
            if i >= self.warmup:
                for name, t in this_round.items():
                    samples[name].append(t)
                if self.on_round:
                    self.on_round(i - self.warmup, this_round)
        return samples


def timed(step: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    out = step()
    elapsed = time.perf_counter() - t0
    return float(out) if isinstance(out, float) else elapsed


def clocked(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and the seconds it took, for steps timed one by one (no peer)."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def pair_ratios(ours: list[float], peer: list[float]) -> Spread:
    """Ratio of each round's samples (ours / peer), as a spread."""
    return Spread.of([a / b for a, b in zip(ours, peer) if b > 0])


def ms(x: float) -> str:
    if x != x:
        return "-"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def report(title: str, samples: dict[str, list[float]], ours: str, peer: str,
           target: Optional[float] = None) -> dict:
    """Print one comparison as a markdown table row set and return it as a dict (for ``--json``):
    each side's spread and the per-round ratio's spread; ``met`` compares the median ratio."""
    a, b = Spread.of(samples[ours]), Spread.of(samples[peer])
    r = pair_ratios(samples[ours], samples[peer])
    met = None if target is None else r.median <= target
    verdict = "" if target is None else f" (target {target}x: {'met' if met else 'MISSED'})"
    print(f"\n{title} (n={r.n}, interleaved)")
    print("| side | median | p95 | min-max |\n|---|---|---|---|")
    for name, s in ((ours, a), (peer, b)):
        print(f"| {name} | {ms(s.median)} | {ms(s.p95)} | {ms(s.min)}-{ms(s.max)} |")
    print(f"| ratio per round | {r.median:.2f}x | {r.p95:.2f}x | {r.min:.2f}x-{r.max:.2f}x |{verdict}")
    return {"title": title, ours: asdict(a), peer: asdict(b), "ratio": asdict(r), "target": target, "met": met}


def spread_row(title: str, xs: list[float], target: Optional[float] = None) -> dict:
    """Print one side's spread (no peer), e.g. an absolute target like 'first command <= 0.4 s'."""
    s = Spread.of(xs)
    met = None if target is None else s.median <= target
    verdict = "" if target is None else f" (target {ms(target)}: {'met' if met else 'MISSED'})"
    print(f"| {title} | {ms(s.median)} | {ms(s.p95)} | {ms(s.min)}-{ms(s.max)} | n={s.n}{verdict}")
    return {"title": title, **asdict(s), "target": target, "met": met}


def differences(ours: list[float], peer: list[float]) -> Spread:
    """Difference of each round's samples (ours - peer), as a spread: for costs such as CPU
    shares, where a ratio means little."""
    return Spread.of([a - b for a, b in zip(ours, peer)])


def machine_state(label: str = "", uri: str = "qemu:///system") -> dict:
    """Load averages and every running domain (other people's included); printed when ``label``."""
    try:
        out = subprocess.run(["virsh", "-c", uri, "list", "--name"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    state = {"at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg": os.getloadavg(),
             "running_domains": [d for d in out.split() if d]}
    if label:
        load = " ".join(f"{x:.2f}" for x in state["loadavg"])
        print(f"{label}: {state['at']}, load {load}, {len(state['running_domains'])} running domains: "
              f"{' '.join(state['running_domains']) or '-'}", flush=True)
    return state


_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def write_json(path: Optional[str], **data: Any) -> None:
    if path:
        with open(path, "w") as f:
            json.dump({"command": " ".join(sys.argv), **data}, f, indent=2, default=str)
