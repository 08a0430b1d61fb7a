"""`choreo retention run`: remove records older than their retention window, once (cron)."""

from __future__ import annotations

import json

import click
from sqlalchemy.exc import SQLAlchemyError

from choreo.app.retention import cleaned_services
from choreo.cli.base import console, current_settings, fail
from choreo.ops.retention import as_dict, retention_table, run_retention


@click.group()
def retention() -> None:
    """How long records live (docs/operating/retention.md)."""


@retention.command("run")
@click.option(
    "--service",
    "services",
    multiple=True,
    metavar="SERVICE",
    help="Only this service's database (repeatable; default: every domain's and the operator's).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def run(services: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Remove every kind of record older than its window from each service's database, in short
    batches; print what each kind lost and the longest batch (the longest write lock held)."""
    settings = current_settings()
    known = cleaned_services(settings)
    unknown = [s for s in services if s not in known]
    if unknown:
        fail(f"unknown service {unknown[0]!r}; choose from {', '.join(known)}")
    try:
        result = run_retention(settings, list(services) or None, dry_run=dry_run)
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        fail(f"could not clean: {type(exc).__name__}: {first}")
    if as_json:
        print(json.dumps(as_dict(result, dry_run), indent=2))
        return
    console.print(retention_table(result, dry_run))
    total = sum(s.count for s in result.swept)
    verb = "would remove" if dry_run else "removed"
    console.print(f"{verb} {total} row(s); longest batch {result.longest * 1000:.1f} ms")
