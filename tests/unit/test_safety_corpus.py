"""Corpus test of the command policy: every dangerous command reaches its level, no ordinary
command goes above MEDIUM (pure reads stay LOW). Prints detection and false-positive rates."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vmsandbox.safety import RiskLevel, SafetyValidator

DATA = Path(__file__).resolve().parent.parent / "data"
DANGEROUS = yaml.safe_load((DATA / "policy_dangerous.yaml").read_text())
ORDINARY = yaml.safe_load((DATA / "policy_ordinary.yaml").read_text())
CATEGORIES = {"fs", "disk", "perm", "forkbomb", "remote", "decode", "revshell", "sandbox", "cred", "interp", "evasion"}


@pytest.fixture(scope="module")
def validator() -> SafetyValidator:
    return SafetyValidator()


def test_corpora_are_large_enough_and_cover_every_category() -> None:
    assert len(DANGEROUS) >= 150
    assert len(ORDINARY) >= 150
    assert {e["category"] for e in DANGEROUS} == CATEGORIES
    assert len({e["cmd"] for e in DANGEROUS}) == len(DANGEROUS), "duplicate dangerous command"
    assert len({e["cmd"] for e in ORDINARY}) == len(ORDINARY), "duplicate ordinary command"


def test_detection_and_false_positive_rates(validator: SafetyValidator) -> None:
    missed = []
    for e in DANGEROUS:
        a = validator.validate_command(e["cmd"])
        if a.risk_level < RiskLevel(e["level"]):
            missed.append(f"{e['cmd']!r}: {a.risk_level.value} < {e['level']} ({a.reason})")
    false_pos = []
    for e in ORDINARY:
        a = validator.validate_command(e["cmd"])
        ceiling = RiskLevel.LOW if e.get("low") else RiskLevel.MEDIUM
        if a.risk_level > ceiling:
            false_pos.append(f"{e['cmd']!r}: {a.risk_level.value} > {ceiling.value} ({a.reason})")
    detection = 1 - len(missed) / len(DANGEROUS)
    fp_rate = len(false_pos) / len(ORDINARY)
    print(f"\npolicy corpus: detection {detection:.1%} of {len(DANGEROUS)} dangerous, "
          f"false positives {fp_rate:.1%} of {len(ORDINARY)} ordinary")
    assert not missed, "missed dangerous commands:\n" + "\n".join(missed)
    assert not false_pos, "ordinary commands flagged:\n" + "\n".join(false_pos)
