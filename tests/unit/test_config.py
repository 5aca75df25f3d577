import pytest

from vmsandbox.config import load_config, parse_cpu, parse_size
from vmsandbox.exceptions import ConfigError


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
    ({"sandbox": {"default_isolation": "container"}}, "sandbox.default_isolation"),
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
