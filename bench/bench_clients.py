"""Benchmark of outside SSH clients through the generated ssh-config (ProxyCommand
`vmsandbox ssh-proxy NAME`) against the same client connecting straight to the forwarded port,
interleaved on one guest: a new connection running `true`, the time to the guest's SSH banner
(the proxy process against a socket opened in this process: the proxy's start-up), and a 32 MiB
scp in. No target is set by the issue; the cost is reported.

    .venv/bin/python bench/bench_clients.py [--runs 10]
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import BenchEnv  # noqa: E402

from vmsandbox.client_config import client_settings  # noqa: E402


def timed(cmd: list[str], **kw) -> float:
    started = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, timeout=120, **kw)
    return time.monotonic() - started


def banner_time(cmd: list[str]) -> float:
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.read(4) == b"SSH-"
        return time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()


def direct_banner_time(port: int) -> float:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        assert sock.recv(4) == b"SSH-"
    return time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
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
        rows = {"ssh true (new connection)": ([], []), "time to SSH banner": ([], []), "scp 32 MiB in": ([], [])}
        for _ in range(args.runs):
            rows["ssh true (new connection)"][0].append(timed([*via_proxy, "true"]))
            rows["ssh true (new connection)"][1].append(timed([*direct, "true"]))
            rows["time to SSH banner"][0].append(banner_time([*s.proxy_command]))
            rows["time to SSH banner"][1].append(direct_banner_time(info.ssh_port))
        scp_direct = ["scp", "-F", "/dev/null", "-o", "BatchMode=yes", *direct_opts, "-P", str(info.ssh_port)]
        for _ in range(max(3, args.runs // 3)):
            rows["scp 32 MiB in"][0].append(timed(["scp", "-F", str(cfg), "-o", "BatchMode=yes", str(blob), "bench:/tmp/b"]))
            rows["scp 32 MiB in"][1].append(timed([*scp_direct, str(blob), "127.0.0.1:/tmp/b"]))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        for _ in range(args.runs):          # the proxy alone: start, connect, banner, guest hangs up on EOF
            subprocess.run(list(s.proxy_command), stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / args.runs
        print(f"load {os.getloadavg()[0]:.2f}; medians of {args.runs} (scp: {len(rows['scp 32 MiB in'][0])})")
        print(f"ssh-proxy CPU per connection (user+sys, mean of {args.runs}): {cpu * 1000:.0f} ms")
        print(f"{'':28} {'via ssh-proxy':>14} {'direct':>10} {'cost':>10}")
        for name, (p, d) in rows.items():
            mp, md = statistics.median(p), statistics.median(d)
            print(f"{name:28} {mp * 1000:11.1f} ms {md * 1000:7.1f} ms {(mp - md) * 1000:+7.1f} ms")
    finally:
        left = env.close()
        if left:
            print(f"left behind: {left}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
