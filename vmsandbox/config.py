"""Configuration: YAML or dict -> validated, frozen ``Config``; a default for every key.

Layering, merged here and nowhere else: built-in defaults < YAML file (``config_path`` or
``$VMSANDBOX_CONFIG``) < ``config=`` dict < ``VMSANDBOX_STATE_DIR`` environment variable.
Deprecated aliases (``sandbox.libvirt_uri``, ``sandbox.accelerator``) are moved to their
``providers.libvirt`` keys within each layer. The schema is the sections below, built from the
types in ``schema``; a ``providers.<name>`` section is checked by that provider's own
``Settings`` model, found through the provider registry. Every error is one ``ConfigError``
naming the key path, e.g. ``safety.limits.memory: '8Q' is not a size``.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Mapping

import yaml
from pydantic import AfterValidator, BeforeValidator, ValidationError, model_validator

from .exceptions import ConfigError, SandboxError
from .userregex import compile_user_regex
from .schema import (AbsolutePath, Cpu, Flag, FrozenMap, Level, OptionalAbsolutePath, ProviderSettings, Seconds, Size,
                     WholeSeconds, choice, config_error, cpu_count, fail, fail_at, items, message_of, number,
                     section, show, size_bytes, text, validate)

MAX_OUTPUT = 1 << 30                 # ssh.max_output: output is held in memory


def parse_size(value: Any, path: str = "size") -> int:
    """'4G' / '256M' / '1.5G' / 1048576 -> bytes (binary units). Raises ConfigError naming ``path``."""
    try:
        return size_bytes(value)
    except ValueError as exc:
        raise ConfigError(str(exc), path) from None


def parse_cpu(value: Any, path: str = "cpu") -> float:
    """'2' / 2 / '0.5' -> float CPUs (> 0). Fractions become a CPU quota on one vCPU."""
    try:
        return cpu_count(value)
    except ValueError as exc:
        raise ConfigError(str(exc), path) from None


def _registry() -> dict:
    from .providers import PROVIDERS          # lazily: providers import this module
    return PROVIDERS


def _known_providers() -> str:
    return ", ".join(sorted(_registry()))


def _registered(v: Any) -> str:
    if not isinstance(v, str) or v not in _registry():
        fail(f"{show(v)} is not a provider (known: {_known_providers()})")
    return v


ProviderName = Annotated[str, BeforeValidator(_registered)]
ContainerProvider = text(pattern=r"[a-z][a-z0-9_-]{0,31}", hint="is not a provider name (a-z 0-9 _ -, starting with a letter)")
Isolation = choice("vm", "container")
DomainPrefix = text(pattern=r"[a-z][a-z0-9-]{0,15}", hint="must be 1-16 of a-z 0-9 '-', starting with a letter")
Text = text()


def _box_name(v: Any) -> str:
    """A box of the store (its rule), or ``ORG/NAME`` as Vagrant names boxes (a provider that finds
    its own boxes resolves it; the store has none by that name)."""
    from .boxes import validate_box_name     # the box store owns the rule; imported only when used
    try:
        if isinstance(v, str) and v.count("/") == 1:
            org, name = v.split("/")
            validate_box_name(org)
            validate_box_name(name)
            return v
        return validate_box_name(v)
    except ConfigError as exc:
        fail(message_of(exc))


BoxName = Annotated[str, BeforeValidator(_box_name)]
Callback = text(pattern=r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", empty=True, hint="must be 'module:function'")
Days = number(at_least=0, at_most=36500, what="days")
Percent = number(above=0, at_most=100, what="percent")
History = number(whole=True, at_least=1, at_most=1_000_000, what="samples")
LimitAction = choice("alert", "throttle", "pause", "rollback", "emergency_shutdown")
StandbyMode = choice("off", "latest")
StandbyCount = number(whole=True, at_least=0, at_most=256, what="standbys")
SnapshotRef = text(pattern=r"[A-Za-z0-9][A-Za-z0-9._:-]{0,160}", hint="is not a snapshot (SANDBOX:NAME or an id)",
                   empty=True)
Count = number(whole=True, at_least=0, at_most=1_000_000, what="snapshots")
LogCount = number(whole=True, at_least=1, at_most=10_000, what="logs")


def _size_or_zero(v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and v == 0 or v == "0":
        return "0"
    try:
        size_bytes(v)
    except ValueError as exc:
        fail(f"{exc} (or 0 for no cap)")
    return v.strip() if isinstance(v, str) else str(v)


SizeCap = Annotated[str, BeforeValidator(_size_or_zero)]            # '2G', 1073741824, or 0: no cap


@section
class Limits:
    """Resource limits; strings as written by people ('4G'), parsed by ``parse_size``/``parse_cpu``."""
    cpu: Cpu = "1"
    memory: Size = "256M"
    disk: Size = "1G"

    @property
    def cpu_count(self) -> float:
        return parse_cpu(self.cpu)

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory)

    @property
    def disk_bytes(self) -> int:
        return parse_size(self.disk)


def _port_range(v: Any) -> tuple[int, int]:
    ok = (isinstance(v, (list, tuple)) and len(v) == 2
          and all(isinstance(p, int) and not isinstance(p, bool) for p in v))
    if not ok or not 1024 <= v[0] < v[1] <= 65535:
        fail(f"{show(list(v) if isinstance(v, tuple) else v)} must be [low, high] within 1024-65535")
    return (v[0], v[1])


def _image_name(v: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9._/:@-]{0,254}", v):
        fail(f"{show(v)} is not a container image name")
    return v


@section
class SandboxSection:
    default_isolation: Isolation = "vm"
    state_directory: AbsolutePath = "/var/lib/vmsandbox"
    box_directory: OptionalAbsolutePath = ""     # empty: <state_directory>/boxes
    provider: ProviderName = "libvirt"           # a name in vmsandbox.providers.PROVIDERS
    container_provider: ContainerProvider = "docker"          # the provider of isolation_type: container
    default_image: Annotated[str, AfterValidator(_image_name)] = "vmsandbox/tiny"   # of containers
    domain_prefix: DomainPrefix = "vmsbx-"
    default_box: BoxName = "tiny"
    ttl_seconds: WholeSeconds = 3600
    boot_timeout_seconds: WholeSeconds = 120
    port_range: Annotated[tuple[int, int], BeforeValidator(_port_range)] = (20000, 29999)
    default_limits: Limits = field(default_factory=Limits)
    console_logs_keep: LogCount = 3              # console logs kept per sandbox, newest first

    @model_validator(mode="after")
    def _container_provider_exists(self) -> "SandboxSection":
        if self.default_isolation == "container" and self.container_provider not in _registry():
            fail_at("default_isolation", container_unavailable(self.container_provider))
        return self

    @property
    def state_path(self) -> Path:
        return Path(self.state_directory)

    @property
    def box_path(self) -> Path:
        return Path(self.box_directory) if self.box_directory else self.state_path / "boxes"


def container_unavailable(provider: str) -> str:
    return (f"'container' is not supported yet: it needs the provider {provider!r} "
            f"(sandbox.container_provider), which is not registered (known: {_known_providers()})")


def _output_cap(v: str) -> str:
    if size_bytes(v) > MAX_OUTPUT:
        fail(f"{show(v)} is too large (at most 1G: output is kept in memory)")
    return v


@section
class SSHSection:
    connect_timeout: Seconds = 10.0
    command_timeout: Seconds = 600.0             # default execute() timeout, seconds
    max_output: Annotated[Size, AfterValidator(_output_cap)] = "16M"   # per stream; beyond it output is dropped
    max_copy: Size = "1G"                        # largest file or tree `cp` / put_file / get_file moves
    own_host_key: Flag = True                    # give each sandbox and clone its own SSH host key

    @property
    def max_output_bytes(self) -> int:
        return parse_size(self.max_output)

    @property
    def max_copy_bytes(self) -> int:
        return parse_size(self.max_copy)


@section
class PatternEntry:
    """One ``safety.validation.patterns`` entry: a string (a CRITICAL pattern) or a mapping."""
    _unknown_key_in_message = True
    regex: Flag = False                          # before ``pattern``, whose check depends on it
    level: Level = "CRITICAL"
    pattern: str = ""

    @staticmethod
    def _before(data: Any) -> Any:
        if isinstance(data, str):
            if not data.strip():
                fail(f"{show(data)} must be a non-empty string")
            return {"pattern": data}
        if data is None or not isinstance(data, Mapping):
            fail(f"{show(data)} must be a string or a mapping")
        return data

    @model_validator(mode="after")
    def _pattern_is_valid(self) -> "PatternEntry":
        if not isinstance(self.pattern, str) or not self.pattern.strip():
            fail_at("pattern", f"{show(self.pattern)} must be a non-empty string")
        if self.regex:
            try:
                compile_user_regex(self.pattern)
            except ValueError as exc:
                fail_at("pattern", str(exc))
        return self

    def to_plain(self) -> Any:
        if self.level == "CRITICAL" and not self.regex:
            return self.pattern
        return {"pattern": self.pattern, "level": self.level, "regex": self.regex}


@section
class ValidationSection:
    enabled: Flag = True
    block_dangerous: Flag = True                 # false: CRITICAL warns instead of blocking
    patterns: items(PatternEntry) = field(default_factory=lambda: (PatternEntry(pattern="rm -rf /"),
                                                                   PatternEntry(pattern=":(){ :|:& };:")))
    allow: items(Any) = ()                       # rule ids lowered to LOW (or {rule: id, level: L}); checked by the policy


@section
class SafetySection:
    validation: ValidationSection = field(default_factory=ValidationSection)
    limits: Limits = field(default_factory=lambda: Limits(cpu="4", memory="8G", disk="20G"))
    approval_callback: Callback = ""             # "module:function", called (assessment, sandbox) -> bool


@section
class RollbackSection:
    auto_snapshot: Flag = False                  # snapshot before each command rated MEDIUM or above
    retention_days: Days = 7.0
    compression: Flag = False                    # store memory states compressed
    memory: Flag = True                          # snapshots of running guests carry memory
    guest_sync: Flag = True                      # flush the guest's page cache before a disk-only snapshot
    standby: StandbyMode = "off"                 # latest: keep a warm standby of each sandbox's newest memory snapshot
    standby_memory: Size = "1G"                  # cap: guest memory all warm standbys together may hold
    standby_max: StandbyCount = 4                # cap: number of warm standbys
    max_snapshots: Count = 0                     # per sandbox, oldest unpinned removed first; 0: no cap
    max_memory_bytes: SizeCap = "0"              # per sandbox, sum of its memory states; 0: no cap

    @property
    def memory_cap(self) -> int:
        return 0 if self.max_memory_bytes == "0" else parse_size(self.max_memory_bytes)


@section
class PoolEntry:
    """One ``pool`` entry: keep ``size`` warm standbys of ``snapshot`` (``SANDBOX:NAME`` or an id)
    for ``create_sandbox(name, {"clone_from": snapshot})``."""
    snapshot: SnapshotRef = ""
    size: StandbyCount = 1

    @model_validator(mode="after")
    def _named(self) -> "PoolEntry":
        if not self.snapshot:
            fail_at("snapshot", "is required (SANDBOX:NAME or a snapshot id)")
        return self


@section
class AlertsSection:
    cpu_threshold: Percent = 80.0
    memory_threshold: Percent = 90.0
    disk_threshold: Percent = 90.0


@section
class MonitoringSection:
    enabled: Flag = True
    interval_seconds: Seconds = 10.0
    guest_interval_seconds: Seconds = 30.0       # in-guest samples (df, /proc/net/dev) over SSH
    history: History = 360                       # samples kept per sandbox
    limit_action: LimitAction = "alert"
    alerts: AlertsSection = field(default_factory=AlertsSection)


def _providers(v: Any) -> Mapping[str, ProviderSettings]:
    """``providers.<name>``: each section validated by that provider's ``Settings`` model."""
    if v is None:
        v = {}
    if not isinstance(v, Mapping):
        fail(f"expected a mapping of provider name to settings, got {type(v).__name__} {show(v)}")
    from .providers import provider_class
    out = {}
    for name, settings in v.items():
        if name not in _registry():
            fail_at(name, f"{show(name)} is not a provider (known: {_known_providers()})")
        try:
            model = provider_class(name, f"providers.{name}").Settings
            out[name] = settings if isinstance(settings, model) else model.model_validate(settings or {})
        except SandboxError as exc:
            fail_at(name, message_of(exc) if isinstance(exc, ConfigError) else str(exc))
        except ValidationError as exc:
            err = config_error(exc)
            fail_at(f"{name}.{err.path}" if err.path else name, message_of(err))
    return FrozenMap(out)


