"""Real clients against real guests: the saved `ssh-config` (ssh, scp, sftp, rsync) before and after
a rollback and a restart, `vmsandbox ssh NAME CMD...`, stdin forwarded by `exec`, the capped
live output, the busybox applets and server tools of the tiny box, a memory clone's host name."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.timeout(900)
VMSANDBOX = [sys.executable, "-m", "vmsandbox"]


@pytest.fixture(scope="module")
def cli(env, tmp_path_factory):
    cfg = Path(env.state_dir) / "config.yaml"
    cfg.write_text(yaml.safe_dump(env.config(ssh={"max_output": "64K"})))

    def run(*args, input=None, check=True, timeout=180):
        done = subprocess.run([*VMSANDBOX, "--config", str(cfg), *args], input=input, capture_output=True,
                              timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
        if check:
            assert done.returncode == 0, done.stderr.decode()
        return done
    run.config = cfg
    return run


@pytest.fixture(scope="module")
def web(core, cli):
    sid = core.create_sandbox("web")
    yield sid
    core.destroy(sid)


def _ssh_cfg(cli, tmp_path, *names) -> Path:
    cfg = tmp_path / "ssh config"
    cfg.write_bytes(cli("ssh-config", *names).stdout)
    return cfg


def _ssh(cfg, *args, input=None):
    return subprocess.run(["ssh", "-F", str(cfg), "-o", "BatchMode=yes", *args], capture_output=True, text=True,
                          timeout=120, input=input, stdin=None if input is not None else subprocess.DEVNULL)


def _transfers_work(cfg: Path, tmp: Path, tag: str) -> None:
    payload = tmp / f"payload-{tag}"
    payload.write_bytes(bytes(range(256)) * 4096)          # 1 MiB, every byte value
    for how, cmd in (("scp", ["scp", "-F", str(cfg), "-o", "BatchMode=yes"]),          # SFTP protocol
                     ("scp-O", ["scp", "-O", "-F", str(cfg), "-o", "BatchMode=yes"])):  # legacy scp protocol
        done = subprocess.run([*cmd, str(payload), f"web:/tmp/{how}-{tag}"], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"{how}: {done.stderr}"
        back = tmp / f"back-{how}-{tag}"
        done = subprocess.run([*cmd, f"web:/tmp/{how}-{tag}", str(back)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0 and back.read_bytes() == payload.read_bytes(), f"{how}: {done.stderr}"
    batch = tmp / f"batch-{tag}"
    batch.write_text(f"put {payload} /tmp/sftp-{tag}\nls -l /tmp/sftp-{tag}\nget /tmp/sftp-{tag} {tmp}/sftp-back-{tag}\n")
    done = subprocess.run(["sftp", "-F", str(cfg), "-o", "BatchMode=yes", "-b", str(batch), "vmsandbox-web"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp / f"sftp-back-{tag}").read_bytes() == payload.read_bytes()
    if shutil.which("rsync"):
        src = tmp / f"tree-{tag}"
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "f").write_text("rsync\n")
        done = subprocess.run(["rsync", "-a", "-e", f"ssh -F '{cfg}' -o BatchMode=yes", f"{src}/", f"web:/tmp/rs-{tag}/"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert _ssh(cfg, "web", f"cat /tmp/rs-{tag}/sub/f").stdout == "rsync\n"


def test_saved_config_works_before_and_after_rollback_and_restart(core, cli, web, tmp_path):
    cfg = _ssh_cfg(cli, tmp_path, "web")
    text = cfg.read_text()
    assert text.startswith("Host web vmsandbox-web\n") and "Port" not in text and "ssh-proxy web" in text
    assert _ssh(cfg, "web", "hostname").stdout == "web\n"
    _transfers_work(cfg, tmp_path, "before")

    port = core.get(web).ssh_port
    snap = core.create_snapshot(web, "clients")
    core.execute(web, "echo after > /tmp/marker")
    assert core.rollback(web, snap)
    assert core.get(web).ssh_port != port                      # a new guest on a new port ...
    done = _ssh(cfg, "web", "cat /tmp/marker 2>/dev/null || echo rolled-back")
    assert done.returncode == 0 and done.stdout == "rolled-back\n", done.stderr   # ... same saved file
    _transfers_work(cfg, tmp_path, "after-rollback")

    core.stop(web)
    stopped = _ssh(cfg, "web", "true")
    assert stopped.returncode != 0 and "is stopped; `vmsandbox start web`" in stopped.stderr
    core.start(web)
    assert _ssh(cfg, "vmsandbox-web", "echo restarted").stdout == "restarted\n"
    assert cfg.read_text() == text                             # never regenerated


def test_ssh_takes_the_rest_as_the_remote_command(cli, web):
    done = cli("ssh", "web", "uname", "-n")
    assert done.stdout == b"web\n"
    done = cli("ssh", "web", "echo", "-n", "x", check=False)
    assert done.returncode == 0 and done.stdout == b"x"


def test_exec_forwards_stdin_when_it_is_not_a_terminal(cli, web):
    assert cli("exec", "web", "--", "cat", input=b"hi\n").stdout == b"hi\n"
    assert cli("exec", "web", "-n", "--", "cat", input=b"hi\n").stdout == b""     # like ssh -n
    big = bytes(range(256)) * 1024
    assert cli("exec", "web", "--", "sha256sum", input=big).stdout.split()[0] == \
        subprocess.run(["sha256sum"], input=big, capture_output=True).stdout.split()[0]


def test_live_output_is_capped_like_the_result_and_says_so(cli, web):
    done = cli("exec", "web", "--", "head -c 1000000 /dev/zero; echo done >&2")
    assert len(done.stdout) == 64 << 10                        # ssh.max_output: 64K in this module
    err = done.stderr.decode()
    assert "done\n" in err and "past ssh.max_output (64K per stream) was dropped" in err
    js = cli("exec", "web", "--json", "--", "head -c 1000000 /dev/zero | tr '\\0' a")
    out = yaml.safe_load(js.stdout)
    assert out["truncated"] is True and len(out["stdout"]) == 64 << 10


def test_tiny_box_has_the_tools_clients_expect(core, web):
    r = core.execute(web, "for t in nohup nice flock timeout setsid scp rsync; do command -v $t >/dev/null || echo missing $t; done;"
                          " test -x /usr/lib/sftp-server || echo missing sftp-server;"
                          " nohup sh -c 'echo bg > /tmp/nohup.out' >/dev/null 2>&1; cat /tmp/nohup.out")
    assert r.stdout == "bg\n", r.stdout


def test_memory_clone_gets_its_own_host_name(core, web):
    snap = core.create_snapshot(web, "for-clone")
    clone = core.create_sandbox("web-twin", {"clone_from": snap})
    try:
        assert core.execute(clone, "hostname").stdout == "web-twin\n"
        assert core.execute(web, "hostname").stdout == "web\n"
    finally:
        core.destroy(clone)
