"""Corpus test of the command policy: every dangerous command reaches its level, no ordinary
command goes above MEDIUM (pure reads stay LOW). Prints detection and false-positive rates.

``policy_heldout.yaml`` was written before the issue-10 classes were built and is scored apart:
rules must catch its classes, never its strings."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vmsandbox.safety import RiskLevel, SafetyValidator

DATA = Path(__file__).resolve().parent.parent / "data"
DANGEROUS = yaml.safe_load((DATA / "policy_dangerous.yaml").read_text())
ORDINARY = yaml.safe_load((DATA / "policy_ordinary.yaml").read_text())
HELDOUT = yaml.safe_load((DATA / "policy_heldout.yaml").read_text())
# issue 10 added: glob, cwd, dataflow, optexec (option arguments that run commands), script
# (written then run), persist, vcs, bomb
NEW_CLASSES = {"glob", "cwd", "dataflow", "optexec", "script", "persist", "vcs", "bomb"}
CATEGORIES = {"fs", "disk", "perm", "forkbomb", "remote", "decode", "revshell", "sandbox", "cred", "interp",
              "evasion"} | NEW_CLASSES


@pytest.fixture(scope="module")
def validator() -> SafetyValidator:
    return SafetyValidator()


def test_corpora_are_large_enough_and_cover_every_category() -> None:
    assert len(DANGEROUS) >= 150
    assert len(ORDINARY) >= 150
    assert {e["category"] for e in DANGEROUS} == CATEGORIES
    assert len({e["cmd"] for e in DANGEROUS}) == len(DANGEROUS), "duplicate dangerous command"
    assert len({e["cmd"] for e in ORDINARY}) == len(ORDINARY), "duplicate ordinary command"


def test_issue_10_classes_are_covered_and_held_out_is_separate() -> None:
    assert sum(e["category"] in NEW_CLASSES for e in DANGEROUS) >= 150
    assert len(HELDOUT) >= 60
    assert {e["category"] for e in HELDOUT} == NEW_CLASSES
    assert not {e["cmd"] for e in HELDOUT} & {e["cmd"] for e in DANGEROUS}, "held-out commands leaked into the main corpus"


def _missed(validator: SafetyValidator, corpus: list[dict]) -> list[str]:
    out = []
    for e in corpus:
        a = validator.validate_command(e["cmd"])
        if a.risk_level < RiskLevel(e["level"]):
            out.append(f"{e['cmd']!r}: {a.risk_level.value} < {e['level']} ({a.reason})")
    return out


def test_held_out_corpus_is_detected_at_level(validator: SafetyValidator) -> None:
    missed = _missed(validator, HELDOUT)
    print(f"\nheld-out corpus: detection {1 - len(missed) / len(HELDOUT):.1%} of {len(HELDOUT)}")
    assert not missed, "missed held-out commands:\n" + "\n".join(missed)


def test_detection_and_false_positive_rates(validator: SafetyValidator) -> None:
    missed = _missed(validator, DANGEROUS)
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
