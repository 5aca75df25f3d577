"""Containers share the host's kernel: check the confinement the Docker provider applies by
default, from inside a real container (and what the core refuses for containers)."""
import uuid
from pathlib import Path

import pytest

from vmsandbox.exceptions import ConfigError, NotFoundError, SandboxError
from vmsandbox.providers.docker import KEPT_CAPABILITIES, PIDS_LIMIT

from .conftest import Env
from .containers import docker_leftovers, require_docker

pytestmark = pytest.mark.timeout(300)
CONTAINER = {"isolation_type": "container"}
# capability numbers (linux/capability.h)
_CAP_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6, "SETUID": 7,
             "NET_BIND_SERVICE": 10}


@pytest.fixture(scope="module")
def kit(tiny_box):
    client = require_docker(tiny_box)
    env = Env()
    core = env.core(safety={"validation": {"enabled": False}})      # the policy would block the fork bomb
    yield env, core, client
    for info in core.store.list_sandboxes():
        core.destroy(info.id)
    left = docker_leftovers(client, env.prefix, env.state_dir)
    env.teardown()
    assert left == {"containers": [], "images": []}, left


@pytest.fixture(scope="module")
def sb(kit):
    return kit[1].create_sandbox("hard", CONTAINER)


def run(kit, sb, cmd, **kw):
    return kit[1].execute(sb, cmd, **kw)


def test_capabilities_no_new_privileges_seccomp(kit, sb):
    status = dict(l.split(":\t", 1) for l in run(kit, sb, "cat /proc/self/status").stdout.splitlines() if ":\t" in l)
    expected = sum(1 << _CAP_BITS[c] for c in KEPT_CAPABILITIES)
    assert int(status["CapEff"], 16) == expected and int(status["CapBnd"], 16) == expected
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"                   # filter mode: Docker's default profile


@pytest.mark.parametrize("cmd", [
    "mount -t tmpfs none /mnt",                               # no CAP_SYS_ADMIN
    "ping -c1 -W1 127.0.0.1",                                 # raw socket: no CAP_NET_RAW
    "arping -c1 -I lo 127.0.0.1",                             # packet socket: no CAP_NET_RAW
    "echo b > /proc/sysrq-trigger",                           # masked by Docker
    "mknod /tmp/sda b 8 0",                                   # no CAP_MKNOD
    "echo 1 > /proc/sys/kernel/panic",                        # /proc/sys is read-only
])
def test_denied(kit, sb, cmd):
    r = run(kit, sb, cmd, timeout=20)
    assert r.exit_code not in (0, None), (cmd, r)


def test_no_network(kit, sb):
    assert run(kit, sb, "ls /sys/class/net").stdout.split() == ["lo"]
    routes = run(kit, sb, "cat /proc/net/route").stdout.splitlines()[1:]
    assert routes == []


def test_nat_is_refused_without_a_bridge(kit):
    env, core, client = kit
    if any(n.name == "bridge" for n in client.networks.list()):
        pytest.skip("this daemon has a bridge network")
    with pytest.raises(ConfigError, match="bridge"):
        core.create_sandbox("natted", {**CONTAINER, "network_mode": "nat"})
    assert "natted" not in [i.name for i in core.list_sandboxes()]
    assert not [c for c in client.containers.list(all=True) if c.name.startswith(env.prefix + "natted")]


def test_host_paths_unreachable(kit, sb):
    env, core, client = kit
    marker = Path(env.state_dir) / f"marker-{uuid.uuid4().hex}"
    marker.write_text("host secret\n")
    try:
        assert run(kit, sb, f"cat {marker}").exit_code != 0
    finally:
        marker.unlink()
    container = client.containers.get(core.get(sb).domain)
    for line in run(kit, sb, "cat /proc/self/mountinfo").stdout.splitlines():
        root, mountpoint = line.split()[3:5]
        allowed = (root == "/" or root.startswith("/docker/") or f"/containers/{container.id}/" in root
                   or root in ("/bus", "/fs", "/irq", "/sys", "/null", "/sysrq-trigger"))
        assert allowed, f"host path {root} mounted at {mountpoint}"
    ps = run(kit, sb, "ps -o args 2>/dev/null || ps").stdout
    assert "dockerd" not in ps and "libvirtd" not in ps            # its own pid namespace


def test_fork_bomb_is_contained(kit, sb):
    """Each bomb process only forks and exits, so at the limit the population collapses within
    milliseconds: proof of the limit is the cgroup's count of refused forks, not a sampled peak."""
    env, core, client = kit
    domain = core.get(sb).domain
    events = "cat /sys/fs/cgroup/pids/pids.events 2>/dev/null || cat /sys/fs/cgroup/pids.events"
    refused_before = int(run(kit, sb, events).stdout.split()[1])
    r = run(kit, sb, "f() { f | f & }; f 2>/dev/null; sleep 60", timeout=8)
    assert r.timed_out
    refused = int(run(kit, sb, events, timeout=30).stdout.split()[1]) - refused_before
    assert refused > 0, "the bomb never reached the pids limit"
    limit = run(kit, sb, "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max").stdout
    assert int(limit) == PIDS_LIMIT
    assert run(kit, sb, "echo alive", timeout=30).stdout == "alive\n"
    assert core.router.machine_stats(domain).extra["pids"] < 20          # the whole group was killed


def test_memory_limit_and_oom(kit, sb):
    env, core, _ = kit
    limit = run(kit, sb, "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert int(limit.stdout) == 256 << 20
    r = run(kit, sb, "x=$(head -c 400m /dev/zero | tr '\\0' a); echo ${#x}", timeout=60)   # held in memory
    assert r.exit_code != 0 and r.stdout == "", r
    assert run(kit, sb, "echo alive").stdout == "alive\n"


def test_memory_snapshot_refused(kit, sb):
    with pytest.raises(SandboxError, match="memory_snapshots"):
        kit[1].create_snapshot(sb, "with-memory", memory=True)
    assert kit[1].list_snapshots(sb) == []


def test_missing_image_one_clear_error(kit):
    env, core, client = kit
    with pytest.raises(NotFoundError, match="not in the Docker daemon"):
        core.create_sandbox("ghost", {**CONTAINER, "image": "vmsandbox/no-such-image"})
    assert "ghost" not in [i.name for i in core.list_sandboxes()]
    assert docker_leftovers(client, env.prefix + "ghost", "-")["containers"] == []
