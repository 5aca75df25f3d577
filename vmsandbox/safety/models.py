"""Value types of the command policy: ``RiskLevel``, ``Finding``, ``RiskAssessment``, ``ResourceUsage``.

Frozen, JSON-able records; no behaviour beyond ordering and serialisation.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional


class RiskLevel(str, enum.Enum):
    """How dangerous a command is; ordered ``LOW < MEDIUM < HIGH < CRITICAL``.

    LOW: read-only. MEDIUM: ordinary work, runs monitored. HIGH: dangerous, runs only when
    approved. CRITICAL: blocked by default.
    """
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def _other_rank(self, other: object) -> int:
        if isinstance(other, RiskLevel):
            return other.rank
        if isinstance(other, str) and other.upper() in _RANK_BY_NAME:
            return _RANK_BY_NAME[other.upper()]
        return NotImplemented  # type: ignore[return-value]

    def __lt__(self, other: object) -> bool:  # type: ignore[override]
        o = self._other_rank(other)
        return NotImplemented if o is NotImplemented else self.rank < o

    def __le__(self, other: object) -> bool:  # type: ignore[override]
        o = self._other_rank(other)
        return NotImplemented if o is NotImplemented else self.rank <= o

    def __gt__(self, other: object) -> bool:  # type: ignore[override]
        o = self._other_rank(other)
        return NotImplemented if o is NotImplemented else self.rank > o

    def __ge__(self, other: object) -> bool:  # type: ignore[override]
        o = self._other_rank(other)
        return NotImplemented if o is NotImplemented else self.rank >= o

    __hash__ = str.__hash__

    def __str__(self) -> str:
        return self.value


_RANK = {RiskLevel.LOW: 0, RiskLevel.MEDIUM: 1, RiskLevel.HIGH: 2, RiskLevel.CRITICAL: 3}
_RANK_BY_NAME = {level.value: rank for level, rank in _RANK.items()}


@dataclass(frozen=True)
class Finding:
    """One rule that matched: ``span`` is ``(start, end)`` in the original command string, or None."""
    rule_id: str
    risk_level: RiskLevel
    span: Optional[tuple[int, int]]
    message: str

    def to_dict(self) -> dict:
        return {"rule_id": self.rule_id, "risk_level": self.risk_level.value,
                "span": list(self.span) if self.span else None, "message": self.message}


@dataclass(frozen=True)
class RiskAssessment:
    """The verdict on one command: the highest level of its findings and one sentence why."""
    command: str
    risk_level: RiskLevel
    reason: str
    findings: tuple[Finding, ...] = ()

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.rule_id for f in self.findings))

    def to_dict(self) -> dict:
        return {"command": self.command, "risk_level": self.risk_level.value, "reason": self.reason,
                "findings": [f.to_dict() for f in self.findings]}


@dataclass(frozen=True)
class ResourceUsage:
    """What a sandbox uses now; ``None`` means unknown. cpu in CPUs, memory and disk in bytes."""
    cpu: Optional[float] = None
    memory: Optional[int] = None
    disk: Optional[int] = None
