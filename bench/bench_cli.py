"""Benchmark of the command line's start-up, each command a fresh process as a person or a script
runs it, interleaved rounds (bench/harness.py):

- `vmsandbox exec NAME -- true` against `ssh -F <the sandbox's ssh-config> NAME true` on the same
  guest (target: ratio per round <= 1.5x). The ssh-config's ProxyCommand is `vmsandbox ssh-proxy`,
  so the peer runs vmsandbox too: its start-up is part of both sides;
- the same ssh without the proxy (straight to the forwarded port), for scale;
- `vmsandbox --help` (target <= 100 ms) and `vmsandbox list` against `virsh list`;
- with `--before DIR` (an older source tree: `git archive REV vmsandbox | tar -x -C DIR`; or any
  other tree, named with `--label`) each vmsandbox command also runs from DIR in the same rounds
  (same interpreter, same packages, `PYTHONPATH=DIR`), and its ssh-config's proxy runs DIR's code
  too: a ratio per round between the two trees, and DIR's own exec against its own ssh -F.

Python byte-code: the commands run with a private `PYTHONPYCACHEPREFIX` (under the state
directory, warmed by the harness's first round) and without `PYTHONDONTWRITEBYTECODE`, as an
installed package runs (pip writes the .pyc files); `--no-bytecode` measures every run compiling
the sources instead. Each step's CPU time (user + system, its child processes included) is shown
too: the machine is shared, and CPU time moves far less with the load than wall time does.

    .venv/bin/python bench/bench_cli.py [--runs 15] [--before DIR [--label NAME]] [--exec-only] [--no-bytecode] [--json FILE]
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import BOOT_TIMEOUT, BOX_DIR, BenchEnv, load_and_domains  # noqa: E402
from harness import Sides, report, spread_row, write_json  # noqa: E402

VMSANDBOX = str(Path(sys.executable).parent / "vmsandbox")       # this venv's console script


#: CPU seconds (user + system) of each run, by side, the processes it started included (ssh's
#: ProxyCommand too): unlike wall time, hardly moved by what else the shared machine runs
CPU: dict[str, list[float]] = {}


def runner(name: str, argv: list[str], env: dict, cwd: Path):
    """A step that runs ``argv`` to its end (output discarded) and fails loudly if it fails."""
    def step() -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=120)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        CPU.setdefault(name, []).append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.decode(errors='replace')[-500:]}")
    return step


def add(sides: Sides, name: str, argv: list[str], env: dict, cwd: Path) -> None:
    sides.add(name, runner(name, argv, env, cwd))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--before", type=Path, default=None, help="source tree of the vmsandbox to compare with")
    ap.add_argument("--label", default="before", help="what to call the --before tree in the tables")
    ap.add_argument("--exec-only", action="store_true", help="only exec against ssh -F (shorter rounds)")
    ap.add_argument("--no-bytecode", action="store_true", help="no .pyc files: every run compiles the sources")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.before and not (args.before / "vmsandbox" / "cli" / "__init__.py").exists():
        ap.error(f"{args.before} holds no vmsandbox source tree")
    env_core = BenchEnv("cli")
    try:
        state = env_core.state_dir
        cfg = state / "config.yaml"
        cfg.write_text(yaml.safe_dump({
            "sandbox": {"state_directory": str(state), "box_directory": BOX_DIR, "domain_prefix": env_core.prefix,
                        "boot_timeout_seconds": int(BOOT_TIMEOUT)},
            "providers": {"libvirt": {"accelerator": "tcg"}},
            "monitoring": {"enabled": False}}))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
        env["VMSANDBOX_CONFIG"] = str(cfg)
        if args.no_bytecode:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        else:
            env["PYTHONPYCACHEPREFIX"] = str(state / "pycache")
        trees = {"": env}
        if args.before:
            trees[f" ({args.label})"] = {**env, "PYTHONPATH": str(args.before.resolve())}

        sid = env_core.core.create_sandbox("bench")
        port = env_core.core.get(sid).ssh_port
        sides = Sides(runs=args.runs)
        for tag, e in trees.items():
            ssh_cfg = state / ("ssh_config" + ("-other" if tag else ""))
            with open(ssh_cfg, "w") as f:
                subprocess.run([VMSANDBOX, "ssh-config", "bench"], env=e, cwd=state, stdout=f, check=True)
            add(sides, f"vmsandbox exec{tag}", [VMSANDBOX, "exec", "bench", "--", "true"], e, state)
            add(sides, f"ssh -F{tag}", ["ssh", "-F", str(ssh_cfg), "bench", "true"], e, state)
            if not args.exec_only:
                add(sides, f"--help{tag}", [VMSANDBOX, "--help"], e, state)
                add(sides, f"list{tag}", [VMSANDBOX, "list"], e, state)
        add(sides, "ssh, no proxy", ["ssh", "-F", str(state / "ssh_config"), "-o", "ProxyCommand=none",
                                     "-o", "HostName=127.0.0.1", "-p", str(port), "bench", "true"], env, state)
        if not args.exec_only:
            add(sides, "virsh list", ["virsh", "-c", "qemu:///system", "list"], env, state)

        load0 = load_and_domains()
        print(f"load before: {load0['loadavg']}, running domains: {len(load0['running_domains'])}; "
              f"byte-code: {'none (compiled every run)' if args.no_bytecode else 'cached'}")
        samples = sides.run()
        load1 = load_and_domains()
        print(f"load after: {load1['loadavg']}, running domains: {len(load1['running_domains'])}")

        results = [report("`vmsandbox exec NAME -- true` vs `ssh -F <ssh-config> NAME true`", samples,
                          "vmsandbox exec", "ssh -F", target=1.5),
                   report("ssh through the ProxyCommand vs straight to the port", samples, "ssh -F", "ssh, no proxy")]
        if not args.exec_only:
            results.append(report("`vmsandbox list` vs `virsh list`", samples, "list", "virsh list"))
        if args.before:
            other = f" ({args.label})"
            results.append(report(f"`vmsandbox exec NAME -- true` vs `ssh -F <ssh-config> NAME true`{other}", samples,
                                  f"vmsandbox exec{other}", f"ssh -F{other}"))
            for what in ("vmsandbox exec", "ssh -F") + (() if args.exec_only else ("--help", "list")):
                results.append(report(f"{what}: this tree vs {args.label}", samples, what, f"{what}{other}"))
        print("\n| step | median | p95 | min-max | n |\n|---|---|---|---|---|")
        if not args.exec_only:
            results.append(spread_row("`vmsandbox --help`", samples["--help"], target=0.1))
        for name in samples:
            if name != "--help":
                results.append(spread_row(name, samples[name]))
        cpu = {name: xs[sides.warmup:] for name, xs in CPU.items()}        # the harness's warm-up round: not kept
        print("\nCPU time (user + system, child processes included)\n\n| step | median | p95 | min-max | n |\n|---|---|---|---|---|")
        for name in cpu:
            if not name.startswith("ssh"):      # ssh does not wait for its ProxyCommand: its CPU is not counted
                spread_row(f"{name} (CPU)", cpu[name])
        write_json(args.json, samples=samples, cpu=cpu, results=results, load_before=load0, load_after=load1,
                   bytecode=not args.no_bytecode)
        missed = [r for r in results if r.get("met") is False]
        return 1 if missed else 0
    finally:
        left = env_core.close()
        if left:
            print(f"LEFT BEHIND: {left}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
