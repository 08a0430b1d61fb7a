"""`choreo stuck`: open sagas waiting too long, on which service, against which deadline."""

from __future__ import annotations

import json

import click
from sqlalchemy.exc import SQLAlchemyError

from choreo.cli.base import console, current_settings, fail
from choreo.ops.stuck import STEPS, legend, report, stuck_table


@click.command()
@click.option(
    "--step",
    type=click.Choice(STEPS),
    default=None,
    help="Only sagas waiting in this step (refund: a CANCELLING order waiting on payment).",
)
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Stuck = more than SECONDS in their current step "
    "(default: past CHOREO_STUCK_FRACTION of the step's or the saga's deadline).",
)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def stuck(step: str | None, older_than: float | None, limit: int, as_json: bool) -> None:
    """Stuck sagas, longest in their step first: which service each waits on, for how long, its
    deadline and its timer. Reads the order database."""
    settings = current_settings()
    try:
        data = report(settings, step=step, older_than=older_than, limit=limit)
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        fail(f"could not read the order database: {type(exc).__name__}: {first}")
    if as_json:
        print(json.dumps(data, indent=2))
        return
    if not data["stuck"]:
        console.print(f"no stuck sagas (open: {data['open']})")
        return
    console.print(stuck_table(data))
    for line in legend(data):
        console.print(line, style="dim")
