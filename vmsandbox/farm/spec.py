"""The farm job file: YAML in, a validated ``FarmSpec`` out.

Owns the schema (every key known, a typo is an error naming the key path and the line), the
defaults, and the deterministic expansion of ``matrix`` entries into jobs. A ``JobSpec`` is a
plain value that round-trips through JSON (``to_dict``/``from_dict``), so a job can be shipped
to another process or host and run there with ``farm.job.run_job``.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..config import parse_cpu, parse_size
from ..exceptions import ConfigError

JOB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
FARM_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")
TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

TOP_KEYS = ("name", "base", "defaults", "jobs", "matrix")
BASE_KEYS = ("box", "setup", "upload", "provision")
#: keys a job may set; ``defaults`` may set these and the machine's (cpu, memory, disk)
JOB_KEYS = ("name", "run", "env", "timeout", "artifacts", "artifacts_max", "retries",
            "retry_on_failure", "keep_failed", "keep_failed_ttl", "workdir", "tags")
MACHINE_KEYS = ("cpu", "memory", "disk", "network")
DEFAULT_KEYS = tuple(k for k in JOB_KEYS if k not in ("name", "run")) + MACHINE_KEYS
MATRIX_KEYS = JOB_KEYS + ("vars",)

DEFAULTS: dict[str, Any] = {
    "timeout": 600.0, "network": "none", "env": {}, "tags": [], "artifacts": [], "artifacts_max": 100 << 20,
    "retries": 2, "retry_on_failure": 0, "keep_failed": True, "keep_failed_ttl": 86400.0, "workdir": None,
    "cpu": "1", "memory": "256M", "disk": "1G",
}


@dataclass(frozen=True)
class JobSpec:
    """One job: a shell command run in its own clone of the base snapshot."""
    name: str
    run: str
    env: dict = field(default_factory=dict)
    timeout: float = 600.0
    network: str = "none"
    artifacts: tuple = ()
    artifacts_max: int = 100 << 20          # bytes copied out per job
    retries: int = 2                        # infrastructure retries (a clone that does not answer...)
    retry_on_failure: int = 0               # re-runs of a failed test; a later pass is "flaky"
    keep_failed: bool = True
    keep_failed_ttl: float = 86400.0
    workdir: str | None = None
    line: int = 0                           # where the job (or its matrix entry) is in the job file
    tags: tuple = ()                        # distributed runs: only workers with all these tags take it

    def to_dict(self) -> dict:
        d = asdict(self)
        d["artifacts"] = list(self.artifacts)
        d["tags"] = list(self.tags)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "JobSpec":
        d = dict(d)
        d["artifacts"] = tuple(d.get("artifacts", ()))
        d["tags"] = tuple(d.get("tags", ()))
        return cls(**d)


@dataclass(frozen=True)
class BaseSpec:
    """What the base snapshot is made of: a box, a setup command, uploads, and the machine."""
    box: str
    setup: str | None
    upload: tuple                 # ((absolute local path, guest path), ...)
    cpu: str
    memory: str
    disk: str
    network: str
    timeout: float


@dataclass(frozen=True)
class FarmSpec:
    name: str
    base: BaseSpec
    jobs: tuple                   # JobSpec, in file order, matrix jobs after plain jobs
    source: str = ""              # the job file's path

    def job(self, name: str) -> JobSpec:
        for j in self.jobs:
            if j.name == name:
                return j
        raise ConfigError(f"no job named {name!r} (jobs: {', '.join(j.name for j in self.jobs)})", "jobs")


# -- YAML with line numbers ------------------------------------------------------------------
class _Lines:
    """Key path -> line number, filled while the YAML tree is turned into plain values."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[str, int] = {}

    def error(self, path: str, message: str) -> ConfigError:
        line, up = self.lines.get(path), path
        while line is None and up:          # a missing key: the line of its parent
            parent = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", up)
            if parent == up:
                break
            up = parent
            line = self.lines.get(up)
        where = f" ({self.source} line {line})" if line else f" ({self.source})"
        return ConfigError(message + where, path or "farm")


