"""Configuration: YAML or dict -> validated, frozen ``Config``; a default for every key.

Layering, merged here and nowhere else: built-in defaults < YAML file (``config_path`` or
``$VMSANDBOX_CONFIG``) < ``config=`` dict < ``VMSANDBOX_STATE_DIR`` environment variable.
Every error is a ``ConfigError`` naming the key path, e.g. ``safety.limits.memory: '8Q' is not a size``.
"""
from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .exceptions import ConfigError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: Any, path: str = "size") -> int:
    """'4G' / '256M' / '1.5G' / 1048576 -> bytes (binary units). Raises ConfigError naming ``path``."""
    if isinstance(value, bool):
        raise ConfigError(f"{value!r} is not a size (use e.g. '512M', '4G')", path)
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(f"{value!r} is not a positive size", path)
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ConfigError(f"{value!r} is not a size (use e.g. '512M', '4G')", path)
    n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
    if n <= 0:
        raise ConfigError(f"{value!r} is not a positive size", path)
    return n


def parse_cpu(value: Any, path: str = "cpu") -> float:
    """'2' / 2 / '0.5' -> float CPUs (> 0). Fractions become a CPU quota on one vCPU."""
    try:
        if isinstance(value, bool):
            raise ValueError
        n = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{value!r} is not a CPU count (use e.g. '1', '2', '0.5')", path) from None
    if not n > 0 or n != n or n > 1024:
        raise ConfigError(f"{value!r} must be a CPU count above 0", path)
    return n


@dataclass(frozen=True)
class Limits:
    """Resource limits; strings as written by people ('4G'), parsed by ``parse_size``/``parse_cpu``."""
    cpu: str = "1"
    memory: str = "256M"
    disk: str = "1G"

    def validate(self, path: str) -> None:
        parse_cpu(self.cpu, f"{path}.cpu")
        parse_size(self.memory, f"{path}.memory")
        parse_size(self.disk, f"{path}.disk")

    @property
    def cpu_count(self) -> float:
        return parse_cpu(self.cpu)

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory)

    @property
    def disk_bytes(self) -> int:
        return parse_size(self.disk)


@dataclass(frozen=True)
class SandboxSection:
    default_isolation: str = "vm"
    state_directory: str = "/var/lib/vmsandbox"
    box_directory: str = ""                      # empty: <state_directory>/boxes
    provider: str = "libvirt"                    # a name in the provider registry (vmsandbox.providers)
    libvirt_uri: str = "qemu:///system"
    vagrant_libvirt_uri: str = ""                # the libvirtd Vagrant's guests run on (empty: libvirt_uri)
    accelerator: str = "auto"                    # auto | kvm | tcg
    domain_prefix: str = "vmsbx-"
    default_box: str = "tiny"
    ttl_seconds: int = 3600
    boot_timeout_seconds: int = 120
    port_range: tuple = (20000, 29999)
    default_limits: Limits = field(default_factory=Limits)

    def validate(self, path: str) -> None:
        if self.default_isolation != "vm":
            raise ConfigError(f"{self.default_isolation!r} is not supported (only 'vm')", f"{path}.default_isolation")
        from .providers import PROVIDERS            # the one list of providers
        _choice(self.provider, tuple(PROVIDERS), f"{path}.provider")
        _choice(self.accelerator, ("auto", "kvm", "tcg"), f"{path}.accelerator")
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,15}", self.domain_prefix):
            raise ConfigError(f"{self.domain_prefix!r} must be 1-16 of a-z 0-9 '-', starting with a letter", f"{path}.domain_prefix")
        _positive(self.ttl_seconds, f"{path}.ttl_seconds")
        _positive(self.boot_timeout_seconds, f"{path}.boot_timeout_seconds")
        lo, hi = self.port_range
        if not (1024 <= lo < hi <= 65535):
            raise ConfigError(f"{list(self.port_range)!r} must be [low, high] within 1024-65535", f"{path}.port_range")
        self.default_limits.validate(f"{path}.default_limits")

    @property
    def state_path(self) -> Path:
        return Path(self.state_directory)

    @property
    def box_path(self) -> Path:
        return Path(self.box_directory) if self.box_directory else self.state_path / "boxes"


@dataclass(frozen=True)
class SSHSection:
    connect_timeout: float = 10.0
    command_timeout: float = 600.0               # default execute() timeout, seconds
    max_output: str = "16M"                      # per stream; beyond it output is dropped, truncated=True

    def validate(self, path: str) -> None:
        _positive(self.connect_timeout, f"{path}.connect_timeout")
        _positive(self.command_timeout, f"{path}.command_timeout")
        parse_size(self.max_output, f"{path}.max_output")

    @property
    def max_output_bytes(self) -> int:
        return parse_size(self.max_output)


@dataclass(frozen=True)
class ValidationSection:
    enabled: bool = True
    block_dangerous: bool = True                 # false: CRITICAL warns instead of blocking
    patterns: tuple = ("rm -rf /", ":(){ :|:& };:")  # str, or {pattern: ..., level: ..., regex: bool}
    allow: tuple = ()                            # rule ids lowered to LOW (or {rule: id, level: L})


