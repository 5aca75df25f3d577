"""Issue-10 classes of the command policy, one behaviour each: globs, the working directory,
dataflow, option arguments that run commands, written scripts, persistence, VCS, spawn loops,
and the linear-time guard on user regex patterns."""
from __future__ import annotations

import pytest

from vmsandbox.exceptions import ConfigError
from vmsandbox.safety import RiskLevel, SafetyValidator
from vmsandbox.safety.parser import KNOWN_COMMANDS, MAX_LOOP_VALUES, parse_script
from vmsandbox.safety.rules import _CHECKS, glob_paths

C, H, M, L = RiskLevel.CRITICAL, RiskLevel.HIGH, RiskLevel.MEDIUM, RiskLevel.LOW


@pytest.fixture(scope="module")
def v() -> SafetyValidator:
    return SafetyValidator({"validation": {"patterns": []}})   # built-in rules only


def level(v: SafetyValidator, cmd: str) -> RiskLevel:
    return v.validate_command(cmd).risk_level


def rules(v: SafetyValidator, cmd: str) -> set[str]:
    return set(v.validate_command(cmd).rule_ids)


def test_every_checked_command_can_be_reached_through_a_glob() -> None:
    assert set(_CHECKS) <= KNOWN_COMMANDS


def test_glob_command_names_resolve_to_the_programs_they_match(v: SafetyValidator) -> None:
    a = v.validate_command("/bin/r? -rf /")
    assert a.risk_level == C and {"evasion.glob-command", "fs.delete-root"} <= set(a.rule_ids)
    glob = next(f for f in a.findings if f.rule_id == "evasion.glob-command")
    assert "rm" in glob.message
    assert "evasion.glob-command" not in rules(v, "\"/bin/r?\" -rf /tmp/x")     # quoted: no expansion
    assert level(v, "/opt/tools/my?tool --version") == M                       # matches nothing known


def test_glob_paths_match_per_component_and_keep_the_tail() -> None:
    assert "/etc/shadow" in glob_paths("/etc/sha*")
    assert "/etc/*" in glob_paths("/e?c/*")
    assert not glob_paths("/tmp/build-*")
    assert "/usr/bin" not in glob_paths("/*/bin/x")   # lengths must line up: /usr/bin/x is not /usr/bin


def test_working_directory_is_tracked_through_the_list(v: SafetyValidator) -> None:
    assert level(v, "cd / && rm -rf *") == C
    assert level(v, "cd /tmp && rm -rf *") == M
    assert level(v, "cd /opt && cd .. && rm -rf ./*") == C
    assert level(v, "cd \"$(mktemp -d)\" && rm -rf ./*") == M      # unknown directory: not guessed
    assert level(v, "cd / && popd && rm -rf *") == M                # popd: unknown again
    cmds = parse_script("cd /etc; cd ssh; ls").commands
    assert cmds[-1].cwd == "/etc/ssh"


def test_variable_defaults_read_and_loops(v: SafetyValidator) -> None:
    assert level(v, "rm -rf ${X:-/}") == C
    assert level(v, "X=build; rm -rf ${X:-/}") == M                  # set: the default is not used
    assert level(v, "rm -rf ${X:+/}") == M                            # unset: :+ gives nothing
    assert level(v, "read a b <<< 'x /etc'; rm -rf $b") == C
    assert level(v, "for d in build /boot; do rm -rf $d; done") == C
    values = " ".join(f"d{i}" for i in range(MAX_LOOP_VALUES + 5))
    script = parse_script(f"for d in {values}; do rm -rf $d; done")   # bounded work
    assert len([c for c in script.commands if c.name == "rm"]) == MAX_LOOP_VALUES


def test_function_bodies_are_applied_to_call_arguments_and_recursion_ends(v: SafetyValidator) -> None:
    assert level(v, "f(){ rm -rf \"$1\"; }; f /") == C
    assert level(v, "f(){ rm -rf \"$1\"; }; f build") == M
    assert level(v, "f(){ f \"$1\"; rm -rf \"$1\"; }; f /") == C      # self-call: body followed once
    assert level(v, "f(){ rm -rf \"$1\"; }; f build; rm -rf \"$1\"") == M   # $1 restored after the call


