"""`choreo retention run`: the retention cleaner once over every service's database (or those
named), as cron runs it; a dry run counts what it would remove."""

from __future__ import annotations

from rich.table import Table

from choreo.app.retention import Run, cleaned_services, sweep_service
from choreo.infra.db import engine_for
from config.settings import Settings


def run_retention(
    settings: Settings, services: list[str] | None = None, *, dry_run: bool = False
) -> Run:
    run = Run()
    for service in services or cleaned_services(settings):
        engine = engine_for(settings, service)
        run.swept.extend(sweep_service(settings, service, engine, dry_run=dry_run))
    return run


def as_dict(run: Run, dry_run: bool) -> dict:
    return {
        "dry_run": dry_run,
        "deleted": run.deleted,
        "would_delete": sum(s.count for s in run.swept) if dry_run else 0,
        "longest_batch_ms": round(run.longest * 1000, 3),
        "swept": [s.as_dict() for s in run.swept],
    }


def _window(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def retention_table(run: Run, dry_run: bool) -> Table:
    table = Table(title="retention (dry run: nothing removed)" if dry_run else "retention")
    table.add_column("service")
    table.add_column("kind")
    table.add_column("window", justify="right")
    table.add_column("would delete" if dry_run else "deleted", justify="right")
    table.add_column("batches", justify="right")
    table.add_column("longest batch", justify="right")
    for s in run.swept:
        if s.absent:
            count, batches, longest = "no table", "", ""
        else:
            count = f"{s.count}{' (capped)' if s.capped else ''}"
            batches = "" if dry_run else str(s.batches)
            longest = "" if dry_run else f"{s.longest * 1000:.1f} ms"
        table.add_row(s.service, s.kind, _window(s.window), count, batches, longest)
    return table
