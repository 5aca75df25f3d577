"""Names are matched in full (no trailing newline), and a failing approval callback is one clear error."""
import sys
import types

import pytest
from click.testing import CliRunner

from vmsandbox.cli import _context, cli
from vmsandbox.exceptions import ConfigError, SecurityError
from vmsandbox.testing import fake_core


@pytest.mark.parametrize("name", ["ok\n", "ok\r", "\nok", "ok\x00", "ok ", "Ok", "a" * 41, "", "-x"])
def test_bad_sandbox_names_are_refused(core, name):
    with pytest.raises(ConfigError, match="not a valid sandbox name"):
        core.create_sandbox(name)
    assert core.store.list_sandboxes() == []


@pytest.mark.parametrize("name", ["s1\n", "s1\r\n", "\ns1", "s 1", "s1/", "x" * 81])
def test_bad_snapshot_names_are_refused(core, name):
    sid = core.create_sandbox("sb")
    with pytest.raises(ConfigError, match="not a valid snapshot name"):
        core.create_snapshot(sid, name)
    assert core.list_snapshots(sid) == []


def test_bad_box_names_are_refused(core):
    from vmsandbox.boxes import BOX_NAME_RE
    assert BOX_NAME_RE.fullmatch("tiny") and not BOX_NAME_RE.fullmatch("tiny\n")


@pytest.mark.parametrize("error", [RuntimeError("approver down"), KeyError("x"), ZeroDivisionError()])
def test_a_raising_approval_callback_is_a_security_error_naming_it(tmp_path, monkeypatch, error):
    mod = types.ModuleType("approver_that_breaks")

    def approve(assessment, info):
        raise error
    mod.approve = approve
    monkeypatch.setitem(sys.modules, "approver_that_breaks", mod)
    core = fake_core(tmp_path, {"safety": {"approval_callback": "approver_that_breaks:approve"}})
    sid = core.create_sandbox("appr")
    with pytest.raises(SecurityError, match="approval callback 'approver_that_breaks:approve' failed") as e:
        core.execute(sid, "cat /etc/shadow")
    assert type(error).__name__ in str(e.value)
    assert core.fake_sessions[sid].commands == []                 # not run
    rows = [r for r in core.audit_log("appr") if r["operation"] == "policy"]
    assert rows[0]["outcome"] == "callback_failed" and rows[0]["detail"]["callback"] == "approver_that_breaks:approve"
    monkeypatch.setattr(_context.AppContext, "core", property(lambda self: core))
    r = CliRunner().invoke(cli, ["exec", "appr", "--", "cat /etc/shadow"])
    assert r.exit_code == 5 and r.output.count("\n") == 1 and "Traceback" not in r.output
    assert r.output.startswith("error: approval callback 'approver_that_breaks:approve' failed")
    core.close()


def test_create_and_clone_each_pin_their_own_host_key(core):
    """On the fakes: the record carries a fresh key per sandbox (real guests: tests/integration/test_security.py)."""
    a = core.create_sandbox("a")
    b = core.create_sandbox("b")
    ka, kb = (core.get(x).host_key for x in (a, b))
    assert ka.startswith("ssh-ed25519 ") and kb.startswith("ssh-ed25519 ") and ka != kb
    snap = core.create_snapshot(a, "s")
    c = core.create_sandbox("c", {"clone_from": snap})
    kc = core.get(c).host_key
    assert kc not in (ka, kb) and core.fake_sessions[c].host_key == kc
    core.rollback(a, snap)
    assert core.get(a).host_key == ka                    # rollback keeps the sandbox's key


@pytest.mark.parametrize("user", ["root\n    ProxyCommand touch /tmp/pwned", 'ro"ot', "ro\x1bot", ""])
def test_openssh_config_refuses_values_that_would_inject_directives(tmp_path, user):
    from vmsandbox.client_config import ClientSettings

    def block(u, key):
        return ClientSettings("x", u, key, tmp_path / "known", "vmsandbox-sb-1", ("vmsandbox", "ssh-proxy", "x")).config_block()
    with pytest.raises(ConfigError, match="OpenSSH config"):
        block(user, tmp_path / "key")
    assert "User root" in block("root", tmp_path / "k y")
