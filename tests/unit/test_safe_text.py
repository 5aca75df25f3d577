"""Hostile text (from guests, commands, files) through every CLI view: shown literally, control
characters visible, never styled, never a crash."""
import pytest
from click.testing import CliRunner
from rich.console import Console

from vmsandbox._safe_text import visible
from vmsandbox.cli import _context, cli
from vmsandbox.exceptions import GuestUnreachableError, ProviderError
from vmsandbox.health import Alert, Health, HealthStatus, Metrics
from vmsandbox.providers import ProviderCheck

MARKUP = ["[/x]", "[bold red]FAKE[/bold red]", "[link=file:///etc/passwd]x[/link]", "[/]", "\\[b]", ":smile:"]
CONTROLS = ["\x1b]0;pwned title\x07", "\x1b[2J\x1b[H", "\x1b[31mred", "nul\x00byte", "\x9b31m", "del\x7f",
            "bidi \u202eexe.txt\u202c", "iso\u2066late\u2069", "zero\u200bwidth", "bom\ufeff", "line\u2028sep",
            "bell\x07", "back\bspace", "\rcarriage", "tab\there"]
LONG = "A" * 100_000
CORPUS = MARKUP + CONTROLS + [LONG, "multi\nline\n[/x]\x1b[2J"]


def clean(output: str) -> bool:
    """Only printable characters and newlines reached the terminal."""
    return all(c == "\n" or c.isprintable() for c in output)


@pytest.fixture
def run(core, monkeypatch):
    """Invoke the CLI on the fake core, with a wide console so literal checks are not wrapped."""
    monkeypatch.setattr(_context.AppContext, "core", property(lambda self: core))
    monkeypatch.setattr(_context, "out", Console(width=100_000))

    def invoke(*args):
        return CliRunner().invoke(cli, ["--state-dir", str(core.state_dir), *args], catch_exceptions=False)
    return invoke


def test_visible_escapes_every_control_and_format_character():
    assert visible("\x1b]0;t\x07") == "\\x1b]0;t\\x07"
    assert visible("a\u202eb") == "a\\u202eb"
    assert visible("a\nb") == "a\\nb"
    assert visible("a\nb", multiline=True) == "a\nb"
    assert visible("\x00\x7f\x9b\t\r") == "\\x00\\x7f\\x9b\\t\\r"
    assert visible("\U000e0041") == "\\U000e0041"          # a tag character (Cf)
    assert visible("ünïcödé 中文 [b]") == "ünïcödé 中文 [b]"
    cut = visible(LONG, max_line=100)
    assert cut.startswith("A" * 100) and "99900 more characters" in cut and len(cut) < 200
    for s in CORPUS:
        assert clean(visible(s, multiline=True))
        assert s is LONG or visible(visible(s)) == visible(s)   # idempotent: core and CLI may both escape


@pytest.mark.parametrize("hostile", CORPUS)
def test_list_and_show_of_a_sandbox_whose_note_is_hostile(core, run, hostile):
    sid = core.create_sandbox("box1")
    core.store.update_sandbox(sid, reason=hostile)
    for view in (["list"], ["show", "box1"]):
        r = run(*view)
        assert r.exit_code == 0, r.output
        assert clean(r.output)
        if hostile in MARKUP:
            assert hostile in r.output                      # shown literally, not as markup


def test_failed_rollback_console_tail_is_escaped_everywhere(core, run):
    """The issue's case: a guest prints escapes on its console, the rollback fails after the commit
    point and the tail lands in the sandbox's note."""
    sid = core.create_sandbox("box1")
    snap = core.create_snapshot(sid, "s1")
    tail = "\x1b]0;owned\x07\x1b[2J[/x][bold red]FAKE[/bold red]"

    from vmsandbox.testing import FakeSession
    core.sessions.factory = lambda info: FakeSession(info.ssh_port, ready_error=GuestUnreachableError(
        f"no answer; console log last lines:\n{tail}"))        # the rolled-back guest never answers
    r = run("rollback", "box1", snap)
    assert r.exit_code != 0 and clean(r.output) and "\\x1b]0;owned" in r.output
    for view in (["list"], ["show", "box1"]):
        r = run(*view)
        assert r.exit_code == 0 and clean(r.output) and "[/x][bold red]FAKE[/bold red]" in r.output