@section
class Config:
    sandbox: SandboxSection = field(default_factory=SandboxSection)
    ssh: SSHSection = field(default_factory=SSHSection)
    safety: SafetySection = field(default_factory=SafetySection)
    rollback: RollbackSection = field(default_factory=RollbackSection)
    monitoring: MonitoringSection = field(default_factory=MonitoringSection)
    providers: Annotated[Any, BeforeValidator(_providers)] = field(default_factory=FrozenMap)
    pool: items(PoolEntry) = ()                  # warm pools: [{snapshot: SANDBOX:NAME, size: N}]

    def provider_settings(self, name: str) -> ProviderSettings:
        """The validated ``providers.<name>`` section, or that provider's defaults."""
        given = self.providers.get(name)
        if given is not None:
            return given
        from .providers import provider_class
        return provider_class(name, f"providers.{name}").Settings()

    def to_dict(self) -> dict:
        """The effective configuration as plain data (what ``vmsandbox config show`` prints);
        ``load_config(config=cfg.to_dict())`` gives the same Config back."""
        out = {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "providers"}
        providers = dict(self.providers)
        if self.sandbox.provider not in providers:
            try:
                providers[self.sandbox.provider] = self.provider_settings(self.sandbox.provider)
            except SandboxError:
                pass                          # its module cannot be imported here: nothing to show
        out["providers"] = {name: _to_plain(s) for name, s in providers.items()}
        return out


