"""Benchmark of outside SSH clients through the generated ssh-config (ProxyCommand
`vmsandbox ssh-proxy NAME`) against the same client connecting straight to the forwarded port,
on one guest, interleaved rounds (bench/harness.py: order rotated, ratio per round): a new
connection running `true`, the time to the guest's SSH banner (the proxy process against a socket
opened in this process: the proxy's start-up), and an scp of a 32 MiB file in. No target is set
by the issue; the cost is reported.

    .venv/bin/python bench/bench_clients.py [--runs 10] [--json FILE]
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import BenchEnv, machine_info  # noqa: E402
from harness import Sides, machine_state, report, write_json  # noqa: E402

from vmsandbox.client_config import client_settings  # noqa: E402


def command(cmd: list[str]):
    return lambda: subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def banner_time(cmd: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.read(4) == b"SSH-"
        return time.perf_counter() - started
    finally:
        proc.kill()
        proc.wait()


def direct_banner_time(port: int) -> float:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        assert sock.recv(4) == b"SSH-"
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10, help="rounds, after one warm-up (default 10; scp: a third)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    before = machine_state("before")
    env = BenchEnv("cl")
    try:
        sid = env.core.create_sandbox("bench")
        info = env.core.get(sid)
        s = client_settings(env.core, "bench")
        cfg = env.state_dir / "ssh_config"
        cfg.write_text(s.config_block())
        via_proxy = ["ssh", "-F", str(cfg), "-o", "BatchMode=yes", "bench"]
        direct_opts = [a for k, v in s.options() if k not in ("ProxyCommand", "HostName") for a in ("-o", f"{k}={v}")]
        direct = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", *direct_opts, "-p", str(info.ssh_port), "127.0.0.1"]
        blob = env.state_dir / "blob"
        blob.write_bytes(os.urandom(32 << 20))
        scp_direct = ["scp", "-F", "/dev/null", "-o", "BatchMode=yes", *direct_opts, "-P", str(info.ssh_port)]
        samples = {
            "ssh true (new connection)": Sides(args.runs).add("via ssh-proxy", command([*via_proxy, "true"]))
            .add("direct", command([*direct, "true"])).run(),
            "time to the SSH banner": Sides(args.runs).add("via ssh-proxy", lambda: banner_time([*s.proxy_command]))
            .add("direct", lambda: direct_banner_time(info.ssh_port)).run(),
            "scp 32 MiB in": Sides(max(3, args.runs // 3))
            .add("via ssh-proxy", command(["scp", "-F", str(cfg), "-o", "BatchMode=yes", str(blob), "bench:/tmp/b"]))
            .add("direct", command([*scp_direct, str(blob), "127.0.0.1:/tmp/b"])).run()}
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        for _ in range(args.runs):          # the proxy alone: start, connect, banner, guest hangs up on EOF
            subprocess.run(list(s.proxy_command), stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        proxy_cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / args.runs
    finally:
        left = env.close()
    after = machine_state("after")
    results = [report(title, x, "via ssh-proxy", "direct") for title, x in samples.items()]
    print(f"\nssh-proxy CPU per connection (user+sys, mean of {args.runs}): {proxy_cpu * 1000:.0f} ms")
    write_json(args.json, machine=machine_info(), before=before, after=after, results=results, samples=samples,
               proxy_cpu_seconds=proxy_cpu)
    if left:
        print(f"LEAKED domains: {left}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