def _plain(loader: yaml.SafeLoader, node: yaml.Node, path: str, lines: _Lines) -> Any:
    lines.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for knode, vnode in node.value:
            key = loader.construct_object(knode, deep=True)
            if not isinstance(key, str):
                raise lines.error(path, f"key {key!r} must be a string")
            sub = f"{path}.{key}" if path else key
            lines.lines[sub] = knode.start_mark.line + 1
            if key in out:
                raise lines.error(sub, f"duplicate key {key!r}")
            out[key] = _plain(loader, vnode, sub, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(loader, n, f"{path}[{i}]", lines) for i, n in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _load_yaml(text: str, source: str) -> tuple[Any, _Lines]:
    lines = _Lines(source)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"{source} is empty", "farm")
        return _plain(loader, node, "", lines), lines
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}{where} is not valid YAML: {getattr(exc, 'problem', None) or exc}",
                          "farm") from None
    finally:
        loader.dispose()


# -- validation ------------------------------------------------------------------------------
def _check_keys(d: Any, known: tuple, path: str, lines: _Lines, what: str) -> dict:
    if not isinstance(d, dict):
        raise lines.error(path, f"{what} must be a mapping, not {type(d).__name__}")
    for key in d:
        if key not in known:
            sub = f"{path}.{key}" if path else key
            hint = ""
            if key in MACHINE_KEYS and what.startswith("job"):
                hint = "; clones share the base's machine and network, set it in defaults"
            raise lines.error(sub, f"unknown key {key!r}{hint} (known: {', '.join(known)})")
    return d


def _number(v: Any, path: str, lines: _Lines, minimum: float = 0, integer: bool = False,
            strict: bool = True) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (not integer or isinstance(v, int))
    if not ok or (v <= minimum if strict else v < minimum):
        kind = "a whole number" if integer else "a number"
        bound = f"above {minimum:g}" if strict else f"of at least {minimum:g}"
        raise lines.error(path, f"{v!r} must be {kind} {bound}")
    return v


def _string(v: Any, path: str, lines: _Lines, empty: bool = False) -> str:
    if v is None:
        raise lines.error(path, "missing (a non-empty string)")
    if not isinstance(v, str) or (not empty and not v.strip()):
        raise lines.error(path, f"{v!r} must be a non-empty string")
    return v


def _env(v: Any, path: str, lines: _Lines) -> dict:
    if not isinstance(v, dict):
        raise lines.error(path, "must be a mapping of NAME: value")
    out = {}
    for k, val in v.items():
        if not VAR_NAME_RE.match(k):
            raise lines.error(f"{path}.{k}", f"{k!r} is not a valid environment variable name")
        if isinstance(val, (dict, list)) or val is None:
            raise lines.error(f"{path}.{k}", f"{val!r} must be a string or a number")
        out[k] = str(val).lower() if isinstance(val, bool) else str(val)
    return out