@dataclass(frozen=True)
class SafetySection:
    validation: ValidationSection = field(default_factory=ValidationSection)
    limits: Limits = field(default_factory=lambda: Limits(cpu="4", memory="8G", disk="20G"))
    approval_callback: str = ""                  # dotted path "module:function"(assessment, sandbox) -> bool

    def validate(self, path: str) -> None:
        self.limits.validate(f"{path}.limits")
        for i, p in enumerate(self.validation.patterns):
            if not isinstance(p, (str, Mapping)):
                raise ConfigError(f"{p!r} must be a string or a mapping", f"{path}.validation.patterns[{i}]")
        if self.approval_callback and ":" not in self.approval_callback:
            raise ConfigError(f"{self.approval_callback!r} must be 'module:function'", f"{path}.approval_callback")


@dataclass(frozen=True)
class RollbackSection:
    auto_snapshot: bool = False                  # snapshot before each command rated MEDIUM or above
    retention_days: float = 7
    compression: bool = False                    # store memory states compressed
    memory: bool = True                          # snapshots of running guests carry memory
    guest_sync: bool = True                      # flush the guest's page cache before a disk-only snapshot

    def validate(self, path: str) -> None:
        if self.retention_days < 0:
            raise ConfigError(f"{self.retention_days!r} must be 0 or more", f"{path}.retention_days")


@dataclass(frozen=True)
class AlertsSection:
    cpu_threshold: float = 80
    memory_threshold: float = 90
    disk_threshold: float = 90

    def validate(self, path: str) -> None:
        for name in ("cpu_threshold", "memory_threshold", "disk_threshold"):
            v = getattr(self, name)
            if not 0 < v <= 100:
                raise ConfigError(f"{v!r} must be a percentage in (0, 100]", f"{path}.{name}")


@dataclass(frozen=True)
class MonitoringSection:
    enabled: bool = True
    interval_seconds: float = 10
    guest_interval_seconds: float = 30           # in-guest samples (df, /proc/net/dev) over SSH
    history: int = 360                           # samples kept per sandbox
    limit_action: str = "alert"                  # alert | throttle | pause | rollback | emergency_shutdown
    alerts: AlertsSection = field(default_factory=AlertsSection)

    def validate(self, path: str) -> None:
        _positive(self.interval_seconds, f"{path}.interval_seconds")
        _positive(self.guest_interval_seconds, f"{path}.guest_interval_seconds")
        _positive(self.history, f"{path}.history")
        _choice(self.limit_action, ("alert", "throttle", "pause", "rollback", "emergency_shutdown"), f"{path}.limit_action")
        self.alerts.validate(f"{path}.alerts")


@dataclass(frozen=True)
class Config:
    sandbox: SandboxSection = field(default_factory=SandboxSection)
    ssh: SSHSection = field(default_factory=SSHSection)
    safety: SafetySection = field(default_factory=SafetySection)
    rollback: RollbackSection = field(default_factory=RollbackSection)
    monitoring: MonitoringSection = field(default_factory=MonitoringSection)

    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))


def _choice(value: Any, allowed: tuple, path: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{value!r} is not one of {', '.join(allowed)}", path)


def _positive(value: Any, path: str) -> None:
    if not value > 0:
        raise ConfigError(f"{value!r} must be above 0", path)


def _to_plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _to_plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_to_plain(x) for x in v]
    return v


def _build(cls: type, data: Any, path: str) -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types; unknown keys are errors."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping, got {type(data).__name__} {data!r}", path or "config")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"unknown key (known: {', '.join(sorted(names))})", where)
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, f"{path}.{key}" if path else key)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{value!r} must be true or false", path)
        return value
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{value!r} must be a number", path)
        if hint is int and value != int(value):
            raise ConfigError(f"{value!r} must be a whole number", path)
        return hint(value)
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{value!r} must be a string", path)
        return str(value)
    if hint is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{value!r} must be a list", path)
        return tuple(value)
    return value


def _deep_merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(config_path: str | os.PathLike | None = None,
                config: Mapping | Config | None = None) -> Config:
    """Load, merge and validate configuration. Raises ConfigError naming the bad key."""
    if isinstance(config, Config):
        return config
    merged: dict = {}
    path = config_path or os.environ.get("VMSANDBOX_CONFIG")
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file: {exc.strerror}", str(path)) from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}", str(path)) from exc
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError("the top level must be a mapping of sections", str(path))
        merged = _deep_merge(merged, loaded or {})
    if config:
        if not isinstance(config, Mapping):
            raise ConfigError(f"config must be a mapping, got {type(config).__name__}")
        merged = _deep_merge(merged, config)
    if os.environ.get("VMSANDBOX_STATE_DIR"):
        merged = _deep_merge(merged, {"sandbox": {"state_directory": os.environ["VMSANDBOX_STATE_DIR"]}})
    cfg = _build(Config, merged, "")
    for name in ("sandbox", "ssh", "safety", "rollback", "monitoring"):
        section = getattr(cfg, name)
        if hasattr(section, "validate"):
            section.validate(name)
    return cfg
