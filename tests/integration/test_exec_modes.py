"""Exec modes on real guests: the tiny box (dropbear, busybox, root: ``cgroup``) and, when it is
built, the debian box (OpenSSH: ``leader``). The mode is probed once per sandbox and remembered
(a new core, a reboot and a rollback keep it); a timeout kills children, grandchildren, a
double-forked child and a nohup child; output, exit codes, stdin, env and working directory are
what they were."""
import json
from pathlib import Path

import pytest

from vmsandbox import execmode
from vmsandbox.boxes import INFO_FILE, BoxStore, recipe_digest
from vmsandbox.exceptions import NotFoundError

from .conftest import BOX_DIR

pytestmark = pytest.mark.timeout(900)

TREE = ("echo $$ >/tmp/pids; sleep 300 & echo $! >>/tmp/pids; sh -c 'sleep 301 & echo $! >>/tmp/pids; wait' & "
        "(sleep 302 & echo $! >>/tmp/pids); nohup sleep 303 >/dev/null 2>&1 & echo $! >>/tmp/pids; "
        "echo ready; wait")
# Pids from /tmp/pids still alive (zombies count as gone), after up to 5 s for the kill to land.
ALIVE = ("i=0; while [ $i -lt 50 ]; do a=; for p in $(cat /tmp/pids); do "
         "s=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null); [ -n \"$s\" ] && [ \"$s\" != Z ] && a=\"$a $p\"; done; "
         "[ -z \"$a\" ] && break; sleep 0.1; i=$((i+1)); done; echo \"alive:$a\"; wc -w </tmp/pids")


def assert_tree_killed(core, sid):
    r = core.execute(sid, TREE, timeout=2)
    assert r.timed_out and r.exit_code is None and "ready" in r.stdout, r
    check = core.execute(sid, ALIVE, timeout=30)
    lines = check.stdout.split("\n")
    assert lines[0] == "alive:" and lines[1].strip() == "5", check


def assert_results_unchanged(core, sid):
    r = core.execute(sid, "echo out; echo err >&2; exit 7")
    assert (r.stdout, r.stderr, r.exit_code, r.timed_out) == ("out\n", "err\n", 7, False)
    r = core.execute(sid, "wc -c", stdin=b"x" * 100000)
    assert r.stdout.split() == ["100000"]
    core.execute(sid, "mkdir -p '/tmp/with space'")
    r = core.execute(sid, 'pwd; echo "$G"; set | grep -c "^_vms_"', working_dir="/tmp/with space",
                     env={"G": "it's \"q\" $x"})
    assert r.stdout == "/tmp/with space\nit's \"q\" $x\n0\n", r


@pytest.fixture(scope="module")
def tiny(core):
    sid = core.create_sandbox("modes", {"box": "tiny", "resource_limits": {"cpu": "1", "memory": "256M", "disk": "1G"}})
    yield sid
    core.destroy(sid)


def test_tiny_box_probes_once_and_remembers_cgroup(env, core, tiny):
    info = core.store.get_sandbox(tiny)
    assert execmode.load(core.layout.sandbox_dir(info.id)) == "cgroup"
    assert core.session(info).exec_mode == "cgroup"
    other = env.core()                     # a fresh process: the mode is known before any command
    assert other.session(other.store.get_sandbox(tiny)).exec_mode == "cgroup"
    r = other.execute(tiny, "cat /proc/self/cgroup")
    assert f"0::/{Path(execmode.CGROUP_DIR).name}/" in r.stdout, r


def test_tiny_box_results_unchanged(core, tiny):
    assert_results_unchanged(core, tiny)


def test_tiny_box_timeout_kills_the_whole_tree(core, tiny):
    assert_tree_killed(core, tiny)


def test_tiny_box_earlier_background_child_survives_a_timeout(core, tiny):
    child = core.execute(tiny, "nohup sleep 310 >/dev/null 2>&1 & echo $!").stdout.strip()
    assert core.execute(tiny, "sleep 300", timeout=1).timed_out
    assert core.execute(tiny, f"kill -0 {child} && kill -9 {child}").exit_code == 0


def test_tiny_box_after_reboot_and_rollback(core, tiny):
    core.stop(tiny)
    core.start(tiny)                       # cgroup v2 is not mounted at boot: the first command makes the slots
    assert core.session(core.store.get_sandbox(tiny)).exec_mode == "cgroup"
    assert "/vmsandbox/" in core.execute(tiny, "cat /proc/self/cgroup").stdout
    assert_tree_killed(core, tiny)
    core.create_snapshot(tiny, "modes-snap")
    core.execute(tiny, "touch /tmp/after")
    core.rollback(tiny, "modes-snap")
    info = core.store.get_sandbox(tiny)
    assert core.session(info).exec_mode == "cgroup"
    assert core.execute(tiny, "test -e /tmp/after").exit_code != 0
    assert_tree_killed(core, tiny)


@pytest.fixture(scope="module")
def debian(core):
    try:
        box = BoxStore(Path(BOX_DIR)).get("debian")
        if json.loads((box.path / INFO_FILE).read_text()).get("recipe_digest") != recipe_digest("debian"):
            pytest.skip("the debian box is older than its recipe (tests/integration/test_debian.py rebuilds it)")
    except NotFoundError:
        pytest.skip("no debian box (vmsandbox box build debian)")
    sid = core.create_sandbox("modes-deb", {"box": "debian", "resource_limits": {"memory": "512M", "disk": "2G"}})
    yield sid
    core.destroy(sid)


def test_debian_box_uses_the_login_shell_as_it_is(core, debian):
    info = core.store.get_sandbox(debian)
    assert execmode.load(core.layout.sandbox_dir(info.id)) == "leader"
    assert_results_unchanged(core, debian)
    assert_tree_killed(core, debian)
