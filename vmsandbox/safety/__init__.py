"""Command policy: screens a command line before it runs in a sandbox.

Parse with tree-sitter-bash (``parser``), normalise and match rule packs (``rules``), and turn
findings into a ``RiskAssessment`` and a decision (``validator``). Screening is defence in depth;
the VM is the security boundary. See docs/policy.md.
"""
from .models import Finding, ResourceUsage, RiskAssessment, RiskLevel
from .rules import RULES, Rule
from .validator import SafetyValidator

__all__ = ["SafetyValidator", "RiskLevel", "RiskAssessment", "Finding", "ResourceUsage", "RULES", "Rule"]
