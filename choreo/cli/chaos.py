"""`choreo chaos`: the chaos harness (choreo.devtools.chaos) from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from choreo.cli.base import console, err, fail
from choreo.devtools.chaos import ChaosConfig, run_chaos

DEFAULT_DATABASE_SERVER = "postgresql://postgres:postgres@127.0.0.1:5432"


@click.command()
@click.option(
    "--orders", default=1000, show_default=True, help="Orders to place while faults are injected."
)
@click.option(
    "--duration",
    default=120.0,
    show_default=True,
    help="Seconds of fault injection at most (longer only while a fault waits its turn: with "
    "--cluster, the stop_app waits until the killed node runs again).",
)
@click.option("--kill-every", default=3.0, show_default=True, help="Seconds between worker kills.")
@click.option(
    "--outage",
    default=40.0,
    show_default=True,
    help="Seconds one domain's workers (payment, inventory or shipment) stay stopped while "
    "orders flow; 0: no outage (none with --cluster: node faults instead).",
)
@click.option(
    "--outage-domain",
    type=click.Choice(["payment", "inventory", "shipment"]),
    default=None,
    help="The domain the outage stops (default: drawn by the seed).",
)
@click.option(
    "--deadline",
    default=25.0,
    show_default=True,
    help="Each step's deadline in the run, seconds (the saga's is ten times it).",
)
@click.option("--seed", type=int, default=None)
@click.option(
    "--broker-restart",
    type=click.Choice(["vhost", "node", "none"]),
    default="vhost",
    show_default=True,
    help="vhost: restart only this run's vhost and drop its connections; node: stop_app/start_app.",
)
@click.option("--settle-timeout", default=300.0, show_default=True)
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the run's folder (data, logs) afterwards; kept anyway on failure.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the run (default: a new temp folder).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the report as JSON on stdout (progress goes to stderr).",
)
@click.option(
    "--cluster",
    is_flag=True,
    help="On a private three-node RabbitMQ cluster of its own, two workers per domain on "
    "PostgreSQL: kill -9 of the node leading the busiest queue, stop_app/start_app of another.",
)
@click.option(
    "--tls",
    is_flag=True,
    help="With --cluster: the cluster serves amqps only, TLS between its nodes, "
    "and the run's Redis TLS only (choreo cluster up --tls).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 4),
    default=None,
    help="Workers per domain (default 1; 2 with --cluster). More than 1 needs --database-server.",
)
@click.option(
    "--database-server",
    default=None,
    metavar="URL",
    help="PostgreSQL server for the run's databases (default SQLite; with --cluster "
    "postgresql://postgres:postgres@127.0.0.1:5432).",
)
def chaos(
    orders: int,
    duration: float,
    kill_every: float,
    outage: float,
    outage_domain: str | None,
    deadline: float,
    seed: int | None,
    broker_restart: str,
    settle_timeout: float,
    keep: bool,
    workdir: str | None,
    as_json: bool,
    cluster: bool,
    tls: bool,
    workers: int | None,
    database_server: str | None,
) -> None:
    """Place orders while killing workers, restarting the broker and Redis, injecting duplicates
    and poison; then wait for the system to settle and audit it. Exits 1 on any violation."""
    if orders < 1 or duration <= 0 or kill_every <= 0 or deadline <= 0 or outage < 0:
        fail("--orders, --duration, --kill-every and --deadline must be positive, --outage >= 0")
    if tls and not cluster:
        fail(
            "--tls needs --cluster (the private nodes it starts serve TLS; "
            "the machine's own node is not touched)"
        )
    workers = workers or (2 if cluster else 1)
    if database_server is None:
        database_server = DEFAULT_DATABASE_SERVER if cluster else ""
    if workers > 1 and not database_server:
        fail(
            f"--workers {workers} needs --database-server (PostgreSQL): "
            "SQLite serves one process per file"
        )
    report = run_chaos(
        ChaosConfig(
            orders=orders,
            duration=duration,
            kill_every=kill_every,
            outage=outage,
            outage_domain=outage_domain,
            deadline=deadline,
            seed=seed,
            broker_restart=broker_restart,
            settle_timeout=settle_timeout,
            keep=keep,
            workdir=Path(workdir) if workdir else None,
            cluster=cluster,
            workers_per_domain=workers,
            database_server=database_server,
            tls=tls,
        ),
        console=err if as_json else console,
    )
    if as_json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    sys.exit(0 if report.passed else 1)
