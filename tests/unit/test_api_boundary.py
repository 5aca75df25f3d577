"""The seed API's own examples that used to fail obscurely: a synchronous core awaited inside an
event loop, a coroutine passed as an id, the whole config given to SafetyValidator, a dict or the
health metrics given to check_resource_limits, StateManager(storage_path=...) with a config file."""
from __future__ import annotations

import asyncio
import warnings

import pytest
import yaml

from vmsandbox import AsyncSandboxCore, StateManager, load_config
from vmsandbox.exceptions import ConfigError
from vmsandbox.health import Health, HealthStatus, Metrics
from vmsandbox.safety import SafetyValidator
from vmsandbox.safety.models import ResourceUsage
from vmsandbox.testing import fake_core

SEED_YAML = """
sandbox:
  default_isolation: container
  state_directory: /var/lib/sandbox
safety:
  validation:
    enabled: true
    block_dangerous: true
    patterns:
      - "rm -rf /"
      - ":(){ :|:& };:"
  limits:
    cpu: "4"
    memory: "8G"
    disk: "20G"
rollback:
  auto_snapshot: true
  retention_days: 7
  compression: true
monitoring:
  enabled: true
  interval_seconds: 10
  alerts:
    cpu_threshold: 80
    memory_threshold: 90
"""


def test_sync_call_inside_an_event_loop_is_refused_before_anything_happens(core):
    async def ci():
        return await core.create_sandbox("pr-1", {"isolation_type": "vm"})
    with pytest.raises(ConfigError, match=r"SandboxCore.create_sandbox\(\) is synchronous .* use AsyncSandboxCore"):
        asyncio.run(ci())
    assert core.list_sandboxes() == []                         # no VM was made
    assert core.provider.domains == {} and core.provider.calls == []


def test_sync_call_from_a_worker_thread_of_a_loop_is_fine(core):
    async def main():
        return await asyncio.to_thread(core.create_sandbox, "ok-1")
    sid = asyncio.run(main())
    assert core.get(sid).name == "ok-1"


def test_coroutine_or_wrong_type_where_a_value_is_expected(core):
    async def an_id():
        return "x"
    with warnings.catch_warnings():
        warnings.simplefilter("error")                         # the coroutine is closed, not leaked
        with pytest.raises(ConfigError, match=r"create_snapshot.sandbox_id: sandbox_id is a coroutine.*await it first"):
            core.create_snapshot(an_id(), "snap")
    with pytest.raises(ConfigError, match=r"execute.command: expected a string, got int"):
        core.execute("x", 42)
    with pytest.raises(ConfigError, match=r"pause\(\): missing a required argument: 'sandbox_id'"):
        core.pause()
    with pytest.raises(ConfigError, match=r"create_sandbox.config: expected a mapping, got str"):
        core.create_sandbox("n", "tiny")


def test_async_core_works_inside_the_loop(tmp_path):
    async def main():
        core = AsyncSandboxCore.__new__(AsyncSandboxCore)
        core.sync = fake_core(tmp_path, {"safety": {"validation": {"enabled": False}}})
        sid = await core.create_sandbox("a-1")
        info = await core.get(sid)
        await core.destroy(sid)
        await core.close()
        return info.name
    assert asyncio.run(main()) == "a-1"


def test_safety_validator_takes_the_whole_config():
    config = yaml.safe_load(SEED_YAML)
    validator = SafetyValidator(config)
    assessment = validator.validate_command("rm -rf /")
    assert assessment.risk_level == "CRITICAL"
    assert validator.limits.memory == "8G"
    assert SafetyValidator(config["safety"]).limits.memory == "8G"      # the section alone still works
    with pytest.raises(ConfigError, match="safety.limits.cpu"):
        SafetyValidator({"safety": {"limits": {"cpu": "lots"}}})


def test_check_resource_limits_accepts_usage_dict_and_health_metrics():
    v = SafetyValidator({"safety": {"limits": {"cpu": "1", "memory": "1G", "disk": "2G"}}})
    assert v.check_resource_limits(ResourceUsage(cpu=0.5))
    assert v.check_resource_limits({"cpu": 0.5, "memory": "512M"})
    assert not v.check_resource_limits({"memory": 2 << 30})
    m = Metrics(state="running", sampled_at=0.0, cpu_used=1.5, memory_used=1 << 20, disk_used=1 << 20)
    assert not v.check_resource_limits(m)
    h = Health(sandbox="s", status=HealthStatus.HEALTHY, metrics=m, alerts=(), recommendations=())
    assert not v.check_resource_limits(h)
    assert not v.check_resource_limits(h.metrics)
    with pytest.raises(ConfigError, match="usage: expected ResourceUsage, a mapping"):
        v.check_resource_limits(0.5)
    with pytest.raises(ConfigError, match="usage: unknown key 'gpu'"):
        v.check_resource_limits({"gpu": 1})


def test_state_manager_layers_config_like_sandbox_core(tmp_path, monkeypatch):
    boxes = tmp_path / "my-boxes"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"sandbox": {"state_directory": str(tmp_path / "main"), "box_directory": str(boxes),
                                               "provider": "fake", "domain_prefix": "seedx-"}}))
    sm = StateManager(storage_path=str(tmp_path / "elsewhere"), config_path=str(cfg))
    try:
        assert sm.core.config.sandbox.domain_prefix == "seedx-"             # the file's settings apply
        assert sm.core.config.sandbox.box_path == boxes
        assert sm.core.state_dir == tmp_path / "elsewhere"
    finally:
        sm.close()
    monkeypatch.setenv("VMSANDBOX_CONFIG", str(cfg))                        # the same via the environment
    sm = StateManager(storage_path=str(tmp_path / "third"))
    try:
        assert sm.core.config.sandbox.box_path == boxes and sm.core.config.sandbox.domain_prefix == "seedx-"
    finally:
        sm.close()
    monkeypatch.delenv("VMSANDBOX_CONFIG")
    sm = StateManager(storage_path=str(tmp_path / "fourth"), config={"sandbox": {"provider": "fake"}})
    try:   # no box_directory anywhere: the boxes of the default state directory, not <storage_path>/boxes
        assert sm.core.config.sandbox.box_path == load_config().sandbox.box_path != tmp_path / "fourth" / "boxes"
    finally:
        sm.close()


def test_a_state_database_error_is_one_vmsandbox_error_naming_the_method(core):
    import sqlite3
    from vmsandbox.exceptions import StateDatabaseError
    core.create_sandbox("db-1")
    other = sqlite3.connect(core.store.path)       # another process damages the database
    other.execute("DROP TABLE audit")
    other.close()
    with pytest.raises(StateDatabaseError, match=r"SandboxCore.audit_log\(\): state database: no such table: audit") as e:
        core.audit_log()
    assert isinstance(e.value.__cause__, sqlite3.OperationalError)
