"""CLI for the command policy: ``vmsandbox validate "CMD" [--json] [--config FILE]``.

A thin layer over ``SafetyValidator``: prints the level, the reason and each finding with the
matching part of the command highlighted (or one JSON object with ``--json``).

Exit codes: 0 for LOW and MEDIUM, 1 for HIGH, 2 for CRITICAL, 3 for a configuration error.
"""
from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.text import Text

from .._safe_text import visible
from ..config import load_config
from ._context import AppContext, say
from ..exceptions import ConfigError
from ..safety import RiskAssessment, RiskLevel, SafetyValidator

EXIT_CODES = {RiskLevel.LOW: 0, RiskLevel.MEDIUM: 0, RiskLevel.HIGH: 1, RiskLevel.CRITICAL: 2}
EXIT_CONFIG_ERROR = 3
_STYLES = {RiskLevel.LOW: "green", RiskLevel.MEDIUM: "yellow", RiskLevel.HIGH: "bold red",
           RiskLevel.CRITICAL: "bold white on red"}


def render(assessment: RiskAssessment, decision: str) -> list[Text]:
    """Lines for people: level and decision, reason, then each finding under its highlighted span."""
    level = assessment.risk_level
    lines = [Text.assemble(("Level: ", "bold"), (level.value, _STYLES[level]), f"  (decision: {decision})"),
             Text(visible(assessment.reason))]
    cmd = assessment.command
    for f in assessment.findings:
        lines.append(Text.assemble("\n", (f"[{f.risk_level.value}] ", _STYLES[f.risk_level]), (f.rule_id, "bold"),
                                   visible(f": {f.message}")))
        if f.span is not None and 0 <= f.span[0] <= f.span[1] <= len(cmd):
            # each part escaped on its own, so the highlight still covers the matching text
            style = "reverse " + _STYLES[f.risk_level].replace("bold ", "")
            lines.append(Text.assemble("    ", visible(cmd[:f.span[0]]), (visible(cmd[f.span[0]:f.span[1]]), style),
                                       visible(cmd[f.span[1]:])))
    return lines


@click.command("validate")
@click.argument("command")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Config file (YAML); its safety section is used (default: the global --config).")
@click.pass_context
def validate(ctx: click.Context, command: str, as_json: bool, config_path: str | None) -> None:
    """Assess COMMAND with the command policy without running it.

    Exit code: 0 for LOW/MEDIUM, 1 for HIGH, 2 for CRITICAL, 3 for a bad config.
    """
    try:
        parent = ctx.find_object(AppContext)
        validator = SafetyValidator(load_config(config_path or (parent.config_path if parent else None)))
    except ConfigError as exc:
        say(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG_ERROR)
    assessment = validator.validate_command(command)
    decision = validator.decide(assessment)
    if as_json:
        click.echo(json.dumps({**assessment.to_dict(), "decision": decision}))
    else:
        console = Console(highlight=False, soft_wrap=True)
        for line in render(assessment, decision):
            console.print(line)
    sys.exit(EXIT_CODES[assessment.risk_level])


COMMANDS = [validate]
