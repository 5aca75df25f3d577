"""Benchmark: plain `vagrant up` to a first command, against `vmsandbox create` (libvirt provider)
to a first command, same box (tiny), same private libvirtd; and vmsandbox's own Vagrant provider.
Three runs of each, medians.

vagrant-libvirt needs its NAT management network, so the whole benchmark runs inside a network
namespace with a private libvirtd (tests/integration/privnet.py): run it from the host and it
starts that, re-runs itself inside, and tears it down.

    .venv/bin/python bench/bench_vagrant.py [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT))

from privnet import ENV_NS, ENV_URI, PrivateLibvirt, root_network  # noqa: E402

BOX_DIR = os.environ.get("VMSANDBOX_TEST_BOX_DIR", "/var/lib/vmsandbox/boxes")


def plain_vagrant(workdir: Path, uri: str, runs: int) -> list[float]:
    """`vagrant box add` once (not timed); then per run: `vagrant up` + `vagrant ssh -c true`, destroy."""
    from vmsandbox.boxes import BoxStore
    home = workdir / "vagrant-home"
    env = {**os.environ, "VAGRANT_HOME": str(home), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    box = BoxStore(Path(BOX_DIR)).export("tiny", workdir / "tiny.box")
    subprocess.run(["vagrant", "box", "add", "--name", "tiny", str(box)], env=env, check=True, capture_output=True)
    os.chmod(home, 0o711)
    project = workdir / "plain"
    project.mkdir()
    (project / "Vagrantfile").write_text(f"""Vagrant.configure("2") do |config|
  config.vm.box = "tiny"
  config.vm.box_check_update = false
  config.vm.provider :libvirt do |libvirt|
    libvirt.uri = {json.dumps(uri)}
    libvirt.management_network_autostart = false
  end
end
""")
    times = []
    for _ in range(runs):
        t = time.monotonic()
        subprocess.run(["vagrant", "up"], cwd=project, env=env, check=True, capture_output=True)
        subprocess.run(["vagrant", "ssh", "-c", "true"], cwd=project, env=env, check=True, capture_output=True)
        times.append(time.monotonic() - t)
        subprocess.run(["vagrant", "destroy", "-f"], cwd=project, env=env, check=True, capture_output=True)
    return times


def vmsandbox_create(workdir: Path, uri: str, provider: str, runs: int) -> list[float]:
    from vmsandbox import SandboxCore
    state = workdir / f"state-{provider}"
    state.mkdir()
    os.chmod(state, 0o711)
    cfg = {"sandbox": {"state_directory": str(state), "box_directory": BOX_DIR, "domain_prefix": f"bv{provider[0]}-",
                       "libvirt_uri": uri, "vagrant_libvirt_uri": uri, "provider": provider},
           "monitoring": {"enabled": False}, "safety": {"validation": {"enabled": False}}}
    times = []
    with SandboxCore(config=cfg) as core:
        if provider == "vagrant":         # adding the box to Vagrant happens once: not timed, as above
            core.providers["vagrant"].ensure_box(core.boxes.get("tiny"))
        for i in range(runs):
            t = time.monotonic()
            sid = core.create_sandbox(f"bench-{i}", {"box": "tiny"})
            core.execute(sid, "true")
            times.append(time.monotonic() - t)
            core.destroy(sid)
    return times


def inside(runs: int) -> dict:
    uri = os.environ[ENV_URI]
    with tempfile.TemporaryDirectory(prefix="bench-vagrant-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o711)
        out = {"vmsandbox create (libvirt)": vmsandbox_create(work, uri, "libvirt", runs),
               "vagrant up (plain)": plain_vagrant(work, uri, runs),
               "vmsandbox create (vagrant provider)": vmsandbox_create(work, uri, "vagrant", runs)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if os.environ.get(ENV_NS):
        print(json.dumps(inside(args.runs)))
        return
    before = root_network()
    p = PrivateLibvirt().start()
    try:
        r = subprocess.run(p.command_inside([sys.executable, __file__, "--runs", str(args.runs)]),
                           env={**os.environ, **p.env()}, capture_output=True, text=True, timeout=1800)
    finally:
        p.stop()
    assert root_network() == before, "the root namespace's links or routes changed"
    if r.returncode != 0:
        sys.exit(f"benchmark failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    results = json.loads(r.stdout.strip().splitlines()[-1])
    base = statistics.median(results["vmsandbox create (libvirt)"])
    print(f"load {os.getloadavg()[0]:.2f}; {args.runs} runs each, seconds to a first command")
    print("| path | runs | median | ratio to vmsandbox create (libvirt) |\n|---|---|---|---|")
    for k, v in results.items():
        print(f"| {k} | {', '.join(f'{x:.1f}' for x in v)} | {statistics.median(v):.1f} | "
              f"{statistics.median(v) / base:.2f}x |")


if __name__ == "__main__":
    main()
