"""The per-sandbox request schema (``create_sandbox(name, config)``), without a VM."""
import dataclasses

import pytest

from vmsandbox.config import Limits, load_config
from vmsandbox.exceptions import ConfigError, ResourceLimitError
from vmsandbox.providers import PROVIDERS
from vmsandbox.request import SANDBOX_KEYS, SandboxRequest, check_name, parse_request
from vmsandbox.testing import FakeProvider

CFG = load_config(config={"sandbox": {"default_box": "tiny", "ttl_seconds": 600}})


def test_defaults_come_from_the_config():
    r = parse_request(CFG, None)
    assert r == SandboxRequest(box="tiny", limits=Limits(), network_mode="none", persistent=False, clone_from=None,
                               ttl_seconds=600.0, provider="libvirt", isolation_type="vm")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.box = "other"
    assert parse_request(CFG, {}) == r


def test_every_key():
    r = parse_request(CFG, {"box": "alpine", "resource_limits": {"cpu": 2, "memory": "1G"}, "network_mode": "nat",
                            "persistent": True, "isolation_type": "vm", "clone_from": "sb:snap", "ttl_seconds": 60,
                            "provider": "fake"})
    assert (r.box, r.limits.cpu, r.limits.memory, r.limits.disk) == ("alpine", "2", "1G", "1G")
    assert (r.network_mode, r.persistent, r.clone_from, r.ttl_seconds, r.provider) == ("nat", True, "sb:snap", 60.0, "fake")
    assert SANDBOX_KEYS == {"box", "base_image", "resource_limits", "network_mode", "persistent", "isolation_type",
                            "clone_from", "ttl_seconds", "provider", "image"}


def test_base_image_is_an_alias_of_box():
    assert parse_request(CFG, {"base_image": "alpine"}).box == "alpine"
    assert parse_request(CFG, {"base_image": "alpine", "box": "alpine"}).box == "alpine"
    with pytest.raises(ConfigError, match=r"^sandbox config.box: give box or base_image"):
        parse_request(CFG, {"base_image": "alpine", "box": "tiny"})


@pytest.mark.parametrize("request_,path,words", [
    ({"colour": "red"}, "sandbox config.colour", "unknown key (known: base_image, box, clone_from"),
    ({"resource_limits": {"foo": 1}}, "sandbox config.resource_limits.foo", "unknown key (known: cpu, disk, memory)"),
    ({"resource_limits": "big"}, "sandbox config.resource_limits", "expected a mapping"),
    ({"resource_limits": {"memory": "4Q"}}, "sandbox config.resource_limits.memory", "'4Q' is not a size"),
    ({"resource_limits": {"memory": "32M"}}, "sandbox config.resource_limits.memory", "too little memory"),
    ({"resource_limits": {"cpu": "0"}}, "sandbox config.resource_limits.cpu", "CPU count above 0"),
    ({"resource_limits": {"cpu": float("nan")}}, "sandbox config.resource_limits.cpu", "CPU count"),
    ({"resource_limits": {"disk": True}}, "sandbox config.resource_limits.disk", "not a size"),
    ({"network_mode": "bridge"}, "sandbox config.network_mode", "'bridge' is not supported yet"),
    ({"network_mode": "host"}, "sandbox config.network_mode", "'host' is not one of none, nat"),
    ({"network_mode": ["nat"]}, "sandbox config.network_mode", "is not one of none, nat"),
    ({"persistent": "yes"}, "sandbox config.persistent", "'yes' must be true or false"),
    ({"persistent": 1}, "sandbox config.persistent", "must be true or false"),
    ({"ttl_seconds": float("inf")}, "sandbox config.ttl_seconds", "finite"),
    ({"ttl_seconds": float("nan")}, "sandbox config.ttl_seconds", "finite"),
    ({"ttl_seconds": 0}, "sandbox config.ttl_seconds", "above 0"),
    ({"ttl_seconds": -3}, "sandbox config.ttl_seconds", "above 0"),
    ({"ttl_seconds": "3600"}, "sandbox config.ttl_seconds", "must be a number of seconds"),
    ({"ttl_seconds": True}, "sandbox config.ttl_seconds", "must be a number of seconds"),
    ({"ttl_seconds": 10 ** 400}, "sandbox config.ttl_seconds", "at most"),
    ({"isolation_type": "chroot"}, "sandbox config.isolation_type", "not supported yet"),
    ({"isolation_type": "vm", "image": "x/y"}, "sandbox config.image", "image is for containers"),
    ({"provider": "hyperv"}, "sandbox config.provider", "'hyperv' is not a provider (known: "),
    ({"provider": 3}, "sandbox config.provider", "not a provider"),
    ({"box": ""}, "sandbox config.box", "not a valid box name"),
    ({"box": 5}, "sandbox config.box", "not a valid box name"),
    ({"box": "../../etc"}, "sandbox config.box", "not a valid box name"),
    ({"base_image": "tiny\n"}, "sandbox config.base_image", "not a valid box name"),
    ({"clone_from": 12}, "sandbox config.clone_from", "must be a string"),
])
def test_bad_requests_name_the_key(request_, path, words):
    with pytest.raises(ConfigError) as e:
        parse_request(CFG, request_)
    assert e.value.path == path and words in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_a_request_that_is_not_a_mapping():
    with pytest.raises(ConfigError, match=r"^sandbox config: expected a mapping, got list"):
        parse_request(CFG, ["box", "tiny"])


