"""`choreo cluster up|down|status`: a private RabbitMQ cluster on this machine
(choreo.devtools.cluster) to run choreo on, beside (never instead of) this machine's own node."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import click
from rich.table import Table

from choreo.cli.base import console, current_settings, fail
from choreo.devtools.cluster import (
    DEFAULT_BASE_PORT,
    MAX_SIZE,
    STATE,
    Cluster,
    ClusterError,
    rabbitmq_bin,
)

folder_option = click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False),
    default=None,
    help="The cluster's folder (default: <run_dir>/cluster).",
)


def _folder(folder: str | None) -> Path:
    return Path(folder) if folder else Path(current_settings().run_dir) / "cluster"


def node_table(status: dict) -> Table:
    tls = status.get("tls", {}).get("enabled", False)
    t = Table(title=f"cluster {status['tag']} ({status['dir']})" + (", TLS" if tls else ""))
    for col in (
        "node",
        "amqps" if tls else "amqp",
        "https" if tls else "management",
        "pid",
        "app",
        "members seen",
    ):
        t.add_column(col, no_wrap=col != "members seen")
    for n in status["nodes"]:
        app = (
            "[green]running[/green]"
            if n["app_running"]
            else "[yellow]app stopped[/yellow]"
            if n["running"]
            else "[red]down[/red]"
        )
        t.add_row(
            n["name"],
            str(n["amqp"]),
            str(n["mgmt"]),
            str(n["pid"] or "-"),
            app,
            " ".join(m.split("@")[0].removeprefix(f"{status['tag']}-") for m in n["members"])
            or "-",
        )
    return t


def tls_lines(status: dict) -> list[str]:
    """The cluster's TLS, in words: what a client verifies the nodes by and may show them."""
    tls = status.get("tls") or {}
    if not tls.get("enabled"):
        return [
            "TLS: off (plain AMQP and HTTP on loopback; "
            "choreo cluster down, then up --tls, to turn it on)"
        ]
    return [
        "TLS: on; AMQP over TLS only (no plain listener) "
        f"on {', '.join(map(str, tls['amqps_ports']))};"
        f" management over {tls['management']}; inter-node and rabbitmqctl over TLS",
        f"  CA (verify the nodes by it): {tls['ca_file']}",
        f"  client certificate (optional for AMQP): {tls['cert_file']}  key: {tls['key_file']}",
    ]


@click.group()
def cluster() -> None:
    """A private RabbitMQ cluster on loopback: its own nodes, cookie, epmd and ports."""


@cluster.command()
@click.option(
    "--size",
    type=click.IntRange(1, MAX_SIZE),
    default=None,
    help="How many nodes (default 3, or as many as the folder's cluster has).",
)
@click.option(
    "--base-port",
    type=click.IntRange(1024, 65535),
    default=None,
    help=f"epmd's port; the nodes' follow it (default {DEFAULT_BASE_PORT}, or the folder's).",
)
@click.option(
    "--tls/--no-tls",
    default=None,
    help="AMQP (amqps only), management (https) and inter-node traffic over TLS, with a CA made in "
    "the folder (default: as the folder's cluster has it; off for a new one). Changing it "
    "needs the cluster stopped (choreo cluster down).",
)
@folder_option
def up(size: int, base_port: int | None, tls: bool | None, folder: str | None) -> None:
    """Start the cluster (or what of it is not running) and print how to run choreo on it."""
    path = _folder(folder)
    try:
        saved = Cluster.open(path) if (path / STATE).exists() else None
        c = Cluster(
            path,
            tag=saved.tag if saved else "choreo",
            size=size or (saved.size if saved else 3),
            base_port=base_port,
            tls=tls,
        )
        status = c.up()
    except ClusterError as exc:
        fail(str(exc))
    console.print(node_table(status))
    console.print(
        f"rabbitmqctl on it: {status['ctl']}   management: {c.admin_api()}", soft_wrap=True
    )
    for line in tls_lines(status):
        console.print(line, soft_wrap=True, markup=False)
    console.print("To run choreo on it (the guest user works on loopback):")
    for name, value in c.client_env().items():
        print(f"export {name}={shlex.quote(value)}")


@cluster.command()
@click.option("--purge", is_flag=True, help="Remove the folder too (its data, logs and cookie).")
@folder_option
def down(purge: bool, folder: str | None) -> None:
    """Stop the cluster's nodes and its epmd (nothing else)."""
    try:
        c = Cluster.open(_folder(folder))
    except ClusterError as exc:
        fail(str(exc))
    stopped = c.down(purge=purge)
    console.print(
        f"stopped {len(stopped)} process(es) of {c.base_dir}"
        + (", folder removed" if purge else "")
    )


@cluster.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@folder_option
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def ctl(folder: str | None, args: tuple[str, ...]) -> None:
    """rabbitmqctl ARGS on a running node of the cluster, with its cookie and epmd (the folder's
    `rabbitmqctl` runs this; choreo broker setup does, when CHOREO_BROKER_CLUSTER_DIR is set)."""
    try:
        c = Cluster.open(_folder(folder))
        i = c.target()
    except ClusterError as exc:
        fail(str(exc))
    binary = str(rabbitmq_bin() / "rabbitmqctl")
    os.execve(
        binary, [binary, "-n", c.name(i), *args], c.ctl_env(i)
    )  # its stdin, output and exit code


@cluster.command()
@click.option("--json", "as_json", is_flag=True)
@folder_option
def status(as_json: bool, folder: str | None) -> None:
    """Each node: ports, pid, whether its app runs, the members it sees; the cluster's TLS."""
    try:
        data = Cluster.open(_folder(folder)).status()
    except ClusterError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(data, indent=2))
        return
    console.print(node_table(data))
    for line in tls_lines(data):
        console.print(line, soft_wrap=True, markup=False)
