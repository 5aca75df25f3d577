import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vmsandbox.config import Limits, load_config, parse_cpu, parse_size
from vmsandbox.exceptions import ConfigError
from vmsandbox.providers import PROVIDERS
from vmsandbox.schema import LEVELS, ProviderSettings, validate
from vmsandbox.testing import FakeProvider


def test_defaults_cover_every_section():
    cfg = load_config(config={})
    assert cfg.sandbox.provider == "libvirt"
    assert cfg.safety.limits.memory == "8G"
    assert cfg.rollback.retention_days == 7
    assert cfg.monitoring.alerts.cpu_threshold == 80
    assert cfg.ssh.max_output_bytes == 16 << 20


@pytest.mark.parametrize("text,expected", [("4G", 4 << 30), ("256M", 256 << 20), ("1.5G", 3 << 29),
                                           ("512MiB", 512 << 20), (1024, 1024), ("10k", 10240)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["4Q", "", "-1G", "G", True, 0, "1 2G"])
def test_parse_size_rejects(bad):
    with pytest.raises(ConfigError):
        parse_size(bad, "x")


def test_parse_cpu():
    assert parse_cpu("0.5") == 0.5
    for bad in ("0", "-1", "two", None, "nan"):
        with pytest.raises(ConfigError):
            parse_cpu(bad)


@pytest.mark.parametrize("cfg,path", [
    ({"safety": {"limits": {"memory": "8Q"}}}, "safety.limits.memory"),
    ({"sandbox": {"bogus": 1}}, "sandbox.bogus"),
    ({"nonsense": {}}, "nonsense"),
    ({"monitoring": {"interval_seconds": "x"}}, "monitoring.interval_seconds"),
    ({"monitoring": {"interval_seconds": 0}}, "monitoring.interval_seconds"),
    ({"monitoring": {"alerts": {"cpu_threshold": 120}}}, "monitoring.alerts.cpu_threshold"),
    ({"monitoring": {"limit_action": "explode"}}, "monitoring.limit_action"),
    ({"sandbox": {"accelerator": "hvf"}}, "sandbox.accelerator"),
    ({"sandbox": {"default_isolation": "pod"}}, "sandbox.default_isolation"),
    ({"safety": {"validation": {"enabled": "yes"}}}, "safety.validation.enabled"),
    ({"sandbox": {"port_range": [80, 90]}}, "sandbox.port_range"),
    ({"sandbox": "flat"}, "sandbox"),
])
def test_errors_name_the_key_path(cfg, path):
    with pytest.raises(ConfigError) as e:
        load_config(config=cfg)
    assert str(e.value).startswith(path + ":"), str(e.value)


def test_yaml_file_and_dict_merge(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("sandbox:\n  ttl_seconds: 60\nmonitoring:\n  interval_seconds: 2\n")
    cfg = load_config(f, {"monitoring": {"enabled": False}})
    assert cfg.sandbox.ttl_seconds == 60
    assert cfg.monitoring.interval_seconds == 2
    assert cfg.monitoring.enabled is False


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("sandbox: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


# --- hostile values: one ConfigError naming the key, never a traceback later ------------------------

@pytest.mark.parametrize("yaml_text,path,words", [
    ("ssh:\n  connect_timeout: .inf\n", "ssh.connect_timeout", "finite"),
    ("ssh:\n  command_timeout: -.inf\n", "ssh.command_timeout", "finite"),
    ("rollback:\n  retention_days: .nan\n", "rollback.retention_days", "finite"),
    ("monitoring:\n  alerts:\n    cpu_threshold: .NaN\n", "monitoring.alerts.cpu_threshold", "finite"),
    ("safety:\n  limits:\n    cpu: .inf\n", "safety.limits.cpu", "CPU count"),
    ("ssh:\n  connect_timeout: 1.0e+300\n", "ssh.connect_timeout", "at most"),
    ("sandbox:\n  ttl_seconds: 0\n", "sandbox.ttl_seconds", "above 0"),
    ("sandbox:\n  boot_timeout_seconds: -5\n", "sandbox.boot_timeout_seconds", "above 0"),
    ("ssh:\n  command_timeout: 0\n", "ssh.command_timeout", "above 0"),
    ("monitoring:\n  interval_seconds: -1\n", "monitoring.interval_seconds", "above 0"),
    ("sandbox:\n  state_directory: var/lib/vmsandbox\n", "sandbox.state_directory", "absolute"),
    ("sandbox:\n  state_directory: ''\n", "sandbox.state_directory", "empty"),
    ("sandbox:\n  box_directory: ./boxes\n", "sandbox.box_directory", "absolute"),
    ("sandbox:\n  state_directory: \"/var/lib/a\\0b\"\n", "sandbox.state_directory", "control characters"),
    ("sandbox:\n  port_range: [20000]\n", "sandbox.port_range", "[low, high]"),
    ("sandbox:\n  port_range: [20000, 20001, 20002]\n", "sandbox.port_range", "[low, high]"),
    ("sandbox:\n  port_range: [29999, 20000]\n", "sandbox.port_range", "[low, high]"),
    ("sandbox:\n  port_range: [20000, 70000]\n", "sandbox.port_range", "[low, high]"),
    ("sandbox:\n  port_range: ['20000', '29999']\n", "sandbox.port_range", "[low, high]"),
    ("sandbox:\n  port_range: 20000-29999\n", "sandbox.port_range", "[low, high]"),
    ("safety:\n  validation:\n    enabled: 'true'\n", "safety.validation.enabled", "true or false"),
    ("rollback:\n  memory: 'no'\n", "rollback.memory", "true or false"),
    ("monitoring:\n  enabled: 1\n", "monitoring.enabled", "true or false"),
    ("ssh:\n  connect_timeout: '10'\n", "ssh.connect_timeout", "number"),
    ("ssh:\n  connect_timeout: true\n", "ssh.connect_timeout", "number"),
    ("monitoring:\n  history: 2.5\n", "monitoring.history", "whole number"),
    ("safety:\n  limits:\n    memory: 8Q\n", "safety.limits.memory", "'8Q' is not a size"),
    ("safety:\n  limits:\n    disk: 5000T\n", "safety.limits.disk", "too large"),
    ("safety:\n  limits:\n    disk: " + "9" * 400 + "G\n", "safety.limits.disk", "too large"),
    ("safety:\n  limits:\n    memory: true\n", "safety.limits.memory", "not a size"),
    ("ssh:\n  max_output: 64G\n", "ssh.max_output", "too large"),
    ("sandbox:\n  default_limits:\n    cpu: 5000\n", "sandbox.default_limits.cpu", "at most 1024"),
    ("sandbox:\n  domain_prefix: \"vmsbx-\\n\"\n", "sandbox.domain_prefix", "1-16"),
    ("sandbox:\n  default_box: 7\n", "sandbox.default_box", "not a valid box name"),
    ("sandbox:\n  default_box: ../x\n", "sandbox.default_box", "not a valid box name"),
    ("safety:\n  approval_callback: not-a-callback\n", "safety.approval_callback", "module:function"),
    ("sandbox:\n  provider: hyperv\n", "sandbox.provider", "not a provider (known: "),
    ("sandbox:\n  default_limits: [1, 2]\n", "sandbox.default_limits", "expected a mapping"),
])
def test_hostile_values_name_the_key(tmp_path, yaml_text, path, words):
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert e.value.path == path, str(e.value)
    assert words in str(e.value)
    assert "\n" not in str(e.value) and "pydantic" not in str(e.value) and "validation error" not in str(e.value)


def test_relative_state_dir_from_the_environment_says_so(monkeypatch):
    monkeypatch.setenv("VMSANDBOX_STATE_DIR", "relative/dir")
    with pytest.raises(ConfigError, match=r"^sandbox.state_directory \(from \$VMSANDBOX_STATE_DIR\): 'relative/dir' must be an absolute path"):
        load_config(config={})


@pytest.mark.parametrize("yaml_text,path,lines", [
    ("sandbox:\n  ttl_seconds: 60\n  ttl_seconds: 70\n", "sandbox.ttl_seconds", (3, 2)),
    ("ssh: {}\nsandbox: {}\nssh: {}\n", "ssh", (3, 1)),
    ("sandbox:\n  default_limits:\n    cpu: 1\n    memory: 1G\n    cpu: 2\n", "sandbox.default_limits.cpu", (5, 3)),
    ("safety:\n  validation:\n    patterns:\n      - x\n      - {pattern: y, level: HIGH, level: LOW}\n",
     "safety.validation.patterns[1].level", (5, 5)),
])
def test_duplicate_yaml_keys_are_errors_with_the_line(tmp_path, yaml_text, path, lines):
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert e.value.path == path
    assert f"duplicate key on line {lines[0]} of {f} (first given on line {lines[1]})" in str(e.value)


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    rows = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        rows.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    f = tmp_path / "bomb.yaml"
    f.write_text("\n".join(rows) + "\n")
    with pytest.raises(ConfigError, match="too large"):
        load_config(f)


def test_yaml_that_is_not_text_or_too_deep(tmp_path):
    f = tmp_path / "bin.yaml"
    f.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(f)
    f.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)


def test_config_objects_are_frozen_and_revalidated_on_replace():
    import dataclasses
    cfg = load_config(config={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ssh.connect_timeout = 1
    with pytest.raises(ConfigError, match="connect_timeout: -1 must be above 0"):
        dataclasses.replace(cfg.ssh, connect_timeout=-1)
    assert dataclasses.replace(cfg.ssh, connect_timeout=3).connect_timeout == 3
    assert Limits(cpu=2, memory=1 << 30).cpu == "2"
    with pytest.raises(ConfigError, match="^memory: '4Q' is not a size"):
        Limits(memory="4Q")
    assert hash(cfg) == hash(load_config(config={}))


def test_sandbox_section_defaults_and_paths():
    cfg = load_config(config={"sandbox": {"state_directory": "/srv/vmsbx"}})
    assert cfg.sandbox.state_path == Path("/srv/vmsbx") and cfg.sandbox.box_path == Path("/srv/vmsbx/boxes")
    d = cfg.sandbox.default_limits
    assert (d.cpu, d.memory, d.disk) == ("1", "256M", "1G")
    assert (d.cpu_count, d.memory_bytes, d.disk_bytes) == (1.0, 256 << 20, 1 << 30)
    assert load_config(config={"sandbox": {"box_directory": "/b"}}).sandbox.box_path == Path("/b")
    assert load_config(config={"sandbox": {"ttl_seconds": 60.0}}).sandbox.ttl_seconds == 60


def test_to_dict_round_trips_and_shows_the_provider(tmp_path):
    cfg = load_config(config={"safety": {"validation": {"patterns": ["x", {"pattern": "y", "level": "high"}]}},
                              "sandbox": {"accelerator": "tcg"}})
    data = cfg.to_dict()
    assert data["safety"]["validation"]["patterns"] == ["x", {"pattern": "y", "level": "HIGH", "regex": False}]
    assert data["providers"] == {"libvirt": {"uri": "qemu:///system", "accelerator": "tcg"}}
    assert "accelerator" not in data["sandbox"] and "libvirt_uri" not in data["sandbox"]
    assert load_config(config=data) == cfg
    f = tmp_path / "shown.yaml"
    f.write_text(yaml.safe_dump(data))
    assert load_config(f) == cfg


def test_layering_defaults_file_dict_environment(tmp_path, monkeypatch):
    f = tmp_path / "c.yaml"
    f.write_text("sandbox:\n  state_directory: /from/file\n  ttl_seconds: 60\nssh:\n  connect_timeout: 5\n")
    monkeypatch.setenv("VMSANDBOX_CONFIG", str(f))
    cfg = load_config(config={"sandbox": {"state_directory": "/from/dict"}})
    assert (cfg.sandbox.ttl_seconds, cfg.ssh.connect_timeout, cfg.sandbox.state_directory) == (60, 5, "/from/dict")
    monkeypatch.setenv("VMSANDBOX_STATE_DIR", "/from/env")
    assert load_config(config={"sandbox": {"state_directory": "/from/dict"}}).sandbox.state_directory == "/from/env"
    with pytest.raises(ConfigError, match="^sandbox: expected a mapping"):       # not hidden by the variable
        load_config(config={"sandbox": "flat"})
    assert load_config(f).ssh.connect_timeout == 5


def test_the_callers_dict_is_never_changed():
    given = {"sandbox": {"libvirt_uri": "qemu:///session"}}
    load_config(config=given)
    assert given == {"sandbox": {"libvirt_uri": "qemu:///session"}}


# --- providers.<name> sections and the deprecated aliases -----------------------------------------

def test_libvirt_section_and_its_aliases():
    cfg = load_config(config={"providers": {"libvirt": {"uri": "qemu:///session", "accelerator": "kvm"}}})
    s = cfg.provider_settings("libvirt")
    assert (s.uri, s.accelerator) == ("qemu:///session", "kvm")
    old = load_config(config={"sandbox": {"libvirt_uri": "qemu:///session", "accelerator": "kvm"}})
    assert old.provider_settings("libvirt") == s and old == cfg
    assert load_config(config={}).provider_settings("libvirt").accelerator == "auto"


def test_alias_errors_name_the_key_that_was_written(tmp_path):
    with pytest.raises(ConfigError, match=r"^sandbox.accelerator: 'hvf' is not one of"):
        load_config(config={"sandbox": {"accelerator": "hvf"}})
    with pytest.raises(ConfigError, match=r"^providers.libvirt.accelerator: 'hvf' is not one of"):
        load_config(config={"providers": {"libvirt": {"accelerator": "hvf"}}})
    with pytest.raises(ConfigError, match=r"^sandbox.libvirt_uri: 'a' conflicts with providers.libvirt.uri: 'b'"):
        load_config(config={"sandbox": {"libvirt_uri": "a"}, "providers": {"libvirt": {"uri": "b"}}})
    # a later layer's real key overrides an earlier layer's alias (no conflict across layers)
    f = tmp_path / "c.yaml"
    f.write_text("sandbox:\n  accelerator: kvm\n")
    assert load_config(f, {"providers": {"libvirt": {"accelerator": "tcg"}}}).provider_settings("libvirt").accelerator == "tcg"
    assert load_config(f, {"sandbox": {"accelerator": "tcg"}}).provider_settings("libvirt").accelerator == "tcg"


@pytest.mark.parametrize("cfg,path,words", [
    ({"providers": {"hyperv": {}}}, "providers.hyperv", "not a provider (known: "),
    ({"providers": {"libvirt": {"colour": 1}}}, "providers.libvirt.colour", "unknown key (known: accelerator, uri)"),
    ({"providers": {"libvirt": {"uri": 5}}}, "providers.libvirt.uri", "must be a string"),
    ({"providers": {"libvirt": "qemu:///system"}}, "providers.libvirt", "expected a mapping"),
    ({"providers": {"fake": {"anything": 1}}}, "providers.fake.anything", "unknown key (known: none)"),
    ({"providers": ["libvirt"]}, "providers", "expected a mapping"),
])
def test_provider_section_errors(cfg, path, words):
    with pytest.raises(ConfigError) as e:
        load_config(config=cfg)
    assert e.value.path == path and words in str(e.value), str(e.value)


class ToySettings(ProviderSettings):
    endpoint: str = "unix:///run/toy.sock"
    slots: int = 2
    fast: bool = False
    ratio: float = 0.5


class ToyProvider(FakeProvider):
    """A provider registered at test time: only its module, its Settings and a registry line."""
    name = "toy"
    Settings = ToySettings


def test_a_provider_registered_later_validates_its_own_section(monkeypatch):
    monkeypatch.setitem(PROVIDERS, "toy", f"{__name__}.ToyProvider")
    cfg = load_config(config={"sandbox": {"provider": "toy"}, "providers": {"toy": {"slots": 4}}})
    assert cfg.provider_settings("toy") == ToySettings(slots=4)
    assert cfg.to_dict()["providers"]["toy"] == {"endpoint": "unix:///run/toy.sock", "slots": 4, "fast": False,
                                                 "ratio": 0.5}
    for section_, words in (({"slots": "many"}, r"slots: 'many' must be a number"),
                            ({"slots": "4"}, r"slots: '4' must be a number"),
                            ({"fast": "yes"}, r"fast: 'yes' must be true or false"),
                            ({"ratio": float("nan")}, r"ratio: nan must be a finite number"),
                            ({"size": 1}, r"size: unknown key \(known: endpoint, fast, ratio, slots\)")):
        with pytest.raises(ConfigError, match="^providers.toy." + words):
            load_config(config={"providers": {"toy": section_}})
    monkeypatch.setitem(PROVIDERS, "broken", "no_such_module.Provider")
    with pytest.raises(ConfigError, match=r"^providers.broken: provider 'broken' cannot be loaded"):
        load_config(config={"providers": {"broken": {}}})


def test_container_isolation_needs_a_registered_container_provider(monkeypatch):
    with pytest.raises(ConfigError, match=r"^sandbox.default_isolation: 'container' is not supported yet.*'podman'"):
        load_config(config={"sandbox": {"default_isolation": "container", "container_provider": "podman"}})
    assert load_config(config={"sandbox": {"default_isolation": "container"}}).sandbox.default_isolation == "container"


# --- policy patterns go through the same schema ---------------------------------------------------

def test_pattern_entries_are_typed():
    p = load_config(config={"safety": {"validation": {"patterns": [
        "npm publish", {"pattern": "^x", "regex": True, "level": "medium"}]}}}).safety.validation.patterns
    assert [(e.pattern, e.level, e.regex) for e in p] == [("npm publish", "CRITICAL", False), ("^x", "MEDIUM", True)]
    with pytest.raises(ConfigError, match=r"^safety.validation.patterns\[0\].regex: 'yes' must be true or false"):
        load_config(config={"safety": {"validation": {"patterns": [{"pattern": "x", "regex": "yes"}]}}})
    with pytest.raises(ConfigError, match=r"^safety.validation.patterns\[0\]: 3 must be a string or a mapping"):
        load_config(config={"safety": {"validation": {"patterns": [3]}}})
    with pytest.raises(ConfigError, match=r"^safety.validation.patterns: 'rm' must be a list"):
        load_config(config={"safety": {"validation": {"patterns": "rm"}}})


def test_levels_match_the_policy():
    from vmsandbox.safety.models import RiskLevel
    assert LEVELS == tuple(RiskLevel.__members__)


def test_rollback_options_schema():
    from vmsandbox.rollback import RollbackOptions
    assert validate(RollbackOptions, None, "options") == RollbackOptions(preserve_logs=True, notify=True)
    assert validate(RollbackOptions, {"notify": False}, "options").notify is False
    with pytest.raises(ConfigError, match=r"^options.bogus: unknown key \(known: notify, preserve_logs\)"):
        validate(RollbackOptions, {"bogus": 1}, "options")
    with pytest.raises(ConfigError, match=r"^options.notify: 'yes' must be true or false"):
        validate(RollbackOptions, {"notify": "yes"}, "options")


def test_importing_config_loads_no_hypervisor_or_ssh_library():
    code = ("import sys, vmsandbox.config; "
            "print(sorted(m for m in ('libvirt', 'paramiko') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cleanup_days_go_through_the_schema(core):
    from vmsandbox import RollbackManager, StateManager
    rb = RollbackManager(StateManager(core=core))
    for bad, words in ((-1, "at least 0"), (float("nan"), "finite"), ("7", "number of days")):
        with pytest.raises(ConfigError, match=f"^days: .*{words}"):
            rb.cleanup_old_points(days=bad)
    assert rb.cleanup_old_points(days=0) == 0
