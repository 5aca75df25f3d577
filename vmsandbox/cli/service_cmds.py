"""CLI for the long-running service: ``vmsandbox serve`` (see vmsandbox/service.py, docs/operations.md)."""
from __future__ import annotations

from pathlib import Path

import click

from ._context import app, get_core


@click.command("serve")
@click.option("--gc-interval", type=float, default=60.0, show_default=True,
              help="Seconds between garbage collections (ttl expiry, orphans, old snapshots).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=9464, show_default=True,
              help="Prometheus endpoint on 127.0.0.1 (0: none).")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Log file (default: <state_directory>/logs/service.log); the log also goes to stderr.")
@click.pass_context
def serve(ctx: click.Context, gc_interval: float, metrics_port: int, log_file: str | None) -> None:
    """Run the service for this state directory until SIGTERM: the watchdog over every sandbox
    (alerts, monitoring.limit_action), ttl expiry and gc, and the Prometheus endpoint.

    One per state directory: a second one refuses to start."""
    from ..service import Service
    config = app(ctx).config
    service = Service(lambda: get_core(ctx), config.sandbox.state_path, gc_interval=gc_interval,
                      metrics_port=metrics_port or None, log_file=Path(log_file) if log_file else None)
    click.echo(f"vmsandbox serve: state {config.sandbox.state_path}, log {service.log_file} (SIGTERM stops)", err=True)
    service.run()


COMMANDS = [serve]
