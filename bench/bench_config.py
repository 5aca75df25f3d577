"""Cost of the config schema: wall time of `python -c 'import vmsandbox.config'` (the whole
package loads with it) against importing pydantic alone and a bare interpreter, interleaved
rounds (bench/harness.py: order rotated, ratio per round); then the time of one `load_config`.

    .venv/bin/python bench/bench_config.py [--runs 21] [--base DIR] [--json FILE]

``--base DIR``: also time a tree whose ``DIR/vmsandbox`` is an older version (e.g. from
`git archive HEAD~N vmsandbox | tar -x -C DIR`), in the same interpreter and rounds, for a
before/after.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from harness import Sides, machine_state, report, write_json  # noqa: E402


def import_from(tree: str) -> str:
    # an editable install's finder would import the worktree whatever sys.path says: drop it
    return ("import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
            f"sys.path.insert(0, {tree!r}); import vmsandbox.config; "
            f"assert vmsandbox.config.__file__.startswith({tree!r})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=21, help="rounds, after one warm-up (default 21)")
    ap.add_argument("--base", help="a tree with an older vmsandbox/ to compare with")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    before = machine_state("before")
    cases = {"import vmsandbox.config": import_from(ROOT), "python -c pass": "pass",
             "import pydantic": "import pydantic, pydantic.dataclasses"}
    if args.base:
        cases["import vmsandbox.config (base)"] = import_from(os.path.abspath(args.base))
    sides = Sides(args.runs)
    for name, code in cases.items():
        sides.add(name, lambda code=code: subprocess.run([sys.executable, "-c", code], check=True))
    samples = sides.run()
    after = machine_state("after")
    results = [report(f"import vmsandbox.config against {peer}", samples, "import vmsandbox.config", peer)
               for peer in list(cases)[1:]]
    sys.path.insert(0, ROOT)
    from vmsandbox.config import load_config
    t = time.perf_counter()
    load_config(config={})
    first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(200):
        load_config(config={"sandbox": {"ttl_seconds": 60}, "safety": {"limits": {"memory": "4G"}}})
    then = (time.perf_counter() - t) / 200
    print(f"\nload_config: first call {first * 1000:.2f} ms, then {then * 1000:.3f} ms (mean of 200)")
    write_json(args.json, before=before, after=after, results=results, samples=samples,
               load_config={"first": first, "then": then})
    return 0


if __name__ == "__main__":
    sys.exit(main())
