"""What every `choreo` command shares: the click group, the consoles, one-line
failures, the settings."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from pydantic import ValidationError
from rich.console import Console

from config.settings import Settings, get_settings

console = Console(stderr=False)
err = Console(stderr=True)
SAGA_MARKER = "saga-mode"  # under run_dir: the saga mode `choreo up` started the stack in
WORKERS_MARKER = "workers-per-domain"  # under run_dir: how many workers per domain it started


def path_hint(argv0: str | None = None, path: str | None = None) -> str | None:
    """How to put `choreo` on PATH, when this `choreo` (a virtualenv's script) is not the one the
    shell finds: `make demo` runs .venv/bin/choreo, and a newcomer then types `choreo status`."""
    exe = Path(argv0 or sys.argv[0])
    if exe.name != "choreo":  # python -m choreo, a test runner: nothing to say
        return None
    found = shutil.which("choreo", path=path)
    if found and Path(found).resolve() == exe.resolve():
        return None
    activate = exe.parent / "activate"
    try:
        shown = activate.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = activate.resolve()
    return f"choreo is {exe}: `source {shown}` puts it on PATH in this shell"


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def current_settings() -> Settings:
    """This shell's settings, in the shape of the stack it runs: `choreo up --saga MODE --workers N`
    records both so that later commands agree with it (CHOREO_SAGA_MODE and
    CHOREO_WORKERS_PER_DOMAIN still win)."""
    settings = get_settings()
    shape: dict[str, Any] = {}
    for field, marker, env, kind in (
        ("saga_mode", SAGA_MARKER, "CHOREO_SAGA_MODE", str),
        ("workers_per_domain", WORKERS_MARKER, "CHOREO_WORKERS_PER_DOMAIN", int),
    ):
        path = settings.run_dir / marker
        if env not in os.environ and path.exists():
            shape[field] = kind(path.read_text().strip())
    try:
        return Settings(**shape) if shape else settings
    except ValidationError:
        # This shell lacks what the stack was started with (its database server): still the
        # stack's shape, so status and down find it.
        return settings.model_copy(update=shape)


class LazyGroup(click.Group):
    """Loads a command's module only when that command runs (click's documented pattern):
    `choreo worker` need not import the chaos harness, the audit or rich's progress bars."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy  # command name -> "module:attribute"

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.lazy)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.lazy:
            return None
        module, attr = self.lazy[name].split(":")
        return getattr(importlib.import_module(module), attr)


COMMANDS = {
    **{
        name: f"choreo.cli.processes:{name}"
        for name in ("worker", "users", "flower", "up", "down", "stop", "start")
    },
    **{name: f"choreo.cli.orders:{name}" for name in ("enqueue", "place", "demo", "order")},
    **{
        name: f"choreo.cli.inspect:{name}"
        for name in ("status", "topology", "breakers", "projections", "audit")
    },
    "monitor": "choreo.cli.monitor:monitor",
    "dlq": "choreo.cli.dlq:dlq",
    "broker": "choreo.cli.broker:broker",
    "cluster": "choreo.cli.cluster:cluster",
    "tls": "choreo.cli.tls:tls",
    "chaos": "choreo.cli.chaos:chaos",
    "ask": "choreo.cli.ask:ask",
    "trace": "choreo.cli.trace:trace",
    "stuck": "choreo.cli.stuck:stuck",
    "retention": "choreo.cli.retention:retention",
    "db": "choreo.cli.db:db",
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """choreo: order sagas as a choreography of Celery services over RabbitMQ."""