def test_symlinks_are_followed_only_through_the_link(v: SafetyValidator) -> None:
    assert level(v, "ln -s / /tmp/r; rm -rf /tmp/r/") == C
    assert level(v, "ln -s / /tmp/r; rm -rf /tmp/r") == M            # removes the link itself


def test_option_arguments_that_run_commands_are_rated_as_commands(v: SafetyValidator) -> None:
    assert level(v, "tar cf x.tar y --checkpoint=1 --checkpoint-action=exec='kill -9 1'") == C
    assert level(v, "git -c core.pager='rm -rf /tmp/cache' log") == M     # rated by what runs
    assert level(v, "git -c color.ui=always log") == L
    assert level(v, "ssh -o ProxyCommand=none host") == M
    a = v.validate_command("git -c core.sshCommand='reboot' fetch")
    assert a.risk_level == C and "sandbox.power" in a.rule_ids


def test_scripts_written_then_run(v: SafetyValidator) -> None:
    assert level(v, "echo 'rm -rf /' > x.sh; sh x.sh") == C
    assert level(v, "echo 'rm -rf /' > x.sh; echo ok > x.sh; sh x.sh") == M   # overwritten before the run
    assert level(v, "echo 'rm -rf /' > x.sh; make > x.sh; sh x.sh") == M      # unknown content
    assert level(v, "source <(echo 'reboot')") == C


def test_persistence_history_and_vcs(v: SafetyValidator) -> None:
    assert "persist.crontab" in rules(v, "crontab -r")
    assert level(v, "crontab -l") <= M
    assert "sandbox.swap" in rules(v, "swapoff -a")
    assert "evasion.history" in rules(v, "unset HISTFILE")
    assert "evasion.history" in rules(v, "export HISTSIZE=0")
    assert level(v, "export HISTSIZE=5000") <= M
    assert "vcs.force-push" in rules(v, "git push origin +main")
    assert level(v, "git push -o ci.skip origin main") == M
    assert "vcs.delete-repo" in rules(v, "rm -rf .git")
    assert level(v, "rm -rf .git/hooks/x") == M
    assert "cred.setuid" in rules(v, "install -m 4755 /bin/sh /tmp/s")
    assert level(v, "install -m 0755 app /tmp/app") == M


def test_spawn_loops(v: SafetyValidator) -> None:
    assert "proc.spawn-loop" in rules(v, "while true; do sleep 9 & done")
    assert level(v, "while true; do sleep 9 & break; done") == M          # leaves the loop
    assert level(v, "while read -r f; do gzip \"$f\" & done < list") == M  # bounded by its input
    assert level(v, "for i in 1 2 3; do sleep 9 & done") <= M
    assert level(v, "while true; do ./srv & pid=$!; sleep 9; kill $pid; done") == M   # a restart loop
    assert level(v, "(while true; do date; sleep 1; done) &") <= M                      # one loop in the background


def test_shell_word_rules_brace_lists_splitting_and_aliases(v: SafetyValidator) -> None:
    assert level(v, "rm -rf /{tmp,etc}") == C
    assert level(v, "rm -rf '/{tmp,etc}'") == M                        # quoted: no brace expansion
    assert level(v, "rm -rf $(echo /tmp /etc)") == C                    # unquoted: split into words
    assert level(v, "rm -rf \"$(echo /tmp /etc)\"") == M                 # quoted: one odd path
    assert level(v, "alias x='rm -rf'; x /") == C
    assert level(v, "alias rm='rm -i'; rm -rf build") == M            # self-referencing alias ends


