"""The per-sandbox request: ``create_sandbox(name, config)``'s name and config dict ->
a validated, frozen ``SandboxRequest``.

Owns the request schema (the same ``schema`` types as the config file), the defaults a request
takes from the config (box, limits, ttl, isolation, provider), the mapping of
``isolation_type`` to a provider, and the checks against ``safety.limits``. Errors are one
``ConfigError`` naming ``sandbox config.<key>`` (or ``ResourceLimitError`` above a ceiling).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Mapping, Optional

from pydantic import AfterValidator, BeforeValidator

from .config import BoxName, Config, Limits, ProviderName, _image_name, container_unavailable
from .exceptions import ConfigError, ResourceLimitError
from .schema import Cpu, Flag, Seconds, Size, fail, message_of, section, show, text, validate

Text = text()

PATH = "sandbox config"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")       # always fullmatch: '$' would let "name\n" in
NETWORK_MODES = ("none", "nat")
ISOLATION_TYPES = ("vm", "container")
MIN_MEMORY = 64 << 20


def check_name(name: Any) -> str:
    """A sandbox name: 1-40 of a-z 0-9 '-', starting with a letter or digit. ConfigError otherwise."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError(f"{show(name)} is not a valid sandbox name (1-40 of a-z 0-9 '-', "
                          "starting with a letter or digit)", "name")
    return name


@dataclass(frozen=True)
class SandboxRequest:
    """A validated ``create_sandbox`` config."""
    box: str
    limits: Limits
    network_mode: str
    persistent: bool
    clone_from: Optional[str] = None
    ttl_seconds: float = 3600.0
    provider: str = "libvirt"
    isolation_type: str = "vm"


def _network_mode(v: Any) -> str:
    if v == "bridge":
        fail("'bridge' is not supported yet (use 'none' or 'nat')")
    if v not in NETWORK_MODES or not isinstance(v, str):
        fail(f"{show(v)} is not one of {', '.join(NETWORK_MODES)}")
    return v


def _isolation(v: Any) -> str:
    if v not in ISOLATION_TYPES or not isinstance(v, str):
        fail(f"{show(v)} is not supported yet (only 'vm', or 'container' with a container provider)")
    return v


@section
class ResourceLimits:
    """``resource_limits``: each key optional, defaults from ``sandbox.default_limits``."""
    cpu: Optional[Cpu] = None
    memory: Optional[Size] = None
    disk: Optional[Size] = None


@section
class RequestInput:
    """The keys of ``create_sandbox``'s config dict; None means "not given"."""
    box: Optional[BoxName] = None
    base_image: Optional[Text] = None          # the specification's word: a VM's box, or a container's image
    resource_limits: Optional[ResourceLimits] = None
    network_mode: Annotated[str, BeforeValidator(_network_mode)] = "none"
    persistent: Flag = False
    isolation_type: Optional[Annotated[str, BeforeValidator(_isolation)]] = None
    provider: Optional[ProviderName] = None      # default: sandbox.provider
    clone_from: Optional[Text] = None          # a snapshot id or SANDBOX:SNAPSHOT
    image: Optional[Annotated[str, AfterValidator(_image_name)]] = None   # containers: default sandbox.default_image
    ttl_seconds: Optional[Seconds] = None


SANDBOX_KEYS = frozenset(RequestInput.__dataclass_fields__)


def _as_base_image(key: str, value: str) -> None:
    """Check ``base_image`` by the rule of what it stands for (a box, or an image), naming it."""
    try:
        validate(RequestInput, {key: value}, PATH)
    except ConfigError as exc:
        raise ConfigError(message_of(exc), f"{PATH}.base_image") from None


def parse_request(config: Config, request: Mapping | None) -> SandboxRequest:
    """Validate a ``create_sandbox`` config dict against ``config``; ConfigError names the bad
    key, ResourceLimitError a limit above ``safety.limits``."""
    given = validate(RequestInput, dict(request) if isinstance(request, Mapping) else request, PATH)
    sb = config.sandbox
    isolation = given.isolation_type or sb.default_isolation
    if isolation == "vm" and given.base_image is not None:
        _as_base_image("box", given.base_image)
        if given.box is not None and given.box != given.base_image:
            raise ConfigError("give box or base_image (its alias), not both", f"{PATH}.box")
    box = given.box or (given.base_image if isolation == "vm" else None) or sb.default_box

    provider = given.provider or sb.provider
    if isolation == "container":
        from .providers import PROVIDERS
        if sb.container_provider not in PROVIDERS:
            raise ConfigError(container_unavailable(sb.container_provider), f"{PATH}.isolation_type")
        if given.provider is not None and given.provider != sb.container_provider:
            raise ConfigError(f"{given.provider!r} is not the container provider "
                              f"(sandbox.container_provider: {sb.container_provider!r})", f"{PATH}.provider")
        provider = sb.container_provider
        if given.box is not None:
            raise ConfigError("a container is made from an image: give image (or base_image), not box", f"{PATH}.box")
        if given.image is not None and given.base_image is not None and given.image != given.base_image:
            raise ConfigError("give image or base_image (its alias for containers), not both", f"{PATH}.image")
        image = given.image or given.base_image or sb.default_image
        if given.base_image is not None:
            _as_base_image("image", image)
        box = f"{provider}:{image}"     # the provider's own box source
    elif given.image is not None:
        raise ConfigError("image is for containers (isolation_type: container); a VM boots a box", f"{PATH}.image")

    rl = given.resource_limits or ResourceLimits()
    d = sb.default_limits
    limits = Limits(cpu=rl.cpu or d.cpu, memory=rl.memory or d.memory, disk=rl.disk or d.disk)
    cap = config.safety.limits
    for key, value, maximum in (("cpu", limits.cpu_count, cap.cpu_count),
                                ("memory", limits.memory_bytes, cap.memory_bytes),
                                ("disk", limits.disk_bytes, cap.disk_bytes)):
        if value > maximum:
            raise ResourceLimitError(f"resource_limits.{key} {getattr(limits, key)} exceeds "
                                     f"safety.limits.{key} {getattr(cap, key)}")
    if limits.memory_bytes < MIN_MEMORY:
        raise ConfigError(f"{limits.memory!r} is too little memory (at least 64M)", f"{PATH}.resource_limits.memory")

    ttl = given.ttl_seconds if given.ttl_seconds is not None else float(sb.ttl_seconds)
    return SandboxRequest(box=box, limits=limits, network_mode=given.network_mode, persistent=given.persistent,
                          clone_from=given.clone_from, ttl_seconds=ttl, provider=provider,
                          isolation_type=isolation)


__all__ = ["NAME_RE", "SANDBOX_KEYS", "SandboxRequest", "check_name", "parse_request"]