def _to_plain(v: Any) -> Any:
    if isinstance(v, PatternEntry):
        return v.to_plain()
    if isinstance(v, ProviderSettings):
        return v.model_dump(mode="json")
    if dataclasses.is_dataclass(v):
        return {f.name: _to_plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, Mapping):
        return {k: _to_plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_to_plain(x) for x in v]
    return v


# -- YAML: duplicate keys are errors ------------------------------------------------------------

MAX_YAML_VALUES = 100_000            # after expanding aliases: stops "billion laughs" files


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (YAML would keep the last one
    silently), naming its key path and both lines, and files that expand to absurd sizes."""

    source = "the config file"

    def construct_document(self, node: yaml.Node) -> Any:
        self._seen = 0
        self._check(node, "")
        return super().construct_document(node)

    def _check(self, node: yaml.Node, path: str) -> None:
        self._seen += 1
        if self._seen > MAX_YAML_VALUES:
            raise ConfigError(f"too large: more than {MAX_YAML_VALUES} values (after expanding aliases)",
                              self.source)
        if isinstance(node, yaml.SequenceNode):
            for i, child in enumerate(node.value):
                self._check(child, f"{path}[{i}]")
        elif isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self._check(value_node, path)
                    continue
                key = self.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else id(key_node)
                where = f"{path}.{key}" if path else str(key)
                line = key_node.start_mark.line + 1
                try:
                    if key in first:
                        raise ConfigError(f"duplicate key on line {line} of {self.source} "
                                          f"(first given on line {first[key]})", where)
                    first[key] = line
                except TypeError:             # an unhashable key: the constructor reports it
                    pass
                self._check(value_node, where)


def _read_yaml(path: str | os.PathLike) -> dict:
    try:
        content = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("cannot read config file: not UTF-8 text", str(path)) from exc
    loader = _Loader(content)
    loader.source = str(path)
    try:
        loaded = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", str(path)) from exc
    except RecursionError:
        raise ConfigError("not valid YAML: nested too deeply", str(path)) from None
    finally:
        loader.dispose()
    if loaded is not None and not isinstance(loaded, Mapping):
        raise ConfigError("the top level must be a mapping of sections", str(path))
    return loaded or {}


# -- layering -----------------------------------------------------------------------------------

# deprecated key -> its home; both are accepted, documented in docs/configuration.md
ALIASES = {
    ("sandbox", "libvirt_uri"): ("providers", "libvirt", "uri"),
    ("sandbox", "accelerator"): ("providers", "libvirt", "accelerator"),
    ("sandbox", "vagrant_libvirt_uri"): ("providers", "vagrant", "uri"),
    # the specification's top-level keys (docs/seed-mapping.md)
    (None, "isolation_type"): ("sandbox", "default_isolation"),
    (None, "container_runtime"): ("sandbox", "container_provider"),
    (None, "default_image"): ("sandbox", "default_image"),
    (None, "provider"): ("sandbox", "provider"),
    (None, "box"): ("sandbox", "default_box"),
}


def _copy(v: Any) -> Any:
    """Plain, private copy of the mappings in a layer (the caller's dicts are never changed)."""
    if isinstance(v, Mapping):
        return {k: _copy(x) for k, x in v.items()}
    return v


def _normalise(layer: dict, shown_as: dict[str, str]) -> dict:
    """Move deprecated aliases of ``layer`` to their keys, remembering where each value came
    from so that an error names the key the user wrote."""
    for (section_name, key), target in ALIASES.items():
        new_path = ".".join(target)
        node: Any = layer
        for part in target[:-1]:
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping) and target[-1] in node:
            shown_as.pop(new_path, None)
        sec = layer if section_name is None else layer.get(section_name)
        if not isinstance(sec, dict) or key not in sec:
            continue
        value = sec.pop(key)
        written = key if section_name is None else f"{section_name}.{key}"
        node = layer
        for i, part in enumerate(target[:-1]):
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"expected a mapping, got {type(node[part]).__name__} {show(node[part])}",
                                  ".".join(target[:i + 1]))
            node = node[part]
        if target[-1] in node and node[target[-1]] != value:
            raise ConfigError(f"{show(value)} conflicts with {new_path}: {show(node[target[-1]])} "
                              f"({written} is an alias of it; give only {new_path})", written)
        if target[-1] not in node:
            shown_as[new_path] = written
        node[target[-1]] = value
    return layer


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
    if config is not None and not isinstance(config, Mapping):
        raise ConfigError(f"config must be a mapping, got {type(config).__name__}")
    shown_as: dict[str, str] = {}        # key path -> how to name it in an error
    merged: dict = {}
    path = config_path or os.environ.get("VMSANDBOX_CONFIG")
    layers = [_read_yaml(path)] if path else []
    if config:
        layers.append(config)
    for layer in layers:
        merged = _deep_merge(merged, _normalise(_copy(layer), shown_as))
    if os.environ.get("VMSANDBOX_STATE_DIR") and isinstance(merged.get("sandbox") or {}, Mapping):
        merged = _deep_merge(merged, {"sandbox": {"state_directory": os.environ["VMSANDBOX_STATE_DIR"]}})
        shown_as["sandbox.state_directory"] = "sandbox.state_directory (from $VMSANDBOX_STATE_DIR)"
    try:
        return validate(Config, merged)
    except ConfigError as exc:
        for where, shown in shown_as.items():
            if exc.path == where or exc.path.startswith((where + ".", where + "[")):
                raise ConfigError(message_of(exc), shown + exc.path[len(where):]) from None
        raise


__all__ = ["ALIASES", "AlertsSection", "Config", "Limits", "MonitoringSection", "PatternEntry", "RollbackSection",
           "SSHSection", "SafetySection", "SandboxSection", "ValidationSection", "load_config", "parse_cpu",
           "parse_size"]
