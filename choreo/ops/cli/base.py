"""What every `choreo` command shares: the click group, the consoles, one-line failures, the settings."""
from __future__ import annotations

import os
import sys

import click
from rich.console import Console

from config.settings import Settings, get_settings

console = Console(stderr=False)
err = Console(stderr=True)
SAGA_MARKER = "saga-mode"  # under run_dir: the saga mode `choreo up` started the stack in


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def current_settings() -> Settings:
    """This shell's settings, in the saga mode of the stack it runs: `choreo up --saga MODE`
    records its mode so that later commands agree with it (CHOREO_SAGA_MODE still wins)."""
    settings = get_settings()
    marker = settings.run_dir / SAGA_MARKER
    if "CHOREO_SAGA_MODE" not in os.environ and marker.exists():
        settings = Settings(saga_mode=marker.read_text().strip())
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """choreo: order sagas as a choreography of Celery services over RabbitMQ."""
