"""One contract for every provider: the same calls through SandboxCore must behave the same on a
VM (libvirt) and a container (docker): create, the semantics of execute (exit codes, streams,
stdin, env, working directory, output caps, streaming, a timeout that kills the whole process
tree), file copy, snapshot, rollback, clone, delete, limits, power, destroy, and nothing leaked.

A provider is one entry of ``PROVIDERS``: the per-sandbox config that selects it and a check that
it can run here."""
import os
import threading

import pytest

from vmsandbox.models import SandboxState

from .conftest import Env, assert_clean
from .containers import docker_leftovers, require_docker

pytestmark = pytest.mark.timeout(600)

PROVIDERS = {
    "libvirt": {},
    "docker": {"isolation_type": "container"},
}
if os.environ.get("VMSANDBOX_TEST_NETNS"):     # inside the private namespace test_vagrant.py makes: Vagrant only
    PROVIDERS = {"vagrant": {"provider": "vagrant"}}
MAX_OUTPUT = 64 << 10


class Kit:
    def __init__(self, kind, env, core, create_cfg, docker=None):
        self.kind, self.env, self.core, self.create_cfg, self.docker = kind, env, core, create_cfg, docker

    def create(self, name, **extra):
        return self.core.create_sandbox(name, {**self.create_cfg, **extra})

    def leftovers(self):
        left = self.env.leftovers()
        if self.docker is not None:
            left.update(docker_leftovers(self.docker, self.env.prefix, self.env.state_dir))
        return left


@pytest.fixture(scope="module", params=list(PROVIDERS))
def kit(request, tiny_box):
    kind = request.param
    docker = require_docker(tiny_box) if kind == "docker" else None
    env = Env()
    core = env.core(ssh={"max_output": f"{MAX_OUTPUT}"}, safety={"validation": {"enabled": False}})
    k = Kit(kind, env, core, PROVIDERS[kind], docker)
    yield k
    for info in core.store.list_sandboxes():
        core.destroy(info.id)
    core.snapshots.wait_background()
    assert core.router.list_machines(env.prefix) == []
    assert core.router.stray_artifacts(set()) == []
    left = k.leftovers()
    env_left = env.teardown()
    assert env_left == {"domains": [], "layers": [], "memory": []}, env_left
    assert all(not v for v in left.values()), f"leaked: {left}"


@pytest.fixture(scope="module")
def sb(kit):
    sid = kit.create("main")
    assert kit.core.get(sid).provider == kit.kind
    return sid


def test_exec_semantics(kit, sb):
    core = kit.core
    r = core.execute(sb, "echo out; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code, r.timed_out) == ("out\n", "err\n", 3, False)
    r = core.execute(sb, 'cat; echo "$A|$B"; pwd', stdin=b"in put\n", env={"A": "x y", "B": "$HOME"}, working_dir="/tmp")
    assert r.stdout == "in put\nx y|$HOME\n/tmp\n"
    assert core.execute(sb, "true", working_dir="/no/such/dir").exit_code != 0
    chunks = []
    r = core.execute(sb, f"head -c {MAX_OUTPUT * 2} /dev/zero | tr '\\0' a", on_stdout=chunks.append)
    assert r.truncated and len(r.stdout) == MAX_OUTPUT and r.exit_code == 0
    assert sum(map(len, chunks)) == MAX_OUTPUT              # the stream is capped like the result


def test_streaming_arrives_while_running(kit, sb):
    seen = threading.Event()
    r = kit.core.execute(sb, "echo first; sleep 2; echo second", on_stdout=lambda c: seen.set())
    assert seen.is_set() and r.stdout == "first\nsecond\n"


def test_timeout_kills_the_whole_tree(kit, sb):
    core = kit.core
    r = core.execute(sb, "sleep 301 & sleep 302; echo never", timeout=2)
    assert r.timed_out and r.exit_code is None and "never" not in r.stdout
    ps = core.execute(sb, "ps -o pid,args 2>/dev/null || ps").stdout
    assert "sleep 301" not in ps and "sleep 302" not in ps, ps


def test_copy_in_and_out(kit, sb, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(200_000))
    kit.core.put_file(sb, src, "/tmp/copied")
    kit.core.get_file(sb, "/tmp/copied", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()


def test_snapshot_rollback_clone_delete(kit, sb):
    core = kit.core
    core.execute(sb, "mkdir -p /work && echo base > /work/f && sync")
    snap = core.create_snapshot(sb, "base")
    core.execute(sb, "echo changed > /work/f; touch /work/new")
    assert core.rollback(sb, snap)
    assert core.execute(sb, "cat /work/f; ls /work").stdout == "base\nf\n"
    clone = kit.create("clone", clone_from=snap)
    assert core.get(clone).provider == kit.kind
    core.execute(clone, "echo clone > /work/f")
    assert core.execute(clone, "cat /work/f").stdout == "clone\n"
    assert core.execute(sb, "cat /work/f").stdout == "base\n"        # independent
    core.destroy(clone)
    second = core.create_snapshot(sb, "second")
    core.delete_snapshot(sb, second)
    assert [s.name for s in core.list_snapshots(sb)] == ["base"]
    core.delete_snapshot(sb, snap)
    assert core.list_snapshots(sb) == []
    assert core.tree.verify() == []
    assert core.router.stray_artifacts(core.tree.known_refs()) == []


def test_limits_and_power(kit, sb):
    core = kit.core
    health = core.get_health_status(sb)
    limit = 256 << 20
    assert health.metrics.memory_total and 0.7 * limit <= health.metrics.memory_total <= limit, health.metrics
    assert core.throttle(sb, 0.5).throttled == 0.5
    assert core.unthrottle(sb).throttled is None
    assert core.pause(sb).state is SandboxState.PAUSED
    assert core.router.machine_state(core.get(sb).domain) == "paused"
    assert core.resume(sb).state is SandboxState.RUNNING
    assert core.execute(sb, "echo up").stdout == "up\n"


def test_emergency_shutdown_and_destroy_leave_nothing(kit, sb):
    core = kit.core
    sid = kit.create("doomed")
    domain = core.get(sid).domain
    core.create_snapshot(sid, "s")
    assert core.emergency_shutdown(sid).state is SandboxState.STOPPED
    assert core.router.machine_state(domain) in ("shutoff", "crashed")
    core.destroy(sid)
    assert domain not in core.router.list_machines(kit.env.prefix)
    assert_clean_all(kit)


def assert_clean_all(kit):
    core = kit.core
    core.snapshots.wait_background()
    assert core.tree.verify() == []
    assert set(core.router.list_machines(kit.env.prefix, owner=str(core.state_dir))) == \
        {i.domain for i in core.store.list_sandboxes()}
    if kit.kind in ("libvirt", "vagrant"):
        assert_clean(kit.env, core)