def _job_fields(d: dict, path: str, lines: _Lines) -> dict:
    """Validate the job keys present in ``d`` (a job, a matrix entry or defaults); returns typed values."""
    out: dict = {}
    for key, v in d.items():
        p = f"{path}.{key}" if path else key
        if key in ("name", "vars"):
            continue
        if key == "run":
            out[key] = _string(v, p, lines)
        elif key == "env":
            out[key] = _env(v, p, lines)
        elif key in ("timeout", "keep_failed_ttl"):
            out[key] = float(_number(v, p, lines))
        elif key in ("retries", "retry_on_failure"):
            out[key] = int(_number(v, p, lines, 0, integer=True, strict=False))
            if out[key] > 10:
                raise lines.error(p, f"{v!r} is too many (at most 10)")
        elif key == "keep_failed":
            if not isinstance(v, bool):
                raise lines.error(p, f"{v!r} must be true or false")
            out[key] = v
        elif key == "network":
            if v not in ("none", "nat"):
                raise lines.error(p, f"{v!r} is not one of none, nat")
            out[key] = v
        elif key == "artifacts":
            if isinstance(v, str) or not isinstance(v, list):
                raise lines.error(p, "must be a list of absolute guest paths")
            for i, a in enumerate(v):
                if not isinstance(a, str) or not a.startswith("/") or "\n" in a or a.rstrip("/") == "":
                    raise lines.error(f"{p}[{i}]", f"{a!r} is not an absolute guest path (and not /)")
            out[key] = list(v)
        elif key == "tags":
            if isinstance(v, str) or not isinstance(v, list) or len(v) > 8:
                raise lines.error(p, "must be a list of at most 8 tags")
            for i, t in enumerate(v):
                if not isinstance(t, str) or not TAG_RE.match(t):
                    raise lines.error(f"{p}[{i}]", f"{t!r} is not a tag (1-32 of a-z 0-9 _ -)")
            out[key] = sorted(set(v))
        elif key == "artifacts_max":
            try:
                out[key] = parse_size(str(v))
            except (ConfigError, ValueError):
                raise lines.error(p, f"{v!r} is not a size (e.g. 50M)") from None
        elif key == "workdir":
            if not isinstance(v, str) or not v.startswith("/"):
                raise lines.error(p, f"{v!r} must be an absolute guest path")
            out[key] = v
        elif key == "cpu":
            try:
                parse_cpu(str(v))
            except (ConfigError, ValueError):
                raise lines.error(p, f"{v!r} is not a CPU count (e.g. 1, 2, 0.5)") from None
            out[key] = str(v)
        elif key in ("memory", "disk"):
            try:
                parse_size(str(v))
            except (ConfigError, ValueError):
                raise lines.error(p, f"{v!r} is not a size (e.g. 256M)") from None
            out[key] = str(v)
    return out


def _make_job(name: str, fields: dict, defaults: dict, line: int) -> JobSpec:
    merged = {**defaults, **fields}
    env = {**defaults.get("env", {}), **fields.get("env", {})}
    return JobSpec(name=name, run=merged["run"], env=env, timeout=merged["timeout"], network=merged["network"],
                   artifacts=tuple(merged["artifacts"]), artifacts_max=merged["artifacts_max"],
                   retries=merged["retries"], retry_on_failure=merged["retry_on_failure"],
                   keep_failed=merged["keep_failed"], keep_failed_ttl=merged["keep_failed_ttl"],
                   workdir=merged["workdir"], line=line, tags=tuple(merged["tags"]))


def _expand_matrix(entry: dict, path: str, lines: _Lines) -> list[tuple[str, dict]]:
    """One (name, env) per combination: variables in file order, values in list order."""
    vars_ = entry.get("vars")
    if not isinstance(vars_, dict) or not vars_:
        raise lines.error(f"{path}.vars", "a matrix entry needs vars: a mapping of NAME: [values]")
    names, values = [], []
    for k, v in vars_.items():
        p = f"{path}.vars.{k}"
        if not VAR_NAME_RE.match(k):
            raise lines.error(p, f"{k!r} is not a valid variable name")
        if not isinstance(v, list) or not v:
            raise lines.error(p, "must be a non-empty list of values")
        for i, x in enumerate(v):
            if isinstance(x, (dict, list)) or x is None:
                raise lines.error(f"{p}[{i}]", f"{x!r} must be a string or a number")
        names.append(k)
        values.append([str(x).lower() if isinstance(x, bool) else str(x) for x in v])
    template = _string(entry.get("name"), f"{path}.name", lines)
    out = []
    for combo in itertools.product(*values):
        env = dict(zip(names, combo))
        try:
            name = template.format_map(env)
        except (KeyError, IndexError, ValueError) as exc:
            raise lines.error(f"{path}.name", f"{template!r} names an unknown variable or is malformed ({exc})") from None
        out.append((name, env))
    if len(out) > 1000:
        raise lines.error(f"{path}.vars", f"{len(out)} combinations is too many (at most 1000)")
    return out