def test_files_written_then_read_by_other_tools(v: SafetyValidator) -> None:
    assert level(v, "echo 'rm -rf /' > x; cat x | sh") == C
    assert level(v, "printf 'all:\\n\\treboot\\n' > M; make -f M") == C
    assert level(v, "printf 'all:\\n\\tgcc x.c\\n' > M; make -f M") == M
    assert level(v, "echo '@reboot rm -rf /' | crontab -") == C           # the line it will run
    assert level(v, "echo 'rm -rf ~' >> ~/.bashrc") == C                  # runs at the next login
    assert level(v, "echo 'export A=1' >> ~/.bashrc") == M


def test_bare_redirects_use_the_working_directory(v: SafetyValidator) -> None:
    assert "cred.account-write" in rules(v, "cd /etc && > passwd")
    assert level(v, "cd /tmp && > passwd") == M


def test_findings_explain_the_resolved_target(v: SafetyValidator) -> None:
    a = v.validate_command("cd /etc && rm -rf .")
    assert "/etc" in a.reason


def test_the_policy_is_a_pure_function(v: SafetyValidator) -> None:
    cmd = "cd / && f(){ rm -rf \"$1\"; }; f ./*; echo 'reboot' > x.sh; sh x.sh"
    first = v.validate_command(cmd)
    assert v.validate_command(cmd) == first
    assert v.validate_command("rm -rf *") .risk_level == M       # no cwd leaks from the earlier call


# --- user patterns: linear-time matching --------------------------------------------------------

@pytest.mark.timeout(20)
def test_backtracking_pattern_cannot_hang_validate() -> None:
    v = SafetyValidator({"validation": {"patterns": [{"pattern": "(a+)+$", "regex": True, "level": "HIGH"}]}})
    assert v.validate_command("echo " + "a" * 50_000 + "!").risk_level == L
    assert v.validate_command("echo aaaa").risk_level == H


@pytest.mark.parametrize("pattern", ["(?=rm)", "(rm)\\1", "(a{1000}){1000}", "("])
def test_patterns_re2_cannot_run_are_config_errors_naming_the_key(pattern: str) -> None:
    with pytest.raises(ConfigError) as exc:
        SafetyValidator({"validation": {"patterns": ["ok", {"pattern": pattern, "regex": True}]}})
    assert exc.value.path == "safety.validation.patterns[1].pattern"
    assert "RE2" in str(exc.value)


# --- robustness ----------------------------------------------------------------------------------

@pytest.mark.timeout(20)
@pytest.mark.parametrize("cmd", [
    "* * * * * * * * * * * *",                        # every word a glob naming every known program
    "eval * * * * * *",                               # ... re-parsed as a nested script
    "ech* \n* * * * root rm -rf /' >> /etc/crontab",  # found by fuzzing: took 451 s before the budget
    "printf '\\x<\\UFFFFFFFF' | sh",                  # escapes that are not characters
])
def test_pathological_commands_are_judged_quickly(v: SafetyValidator, cmd: str) -> None:
    assert level(v, cmd) >= M


@pytest.mark.timeout(60)
def test_random_mutations_of_the_corpora_never_raise(v: SafetyValidator) -> None:
    import random
    from pathlib import Path

    import yaml
    data = Path(__file__).resolve().parent.parent / "data"
    cmds = [e["cmd"] for name in ("dangerous", "heldout", "ordinary")
            for e in yaml.safe_load((data / f"policy_{name}.yaml").read_text())]
    tokens = list("{}[]()$`'\"\\|&;<>*?!#=~,:-/ \n") + ["$(", "${", "<<<", "<<EOF\n", "&&", "((", "[[", "do",
                                                          "done", "cd /", "ln -s / x", "f()", "$@", "${x[@]}"]
    rnd = random.Random(10)
    for _ in range(1500):
        c = rnd.choice(cmds)
        for _ in range(rnd.randint(1, 5)):
            i = rnd.randint(0, len(c))
            r = rnd.random()
            c = c[:i] + rnd.choice(tokens) + c[i:] if r < 0.5 else c[:i] + c[i + rnd.randint(1, 4):] \
                if r < 0.8 else c + rnd.choice([";", "|", " "]) + rnd.choice(cmds)
        v.validate_command(c)          # any exception fails the test