@pytest.mark.parametrize("hostile", CORPUS)
def test_audit_table_shows_commands_literally(core, run, hostile):
    sid = core.create_sandbox("box1")
    core.store.audit("execute", "ok", core.get(sid), command=hostile)
    r = run("audit")
    assert r.exit_code == 0, r.output
    assert clean(r.output)
    if hostile in MARKUP:
        assert hostile in r.output


@pytest.mark.parametrize("hostile", CORPUS)
def test_snapshot_list_reason(core, run, hostile):
    sid = core.create_sandbox("box1")
    core.create_snapshot(sid, "s1", metadata={"reason": hostile})
    r = run("snapshot", "list", "box1")
    assert r.exit_code == 0 and clean(r.output)
    if hostile in MARKUP:
        assert hostile in r.output


@pytest.mark.parametrize("hostile", CORPUS)
def test_health_and_top(core, run, monkeypatch, hostile):
    sid = core.create_sandbox("box1")
    h = Health(HealthStatus.DEGRADED, Metrics(state="running", sampled_at=0.0),
               alerts=(Alert("cpu", "warning", hostile, 0.0),), recommendations=(hostile,), sandbox=hostile)
    monkeypatch.setattr(core, "get_health_status", lambda _id: h)
    for view in (["health", "box1"], ["top", "--once"]):
        r = run(*view)
        assert r.exit_code == 0, r.output
        assert clean(r.output)
    assert sid


@pytest.mark.parametrize("hostile", CORPUS)
def test_doctor_and_gc_lines(core, run, monkeypatch, hostile):
    monkeypatch.setattr(core, "doctor", lambda: [ProviderCheck("x", False, hostile, hostile)])
    r = run("doctor")
    assert r.exit_code == 1 and clean(r.output)
    name = hostile.replace("/", "_").replace("\x00", "0")[:200]
    (core.state_dir / "sandboxes" / name).mkdir()
    r = run("gc", "--dry-run")
    assert r.exit_code == 0 and clean(r.output) and "would remove directory" in r.output


@pytest.mark.parametrize("hostile", CORPUS)
def test_error_lines_from_exec_and_main(core, run, hostile):
    sid = core.create_sandbox("box1")
    session = core.session(core.get(sid))

    def boom(*a, **k):
        raise ProviderError(f"guest said: {hostile}")
    session.execute = boom
    r = run("exec", "box1", "--", "true")
    assert r.exit_code == 1 and clean(r.output) and r.output.startswith("error: guest said: ")
    r = run("show", hostile)                                 # an unknown name echoed in the error
    assert r.exit_code == 3 and clean(r.output)


@pytest.mark.parametrize("hostile", CORPUS)
def test_validate_view(run, hostile):
    r = run("validate", f"echo {hostile}; rm -rf / {hostile}")
    assert r.exit_code == 2 and clean(r.output)


def test_progress_and_status_lines_are_literal():
    rec = Console(record=True, width=300, force_terminal=False)
    for s in CORPUS:
        rec.print(_context.literal(f"waiting {s}", max_line=200))
    text = rec.export_text()
    assert clean(text) and "[bold red]FAKE[/bold red]" in text


def test_log_lines_are_escaped():
    import logging
    from vmsandbox._safe_text import SafeFormatter
    rec = logging.LogRecord("x", logging.WARNING, "f", 1, "fix-up failed: %s", ("\x1b]0;t\x07",), None)
    assert SafeFormatter("%(message)s").format(rec) == "fix-up failed: \\x1b]0;t\\x07"