def test_limits_above_the_safety_ceiling():
    with pytest.raises(ResourceLimitError, match="resource_limits.memory 64G exceeds safety.limits.memory 8G"):
        parse_request(CFG, {"resource_limits": {"memory": "64G"}})
    with pytest.raises(ResourceLimitError, match="resource_limits.cpu 8 exceeds safety.limits.cpu 4"):
        parse_request(CFG, {"resource_limits": {"cpu": 8}})


def test_container_isolation_maps_to_the_container_provider(monkeypatch):
    monkeypatch.setitem(PROVIDERS, "docker", "vmsandbox.testing.FakeProvider")
    r = parse_request(CFG, {"isolation_type": "container"})
    assert (r.isolation_type, r.provider) == ("container", "docker")
    with pytest.raises(ConfigError, match=r"^sandbox config.provider: 'libvirt' is not the container provider"):
        parse_request(CFG, {"isolation_type": "container", "provider": "libvirt"})
    own = load_config(config={"sandbox": {"container_provider": "podman"}})
    with pytest.raises(ConfigError, match=r"needs the provider 'podman' \(sandbox.container_provider\), which is not registered"):
        parse_request(own, {"isolation_type": "container"})
    default_container = load_config(config={"sandbox": {"default_isolation": "container"}})
    assert parse_request(default_container, {}).provider == "docker"
    assert parse_request(default_container, {"isolation_type": "vm"}).provider == "libvirt"


def test_provider_default_and_a_provider_registered_at_test_time(monkeypatch):
    assert parse_request(load_config(config={"sandbox": {"provider": "fake"}}), {}).provider == "fake"
    monkeypatch.setitem(PROVIDERS, "toy", "vmsandbox.testing.FakeProvider")
    assert parse_request(CFG, {"provider": "toy"}).provider == "toy"


@pytest.mark.parametrize("name", ["a", "build-1", "0abc", "x" * 40])
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "Bad", "-x", "x" * 41, "ok\n", "ok\n\n", "a b", "ok/../x", None, 3, "ünï"])
def test_bad_names(name):
    with pytest.raises(ConfigError, match=r"^name: .* is not a valid sandbox name"):
        check_name(name)


def test_core_delegates_and_leaves_nothing_for_a_trailing_newline(core):
    assert core.parse_request({"box": "tiny"}).box == "tiny"
    with pytest.raises(ConfigError, match="not a valid sandbox name"):
        core.create_sandbox("ok\n")
    assert core.list_sandboxes() == [] and isinstance(core.provider, FakeProvider) and core.provider.domains == {}


def test_snapshot_names_must_match_whole_too(core):
    sid = core.create_sandbox("snaps")
    with pytest.raises(ConfigError, match="not a valid snapshot name"):
        core.create_snapshot(sid, "before\n")
    assert core.list_snapshots(sid) == []


@pytest.mark.parametrize("timeout,words", [(float("inf"), "finite"), (float("nan"), "finite"), (0, "above 0"),
                                           (-1, "above 0"), ("10", "number of seconds"), (1e12, "at most")])
def test_execute_timeout_goes_through_the_schema(core, timeout, words):
    sid = core.create_sandbox("t")
    with pytest.raises(ConfigError, match=f"^timeout: .*{words}"):
        core.execute(sid, "true", timeout=timeout)
    assert core.execute(sid, "true", timeout=5).exit_code == 0
