"""`vmsandbox exec` in a fresh process, as people and scripts run it, on a real guest: it still
screens, audits, pins the host key and passes the exit code, and it does not import what it does
not need (rich, asyncio, tenacity, invoke, urllib)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .conftest import BOX_DIR

NOT_FOR_EXEC = ["rich", "asyncio", "tenacity", "invoke", "urllib.request", "docker", "celery"]


@pytest.fixture(scope="module")
def cli_env(env, core, tiny_box):
    cfg = Path(env.state_dir) / "cli.yaml"
    cfg.write_text(f"sandbox:\n  state_directory: {env.state_dir}\n  box_directory: {BOX_DIR}\n"
                   f"  domain_prefix: {env.prefix}\nmonitoring:\n  enabled: false\n")
    core.create_sandbox("fast", {"box": "tiny"})
    return {**{k: v for k, v in os.environ.items() if k != "VMSANDBOX_STATE_DIR"}, "VMSANDBOX_CONFIG": str(cfg)}


def run_cli(args: list[str], env: dict, stdin: bytes = b"") -> tuple[subprocess.CompletedProcess, set[str]]:
    """``vmsandbox ARGS`` in a new interpreter; also returns the modules it had imported at exit."""
    code = ("import sys, json, atexit\n"
            "atexit.register(lambda: sys.__stderr__.write('\\nMODULES ' + json.dumps(sorted(sys.modules)) + '\\n'))\n"
            f"sys.argv = ['vmsandbox'] + {args!r}\n"
            "from vmsandbox.cli import main\nmain()\n")
    r = subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True, env=env, timeout=120)
    err = r.stderr.decode()
    mods = [ln for ln in err.splitlines() if ln.startswith("MODULES ")]
    assert mods, err
    return r, set(json.loads(mods[-1][len("MODULES "):]))


def test_exec_runs_screened_and_audited_without_the_heavy_imports(cli_env, core):
    r, mods = run_cli(["exec", "fast", "--", "echo out; echo err >&2; exit 7"], cli_env)
    assert r.returncode == 7, r.stderr
    assert r.stdout == b"out\n" and r.stderr.startswith(b"err\n")
    assert not [m for m in NOT_FOR_EXEC if m in mods], sorted(m for m in NOT_FOR_EXEC if m in mods)
    assert "vmsandbox.safety" in mods and "paramiko" in mods          # the policy and the pinned SSH session
    audit = core.audit_log("fast", 2)                                  # newest last
    assert [a["operation"] for a in audit] == ["policy", "execute"]
    assert audit[-1]["detail"]["exit_code"] == 7


def test_exec_still_blocks_what_the_policy_blocks(cli_env, core):
    r, _ = run_cli(["exec", "fast", "--", "rm -rf /"], cli_env)
    assert r.returncode == 5 and r.stderr.startswith(b"error: blocked")
    assert core.audit_log("fast", 1)[0]["outcome"] == "block"


def test_exec_refuses_a_guest_with_another_host_key(cli_env, core):
    info = core.get("fast")
    pinned = info.host_key
    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    core.store.update_sandbox(info.id, host_key=other)
    try:
        r, _ = run_cli(["exec", "fast", "--", "true"], cli_env)
        assert r.returncode == 5 and b"host key" in r.stderr and b"Traceback" not in r.stderr
    finally:
        core.store.update_sandbox(info.id, host_key=pinned)
    r, _ = run_cli(["exec", "fast", "--", "true"], cli_env)
    assert r.returncode == 0, r.stderr


def test_list_into_a_pipe_needs_no_rich(cli_env):
    r, mods = run_cli(["list"], cli_env)
    assert r.returncode == 0 and b"fast" in r.stdout
    assert "rich" not in mods and "asyncio" not in mods
