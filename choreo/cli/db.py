"""`choreo db upgrade|status|check|revision`: each service's database schema under Alembic
(choreo.infra.schema; docs/operating/migrations.md)."""

from __future__ import annotations

import json
import sys

import click
from sqlalchemy.exc import SQLAlchemyError

from choreo.cli.base import console, current_settings, err, fail
from choreo.infra import schema
from config.settings import SERVICES

service_option = click.option(
    "--service",
    "services",
    multiple=True,
    type=click.Choice(SERVICES),
    help="Only this service's database (repeatable); every service's when left out.",
)


@click.group()
def db() -> None:
    """Each service's database schema: one Alembic branch per service, one alembic_version per
    database."""


@db.command()
@service_option
def upgrade(services: tuple[str, ...]) -> None:
    """Bring each database to this code's schema: create an empty one, stamp one an earlier
    choreo made (if its tables are release 0.1's), apply the revisions it lacks. Idempotent and
    safe to run twice at once (`choreo up` and the compose set-up run it)."""
    settings = current_settings()
    refused = []
    for service in services or SERVICES:
        try:
            before, after = schema.upgrade(settings, service)
        except (schema.SchemaError, SQLAlchemyError) as exc:
            refused.append(service)
            err.print(f"error: {service}: {exc}", markup=False, soft_wrap=True)
            continue
        said = "up to date" if before == after else f"{before or 'empty'} -> {after}"
        console.print(f"{service}: {said}", markup=False)
    if refused:
        sys.exit(1)


@db.command()
@service_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def status(services: tuple[str, ...], as_json: bool) -> None:
    """Where each database stands: its revision, this code's head, and up-to-date, behind,
    empty, unversioned (made by release 0.1, not yet stamped), unknown (a newer choreo's) or
    unreachable. Exit 1 when any is not up to date."""
    settings = current_settings()
    found = [schema.status(settings, s) for s in services or SERVICES]
    if as_json:
        print(json.dumps({"databases": [s.as_dict() for s in found]}, indent=2))
    else:
        for s in found:
            detail = f" ({s.detail})" if s.detail else ""
            console.print(
                f"{s.service:<13} {s.state:<12} at {s.current or '-':<18} head {s.head}  "
                f"{s.url}{detail}",
                markup=False,
                soft_wrap=True,
            )
    if not all(s.ok for s in found):
        sys.exit(1)


@db.command()
@service_option
def check(services: tuple[str, ...]) -> None:
    """`alembic check` for every service: a scratch database at its head matches its models.
    Exit 1, listing the differences, when a model changed without a revision."""
    drift = 0
    for service in services or SERVICES:
        engine = schema.scratch_at_head(service)
        try:
            differences = schema.model_differences(engine, service)
        finally:
            engine.dispose()
        for d in differences:
            err.print(f"{service}: {d}", markup=False, soft_wrap=True)
        drift += len(differences)
    if drift:
        fail_check = "run `choreo db revision -m MESSAGE` and review what it writes"
        err.print(f"{drift} difference(s) between the models and the migrations: {fail_check}")
        sys.exit(1)
    console.print("models and migrations agree")


@db.command()
@service_option
@click.option("-m", "--message", required=True, help="What the revision changes.")
def revision(services: tuple[str, ...], message: str) -> None:
    """Autogenerate the next revision of each service whose models changed (a developer's
    command: review the file it writes, then test it; docs/operating/migrations.md)."""
    written = []
    for service in services or SERVICES:
        path = schema.revision(service, message)
        if path:
            written.append(path)
            console.print(f"{service}: wrote {path}", markup=False, soft_wrap=True)
    if not written:
        fail("no model differs from its migrations: nothing to write")
