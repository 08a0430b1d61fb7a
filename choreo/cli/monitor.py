"""`choreo monitor`: the stack's queue monitor (choreo.ops.monitor), a process of its own."""

from __future__ import annotations

import click

from choreo.cli.base import current_settings
from choreo.infra import logs
from choreo.ops.monitor import serve


@click.command()
def monitor() -> None:
    """Serve every choreo queue's depth and consumers as metrics (what `choreo up` starts), from
    outside the workers, so a dead worker's queue is still seen."""
    settings = current_settings()
    logs.configure("monitor", settings.log_level, settings.log_json)
    serve(settings)
