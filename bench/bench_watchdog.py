"""Watchdog overhead: CPU time of this process with N sandboxes sampled every second, against
the same process idle (watchdog stopped), as a percentage of one core. Target: < 2 % for 10.

    .venv/bin/python bench/bench_watchdog.py [--sandboxes 10] [--seconds 20] [--guest-interval 30]

Process CPU (user + system, all threads: the sampler, the SSH probe workers, paramiko's
transport threads) is measured over a window with the watchdog running and over an equal
window with it stopped; the difference is the watchdog's cost.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from vmsandbox.core import SandboxCore


def process_cpu() -> float:
    t = os.times()
    return t.user + t.system


def window(seconds: float) -> float:
    """Percent of one core this process used over ``seconds`` of wall time."""
    c0, w0 = process_cpu(), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (process_cpu() - c0) / (time.monotonic() - w0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sandboxes", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--guest-interval", type=float, default=30.0)
    ap.add_argument("--box-dir", default="/var/lib/vmsandbox/boxes")
    args = ap.parse_args()
    state = tempfile.mkdtemp(prefix="vmsbx-bench-")
    os.chmod(state, 0o711)
    core = SandboxCore(config={"sandbox": {"state_directory": state, "box_directory": args.box_dir},
                               "monitoring": {"interval_seconds": args.interval,
                                              "guest_interval_seconds": args.guest_interval}},
                       start_watchdog=False)
    sids: list[str] = []
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            for sid in pool.map(lambda i: core.create_sandbox(f"bench-{i}"), range(args.sandboxes)):
                sids.append(sid)
        print(f"{len(sids)} sandboxes up in {time.monotonic() - started:.1f} s")
        from vmsandbox.watchdog import Watchdog
        wd = core.watchdog = Watchdog(core)
        time.sleep(2)
        idle = window(args.seconds)
        wd.start()
        time.sleep(2)                                   # first probes and connections
        rounds0 = wd.rounds
        busy = window(args.seconds)
        rounds = wd.rounds - rounds0
        wd.stop()
        statuses = sorted({h.status.value for h in wd.snapshot().values()})
        print(f"interval {args.interval:g} s, guest probes every {args.guest_interval:g} s, "
              f"{args.seconds:g} s windows, {rounds} rounds, health: {', '.join(statuses)}")
        print(f"process CPU idle (watchdog stopped): {idle:.2f}% of one core")
        print(f"process CPU with the watchdog:       {busy:.2f}% of one core")
        per_round_ms = (busy - idle) / 100 * args.seconds / max(rounds, 1) * 1000
        print(f"watchdog cost:                        {busy - idle:.2f}% of one core ({per_round_ms:.2f} ms per round)")
    finally:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(core.destroy, sids))
        core.close()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
