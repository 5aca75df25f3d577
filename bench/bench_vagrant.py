"""Benchmark: plain `vagrant up` to a first command, against `vmsandbox create` (libvirt provider)
to a first command, same box (tiny), same private libvirtd; and vmsandbox's own Vagrant provider.
Three interleaved rounds (bench/harness.py: order rotated, ratio per round to vmsandbox create
with the libvirt provider); each side destroys its guest, untimed, after its sample.

vagrant-libvirt needs its NAT management network, so the whole benchmark runs inside a network
namespace with a private libvirtd (tests/integration/privnet.py): run it from the host and it
starts that, re-runs itself inside, and tears it down.

    .venv/bin/python bench/bench_vagrant.py [--runs 3] [--json FILE]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from harness import Sides, machine_state, report, write_json  # noqa: E402
from privnet import ENV_NS, ENV_URI, PrivateLibvirt, root_network  # noqa: E402

BOX_DIR = os.environ.get("VMSANDBOX_TEST_BOX_DIR", "/var/lib/vmsandbox/boxes")


def plain_vagrant(workdir: Path, uri: str) -> Callable[[], float]:
    """`vagrant box add` once (not timed); the step: `vagrant up` + `vagrant ssh -c true` (timed), destroy."""
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

    def step() -> float:
        t = time.perf_counter()
        subprocess.run(["vagrant", "up"], cwd=project, env=env, check=True, capture_output=True)
        subprocess.run(["vagrant", "ssh", "-c", "true"], cwd=project, env=env, check=True, capture_output=True)
        took = time.perf_counter() - t
        subprocess.run(["vagrant", "destroy", "-f"], cwd=project, env=env, check=True, capture_output=True)
        return took
    return step


@contextlib.contextmanager
def vmsandbox_create(workdir: Path, uri: str, provider: str) -> Iterator[Callable[[], float]]:
    from vmsandbox import SandboxCore
    state = workdir / f"state-{provider}"
    state.mkdir()
    os.chmod(state, 0o711)
    cfg = {"sandbox": {"state_directory": str(state), "box_directory": BOX_DIR, "domain_prefix": f"bv{provider[0]}-",
                       "libvirt_uri": uri, "vagrant_libvirt_uri": uri, "provider": provider},
           "monitoring": {"enabled": False}, "safety": {"validation": {"enabled": False}}}
    n = iter(range(10 ** 6))
    with SandboxCore(config=cfg) as core:
        if provider == "vagrant":         # adding the box to Vagrant happens once: not timed, as above
            core.providers["vagrant"].ensure_box(core.boxes.get("tiny"))

        def step() -> float:
            t = time.perf_counter()
            sid = core.create_sandbox(f"bench-{next(n)}", {"box": "tiny"})
            core.execute(sid, "true")
            took = time.perf_counter() - t
            core.destroy(sid)
            return took
        yield step


def inside(runs: int) -> dict:
    uri = os.environ[ENV_URI]
    with tempfile.TemporaryDirectory(prefix="bench-vagrant-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o711)
        with vmsandbox_create(work, uri, "libvirt") as libvirt_step, vmsandbox_create(work, uri, "vagrant") as vagrant_step:
            return Sides(runs, warmup=0).add(LIBVIRT, libvirt_step).add("vagrant up (plain)", plain_vagrant(work, uri)) \
                .add("vmsandbox create (vagrant provider)", vagrant_step).run()


LIBVIRT = "vmsandbox create (libvirt)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    if os.environ.get(ENV_NS):
        print(json.dumps(inside(args.runs)))
        return
    before = machine_state("before")
    net = root_network()
    p = PrivateLibvirt().start()
    try:
        r = subprocess.run(p.command_inside([sys.executable, __file__, "--runs", str(args.runs)]),
                           env={**os.environ, **p.env()}, capture_output=True, text=True, timeout=1800)
    finally:
        p.stop()
    assert root_network() == net, "the root namespace's links or routes changed"
    if r.returncode != 0:
        sys.exit(f"benchmark failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    samples = json.loads(r.stdout.strip().splitlines()[-1])
    after = machine_state("after")
    print(f"{args.runs} rounds, seconds to a first command")
    results = [report(f"{k} against {LIBVIRT}", samples, k, LIBVIRT) for k in samples if k != LIBVIRT]
    write_json(args.json, before=before, after=after, results=results, samples=samples)


if __name__ == "__main__":
    main()
