"""``SafetyValidator``: the command policy's façade.

Owns reading and checking the ``safety`` config section (user patterns, the allow list,
limits), turning rule findings into one ``RiskAssessment`` with an operator-readable reason,
mapping a level to a decision (allow / flag / needs_approval / block / warn), and comparing
resource usage with ``safety.limits``. User regex patterns are compiled with RE2, whose matching
time is linear in the input, so no pattern can make ``validate`` hang (no catastrophic backtracking).
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

from ..config import Config, Limits, PatternEntry, SafetySection, load_config, parse_cpu, parse_size
from ..userregex import compile_user_regex
from ..exceptions import ConfigError
from .models import Finding, ResourceUsage, RiskAssessment, RiskLevel
from .parser import Script, parse_script
from .rules import RULES, check_script, is_read_only

_PATH = "safety.validation"
_META = set("|&;(){}<>`$\\\"'")


@dataclass(frozen=True)
class _UserPattern:
    index: int
    text: str
    level: RiskLevel
    regex: Optional[Any]                    # an RE2 pattern: linear-time search
    tokens: Optional[tuple[str, ...]]       # plain word patterns match whole words in order
    squashed: str                           # other patterns: whitespace-insensitive substring

    @property
    def rule_id(self) -> str:
        return "user.pattern"


def _level(value: Any, path: str) -> RiskLevel:
    if isinstance(value, RiskLevel):
        return value
    if isinstance(value, str) and value.upper() in RiskLevel.__members__:
        return RiskLevel[value.upper()]
    raise ConfigError(f"{value!r} is not a level (LOW, MEDIUM, HIGH, CRITICAL)", path)


_TOP_SECTIONS = {"sandbox", "ssh", "safety", "rollback", "monitoring"}


def _section(config: Union[None, Mapping, SafetySection, Config, str, os.PathLike]) -> SafetySection:
    if config is None:
        return SafetySection()
    if isinstance(config, Config):
        return config.safety
    if isinstance(config, SafetySection):
        return config
    if isinstance(config, (str, os.PathLike)):            # a YAML config file
        return load_config(config).safety
    if isinstance(config, Mapping):
        if _TOP_SECTIONS & set(config):                   # the whole config (as the seed API passes it)
            return load_config(config={"safety": dict(config.get("safety") or {})}).safety
        return load_config(config={"safety": dict(config)}).safety
    raise ConfigError(f"expected a config (mapping, Config or YAML path) or its safety section, "
                      f"got {type(config).__name__}", "safety")


def _usage(usage: Any) -> ResourceUsage:
    """``ResourceUsage``, a mapping {cpu, memory, disk} or the health ``metrics`` (or ``Health``)."""
    if isinstance(usage, ResourceUsage):
        return usage
    if isinstance(usage, Mapping):
        unknown = set(usage) - {"cpu", "memory", "disk"}
        if unknown:
            raise ConfigError(f"unknown key {sorted(unknown)[0]!r} (known: cpu, disk, memory)", "usage")
        def num(key, parse):
            v = usage.get(key)
            return None if v is None else parse(v, f"usage.{key}")
        return ResourceUsage(cpu=num("cpu", parse_cpu), memory=num("memory", parse_size), disk=num("disk", parse_size))
    metrics = getattr(usage, "metrics", usage)             # Health -> its Metrics
    if all(hasattr(metrics, a) for a in ("cpu_used", "memory_used", "disk_used")):
        return ResourceUsage(cpu=metrics.cpu_used, memory=metrics.memory_used, disk=metrics.disk_used)
    raise ConfigError(f"expected ResourceUsage, a mapping {{cpu, memory, disk}} or health metrics, "
                      f"got {type(usage).__name__}", "usage")


class SafetyValidator:
    """Screens commands before they run. Construct once and reuse: parsing state is cached.

    ``config``: the whole config (a mapping of sections, a ``Config`` or a YAML path; its
    ``safety`` section is used), or the safety section alone. Raises ``ConfigError`` (naming
    the key path) when the ``safety`` section is invalid.
    """

    def __init__(self, config: Union[None, Mapping, SafetySection, Config, str, os.PathLike] = None) -> None:
        self.section = _section(config)
        v = self.section.validation
        self.enabled = bool(v.enabled)
        self.block_dangerous = bool(v.block_dangerous)
        self.limits = self.section.limits
        self.patterns = tuple(self._pattern(p, i) for i, p in enumerate(v.patterns))
        self.allow = self._allow(v.allow)

    # --- config -------------------------------------------------------------------------------

    @staticmethod
    def _pattern(entry: PatternEntry, i: int) -> _UserPattern:
        """A ``safety.validation.patterns`` entry, already checked by the config schema."""
        text = entry.pattern
        compiled = _compile(text, f"{_PATH}.patterns[{i}].pattern") if entry.regex else None
        tokens = tuple(text.split()) if not entry.regex and not (_META & set(text)) else None
        return _UserPattern(i, text, RiskLevel[entry.level], compiled, tokens, "".join(text.split()))

    @staticmethod
    def _allow(entries: Any) -> dict[str, RiskLevel]:
        out: dict[str, RiskLevel] = {}
        for i, entry in enumerate(entries):
            path = f"{_PATH}.allow[{i}]"
            level = RiskLevel.LOW
            if isinstance(entry, Mapping):
                unknown = set(entry) - {"rule", "level"}
                if unknown:
                    raise ConfigError(f"unknown key {sorted(unknown)[0]!r} (known: level, rule)", path)
                if "level" in entry:
                    level = _level(entry["level"], f"{path}.level")
                rule = entry.get("rule")
                path = f"{path}.rule"
            else:
                rule = entry
            if not isinstance(rule, str) or not rule:
                raise ConfigError(f"{rule!r} must be a rule id", path)
            if not any(fnmatch.fnmatchcase(r, rule) for r in RULES):
                raise ConfigError(f"{rule!r} names no rule (see docs/policy.md for rule ids)", path)
            out[rule] = level
        return out

    # --- assessment ---------------------------------------------------------------------------

    def validate_command(self, command: str) -> RiskAssessment:
        """Assess one command line. Never raises for any string input."""
        if not isinstance(command, str):
            raise TypeError(f"command must be a string, got {type(command).__name__}")
        script = parse_script(command)
        findings = check_script(script)
        findings.extend(self._user_findings(script))
        findings = self._lower(findings)
        findings = _dedupe(findings)
        findings.sort(key=lambda f: (-f.risk_level.rank, f.rule_id == "user.pattern", f.span or (0, 0)))
        if findings and findings[0].risk_level > RiskLevel.MEDIUM:
            level = findings[0].risk_level
        else:
            base = RiskLevel.LOW if is_read_only(script) else RiskLevel.MEDIUM
            level = max([base, *(f.risk_level for f in findings)], key=lambda lv: lv.rank)
        return RiskAssessment(command, level, _reason(level, findings, script), tuple(findings))

    def _user_findings(self, script: Script) -> list[Finding]:
        out: list[Finding] = []
        if not self.patterns:
            return out
        normalised = [c.normalised for c in script.commands]
        squashed_texts = ["".join(t.split()) for t in script.texts]
        for p in self.patterns:
            hit = False
            if p.regex is not None:
                hit = any(p.regex.search(t) for t in normalised + script.texts)
            elif p.tokens is not None:
                n = len(p.tokens)
                for c in script.commands:
                    toks = [c.name or c.name_word.text, *c.argv]
                    if any(tuple(toks[i:i + n]) == p.tokens for i in range(len(toks) - n + 1)):
                        hit = True
                        break
            else:
                hit = any(p.squashed in t for t in squashed_texts)
            if hit:
                out.append(Finding("user.pattern", p.level, _span_of(script.source, p.text),
                                   f"Matches the configured pattern {p.text!r} (safety.validation.patterns[{p.index}])."))
        return out

    def _lower(self, findings: list[Finding]) -> list[Finding]:
        if not self.allow:
            return findings
        out = []
        for f in findings:
            for rule, level in self.allow.items():
                if fnmatch.fnmatchcase(f.rule_id, rule) and f.risk_level > level:
                    f = Finding(f.rule_id, level, f.span, f.message + f" Lowered to {level.value} by safety.validation.allow.")
                    break
            out.append(f)
        return out

    def decide(self, assessment: RiskAssessment) -> str:
        """allow (LOW), flag (MEDIUM), needs_approval (HIGH), block (CRITICAL) or warn (CRITICAL, not blocking)."""
        if not self.enabled:
            return "allow"
        level = assessment.risk_level
        if level == RiskLevel.CRITICAL:
            return "block" if self.block_dangerous else "warn"
        if level == RiskLevel.HIGH:
            return "needs_approval"
        if level == RiskLevel.MEDIUM:
            return "flag"
        return "allow"

    # --- resources ----------------------------------------------------------------------------

    def limit_breaches(self, usage: Any, limits: Union[None, Limits, Mapping] = None) -> list[str]:
        """One sentence per limit that ``usage`` exceeds; unknown (None) fields never breach.
        ``usage``: ResourceUsage, a mapping {cpu, memory, disk}, or health metrics (ConfigError otherwise)."""
        usage = _usage(usage)
        cpu, memory, disk = self._limit_values(limits)
        out: list[str] = []
        if usage.cpu is not None and usage.cpu > cpu:
            out.append(f"CPU use {usage.cpu:.2f} CPUs is above the limit of {cpu:g} CPUs.")
        if usage.memory is not None and usage.memory > memory:
            out.append(f"Memory use {_human(usage.memory)} is above the limit of {_human(memory)}.")
        if usage.disk is not None and usage.disk > disk:
            out.append(f"Disk use {_human(usage.disk)} is above the limit of {_human(disk)}.")
        return out

    def check_resource_limits(self, usage: Any, limits: Union[None, Limits, Mapping] = None) -> bool:
        """True when ``usage`` is within the limits (default ``safety.limits``). ``usage`` is a
        ResourceUsage, a mapping {cpu, memory, disk}, or the ``metrics`` of ``get_health_status``
        (or that Health itself); anything else is a ConfigError."""
        return not self.limit_breaches(usage, limits)

    def _limit_values(self, limits: Union[None, Limits, Mapping]) -> tuple[float, int, int]:
        if limits is None:
            limits = self.limits
        if isinstance(limits, Mapping):
            unknown = set(limits) - {"cpu", "memory", "disk"}
            if unknown:
                raise ConfigError(f"unknown key {sorted(unknown)[0]!r} (known: cpu, disk, memory)", "limits")
            base = self.limits
            return (parse_cpu(limits.get("cpu", base.cpu), "limits.cpu"),
                    parse_size(limits.get("memory", base.memory), "limits.memory"),
                    parse_size(limits.get("disk", base.disk), "limits.disk"))
        if isinstance(limits, Limits):
            return (parse_cpu(limits.cpu, "limits.cpu"), parse_size(limits.memory, "limits.memory"),
                    parse_size(limits.disk, "limits.disk"))
        raise ConfigError(f"expected Limits or a mapping, got {type(limits).__name__}", "limits")


def _compile(text: str, path: str) -> Any:
    """Compile a user pattern with RE2 (``vmsandbox.userregex``); ConfigError naming ``path``."""
    try:
        return compile_user_regex(text)
    except ValueError as exc:
        raise ConfigError(str(exc), path) from exc


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen: set[tuple] = set()
    out = []
    for f in findings:
        key = (f.rule_id, f.span, f.risk_level)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _span_of(source: str, text: str) -> Optional[tuple[int, int]]:
    i = source.find(text)
    return (i, i + len(text)) if i >= 0 else None


def _reason(level: RiskLevel, findings: list[Finding], script: Script) -> str:
    top = [f for f in findings if f.risk_level == level]
    if top:
        msg = top[0].message.rstrip(".")
        others = len({f.rule_id for f in findings}) - 1
        more = f" (and {others} more finding{'s' if others > 1 else ''})" if others > 0 else ""
        return f"{level.value}: {msg}{more}."
    if level == RiskLevel.LOW:
        return "LOW: read-only command; nothing dangerous found."
    return "MEDIUM: ordinary command that changes files or state; runs monitored."


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
