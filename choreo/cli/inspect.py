"""`choreo status|topology|breakers|projections|audit`: look inside a running system."""

from __future__ import annotations

import json
import sys
from urllib.parse import urlsplit

import click
from rich.table import Table

from choreo.cli.base import console, current_settings, err
from choreo.infra.db import engine_for
from choreo.infra.redis_client import redis_client
from choreo.ops.audit import print_report, run_audit
from choreo.ops.status import HELD, gather_status
from choreo.world.users import UsersClient
from consumers.order import projections as proj
from consumers.registry import topology as topology_of


def print_status(settings, as_json: bool) -> dict:
    data = gather_status(settings)
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return data
    console.print(orders_table(data))
    console.print(queues_table(data))
    print_warnings(data)
    if data["metrics"]:
        console.print(counters_line(data))
    console.print(process_table(data))
    prom = data["prometheus"]
    console.print(
        f"prometheus: {prom['url']} (pid {prom['pid']})"
        if prom["running"]
        else "prometheus: not running (`choreo up` starts it)"
    )
    return data


def counters_line(data: dict) -> str:
    """The shared counters, and since when they count (Redis outlives a stack)."""
    since = data.get("metrics_since") or "unrecorded (`choreo up` on a stopped stack resets them)"
    return f"counters since {since}: " + "; ".join(
        f"{name} " + ", ".join(f"{d}={v}" for d, v in sorted(per.items()))
        for name, per in data["metrics"].items()
        if per
    )


def orders_table(data: dict) -> Table:
    t = Table(title=f"orders ({data['orders']['total']})")
    for col in ("state", "reason", "count"):
        t.add_column(col)
    for row in data["orders"]["by_state_reason"]:
        t.add_row(row["state"], row["reason"] or "", str(row["count"]))
    return t


def queues_table(data: dict) -> Table:
    q = Table(title="queues")
    for col in ("name", "messages", "consumers"):
        q.add_column(col)
    for row in data["queues"]:
        if row["name"].split(".")[-2] == "retry" and not row["messages"]:
            continue  # empty retry rungs are noise
        q.add_row(row["name"], str(row["messages"]), str(row["consumers"]))
    return q


def print_warnings(data: dict) -> None:
    """What is away or unrouted, in colour: the broker, the order database, unrouted messages."""
    if data.get("broker_error"):
        err.print(f"[red]broker unreachable:[/red] {data['broker_error']}")
    if data.get("database_error"):
        err.print(
            f"[red]order database unreachable:[/red] {data['database_error']} "
            "(started yet? `choreo up`)"
        )
    if data.get("unrouted"):
        console.print(
            f"[yellow]{data['unrouted']} unrouted message(s)[/yellow]: no binding matched their "
            "routing key; see `choreo dlq list unrouted`"
        )


HEALTH_STYLE = {"ok": "green", "down": "red", "not running": "yellow", HELD: "dim"}
READY = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}


def process_table(data: dict) -> Table:
    t = Table(title="processes")
    for col in ("name", "pid", "health", "ready", "listener"):
        t.add_column(col, no_wrap=True)
    for name, pid in data["processes"].items():
        h = data["health"].get(name, {})
        state = h.get("health", "not running" if not pid else "?")
        t.add_row(
            name,
            str(pid or "-"),
            f"[{HEALTH_STYLE.get(state, 'white')}]{state}[/]",
            READY[h.get("ready")],
            urlsplit(h.get("health_url") or "").netloc,
        )
    return t


@click.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Orders by state and reason, queue depths and consumers, dead letters, processes and their
    health (/health, /ready), Prometheus."""
    print_status(current_settings(), as_json)


# --- the rest -------------------------------------------------------------------------


@click.command()
def topology() -> None:
    """Declare exchanges, queues and bindings (idempotent) and list them."""
    for name in topology_of(current_settings()).declare():
        console.print(name)


@click.command()
@click.option("--json", "as_json", is_flag=True)
def breakers(as_json: bool) -> None:
    """Circuit breakers and their shared state (in Redis)."""
    settings = current_settings()
    state = UsersClient(
        settings.users_url, redis_client(settings), settings.redis_prefix
    ).breaker_state()
    if as_json:
        print(json.dumps([state]))
    else:
        console.print(f"{state['name']}: {state['state']} (failures {state['failures']})")


@click.group()
def projections() -> None:
    """The order read model (a projection of the order event store)."""


@projections.command("rebuild")
def projections_rebuild() -> None:
    """Drop the read model and rebuild it from the event store."""
    engine = engine_for(current_settings(), "order")
    n = proj.rebuild(engine)
    console.print(f"rebuilt {n} order view(s); drift after rebuild: {len(proj.drift(engine))}")


@projections.command("check")
def projections_check() -> None:
    """Compare the read model with a replay of the event store; exit 1 on drift."""
    drifted = proj.drift(engine_for(current_settings(), "order"))
    console.print(
        f"{len(drifted)} order view(s) drift from their events"
        + (f": {drifted[:20]}" if drifted else "")
    )
    sys.exit(1 if drifted else 0)


@click.command()
@click.option("--json", "as_json", is_flag=True)
def audit(as_json: bool) -> None:
    """Check every guarantee over the services' own databases; exit 1 on any violation."""
    checks = run_audit(current_settings())
    if as_json:
        print(
            json.dumps(
                {"passed": all(c.passed for c in checks), "checks": [c.as_dict() for c in checks]},
                indent=2,
            )
        )
    else:
        print_report(checks, console)
    sys.exit(0 if all(c.passed for c in checks) else 1)
