"""The ``validate`` click command, mounted in a throwaway group as the lead will mount it."""
from __future__ import annotations

import json

import pytest

import click
from click.testing import CliRunner

from vmsandbox.cli.policy_cmds import validate


@click.group()
def cli() -> None:
    """Throwaway group standing in for the main vmsandbox group."""


cli.add_command(validate)


def run(*args: str):
    return CliRunner().invoke(cli, ["validate", *args])


def test_exit_codes_follow_the_level() -> None:
    assert run("ls -la").exit_code == 0
    assert run("make -j2").exit_code == 0
    assert run("cat /etc/shadow").exit_code == 1
    assert run("sudo rm -rf /").exit_code == 2


def test_text_output_names_level_rule_and_command() -> None:
    r = run("sudo rm -rf /")
    assert "CRITICAL" in r.output
    assert "fs.delete-root" in r.output
    assert "sudo rm -rf /" in r.output
    assert "block" in r.output


def test_json_output_is_one_object_with_spans() -> None:
    r = run("echo hi; kill -9 1", "--json")
    data = json.loads(r.output)
    assert data["risk_level"] == "CRITICAL" and data["decision"] == "block"
    f = next(f for f in data["findings"] if f["rule_id"] == "sandbox.kill-init")
    assert "echo hi; kill -9 1"[f["span"][0]:f["span"][1]] == "1"


def test_config_file_is_used_and_errors_are_one_line(tmp_path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("safety:\n  validation:\n    patterns: [{pattern: 'make', level: HIGH}]\n")
    assert run("make", "--config", str(good)).exit_code == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("safety:\n  validation:\n    patterns: [{pattern: 'x', level: HUGE}]\n")
    r = run("ls", "--config", str(bad))
    assert r.exit_code == 3
    assert "safety.validation.patterns[0].level" in r.output


@pytest.mark.timeout(20)
def test_validate_never_hangs_on_a_backtracking_pattern(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("safety:\n  validation:\n    patterns: [{pattern: '(a+)+$', regex: true}]\n")
    assert run("echo " + "a" * 40 + "!", "--config", str(cfg)).exit_code == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("safety:\n  validation:\n    patterns: [{pattern: '(?<=x)y', regex: true}]\n")
    r = run("ls", "--config", str(bad))
    assert r.exit_code == 3 and "safety.validation.patterns[0].pattern" in r.output
    assert len(r.output.strip().splitlines()) == 1