def parse_farm(data: Any, lines: _Lines, base_dir: Path) -> FarmSpec:
    top = _check_keys(data, TOP_KEYS, "", lines, "the job file")
    name = top.get("name")
    if not isinstance(name, str) or not FARM_NAME_RE.match(name):
        raise lines.error("name", f"{name!r} must be 1-24 of a-z 0-9 '-', starting with a letter or digit")
    defaults_in = _check_keys(top.get("defaults") or {}, DEFAULT_KEYS, "defaults", lines, "defaults")
    defaults = {**DEFAULTS, **_job_fields(defaults_in, "defaults", lines)}

    base_in = _check_keys(top.get("base"), BASE_KEYS, "base", lines, "base") if "base" in top else None
    if base_in is None:
        raise lines.error("base", "missing: the base needs at least a box (base: {box: tiny})")
    box = _string(base_in.get("box"), "base.box", lines)
    if "provision" in base_in:
        raise lines.error("base.provision", "provisioning with a playbook is not supported yet (use setup)")
    setup = base_in.get("setup")
    if setup is not None:
        setup = _string(setup, "base.setup", lines)
    upload_in = base_in.get("upload") or {}
    if not isinstance(upload_in, dict):
        raise lines.error("base.upload", "must be a mapping of LOCAL_PATH: GUEST_PATH")
    upload = []
    for local, remote in upload_in.items():
        p = f"base.upload.{local}"
        if not isinstance(remote, str) or not remote.startswith("/") or remote.rstrip("/") == "":
            raise lines.error(p, f"{remote!r} must be an absolute guest path (and not /)")
        lp = (base_dir / local).resolve()
        if not lp.exists():
            raise lines.error(p, f"local path {str(lp)!r} does not exist")
        upload.append((str(lp), remote))
    base = BaseSpec(box=box, setup=setup, upload=tuple(upload), cpu=defaults["cpu"], memory=defaults["memory"],
                    disk=defaults["disk"], network=defaults["network"], timeout=defaults["timeout"])

    jobs: list[JobSpec] = []
    seen: dict[str, str] = {}

    def add(job_name: Any, path: str, fields: dict) -> None:
        if not isinstance(job_name, str) or not JOB_NAME_RE.match(job_name):
            raise lines.error(path + ".name", f"{job_name!r} is not a valid job name "
                              "(1-63 of A-Z a-z 0-9 . _ -, starting with a letter or digit)")
        if job_name in seen:
            raise lines.error(path + ".name", f"job name {job_name!r} is used twice (first at {seen[job_name]})")
        if "run" not in fields and "run" not in defaults:
            raise lines.error(path, f"job {job_name!r} has no run command")
        seen[job_name] = path
        jobs.append(_make_job(job_name, fields, defaults, lines.lines.get(path, 0)))

    for key, what in (("jobs", "job"), ("matrix", "matrix entry")):
        entries = top.get(key) or []
        if not isinstance(entries, list):
            raise lines.error(key, "must be a list")
        for i, entry in enumerate(entries):
            path = f"{key}[{i}]"
            _check_keys(entry, JOB_KEYS if key == "jobs" else MATRIX_KEYS, path, lines, what)
            fields = _job_fields(entry, path, lines)
            if "run" not in fields:
                raise lines.error(path, f"{what} needs a run command")
            if key == "jobs":
                add(entry.get("name"), path, fields)
            else:
                for job_name, env in _expand_matrix(entry, path, lines):
                    add(job_name, path, {**fields, "env": {**fields.get("env", {}), **env}})
    if not jobs:
        raise lines.error("jobs", "the farm has no jobs (give jobs: or matrix:)")
    return FarmSpec(name=name, base=base, jobs=tuple(jobs), source=lines.source)


def load_farm(path: str | Path) -> FarmSpec:
    """Read and validate a job file; ConfigError names the key path and the line."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror or exc}", "farm") from None
    data, lines = _load_yaml(text, p.name)
    return parse_farm(data, lines, p.resolve().parent)


def loads_farm(text: str, base_dir: str | Path = ".", source: str = "<farm>") -> FarmSpec:
    data, lines = _load_yaml(text, source)
    return parse_farm(data, lines, Path(base_dir).resolve())
