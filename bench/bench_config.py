"""Cost of the config schema: wall time of `python -c 'import vmsandbox.config'` (the whole
package loads with it), of importing pydantic alone and of a bare interpreter, as medians of
interleaved runs; then the time of one `load_config` call.

    .venv/bin/python bench/bench_config.py [--runs 21] [--base DIR]

``--base DIR``: also time a tree whose ``DIR/vmsandbox`` is an older version (e.g. from
`git archive HEAD~N vmsandbox | tar -x -C DIR`), in the same interpreter, for a before/after.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_from(tree: str) -> str:
    # an editable install's finder would import the worktree whatever sys.path says: drop it
    return ("import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
            f"sys.path.insert(0, {tree!r}); import vmsandbox.config; "
            f"assert vmsandbox.config.__file__.startswith({tree!r})")


def wall_ms(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return (time.perf_counter() - t) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--base", help="a tree with an older vmsandbox/ to compare with")
    args = ap.parse_args()
    cases = {"python -c pass": "pass", "import pydantic": "import pydantic, pydantic.dataclasses",
             "import vmsandbox.config": import_from(ROOT)}
    if args.base:
        cases["import vmsandbox.config (base)"] = import_from(os.path.abspath(args.base))
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.runs):
        for name, code in cases.items():
            times[name].append(wall_ms(code))
    print(f"load average {os.getloadavg()[0]:.2f}; medians of {args.runs} interleaved runs")
    for name, samples in times.items():
        print(f"  {name:34s} {statistics.median(samples):7.1f} ms")
    sys.path.insert(0, ROOT)
    from vmsandbox.config import load_config
    t = time.perf_counter()
    load_config(config={})
    first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(200):
        load_config(config={"sandbox": {"ttl_seconds": 60}, "safety": {"limits": {"memory": "4G"}}})
    print(f"  load_config: first call {first * 1000:.2f} ms, then {(time.perf_counter() - t) / 200 * 1000:.3f} ms")


if __name__ == "__main__":
    main()
