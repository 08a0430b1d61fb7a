"""`choreo tls init`: a CA and certificates for a deployment's own hosts
(docker-compose.tls.yml)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from choreo.cli.base import console, fail
from choreo.ops import tlsca


@click.group()
def tls() -> None:
    """Certificates for TLS between choreo's hosts (docs/deployment.md)."""


@tls.command()
@click.option(
    "--dir",
    "folder",
    required=True,
    type=click.Path(file_okay=False),
    help="Where to write them: DIR/private (CA, node and client; owner-only) and, "
    "with --server-owner, DIR/server.",
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="A host name the servers answer to (repeat); localhost is added.",
)
@click.option(
    "--address",
    "addresses",
    multiple=True,
    help="An IP address they answer on (repeat); 127.0.0.1 is added.",
)
@click.option(
    "--server-owner",
    type=int,
    default=None,
    help="uid of the servers' user (999 in the RabbitMQ, Redis and PostgreSQL images): "
    "a copy of the CA certificate and the node's certificate and key in DIR/server, owned by it.",
)
@click.option("--label", default="choreo", show_default=True, help='Names the CA ("<label> CA").')
def init(
    folder: str,
    hosts: tuple[str, ...],
    addresses: tuple[str, ...],
    server_owner: int | None,
    label: str,
) -> None:
    """Make (once; again only what is missing, expiring or names other hosts) a CA, a
    certificate for the servers naming HOSTs and ADDRESSes, and a client certificate.
    Prints the files as JSON."""
    names = tuple(dict.fromkeys([*hosts, *tlsca.HOSTNAMES]))
    ips = tuple(dict.fromkeys([*addresses, *tlsca.ADDRESSES]))
    try:
        files = tlsca.ensure(Path(folder) / "private", label=label, hostnames=names, addresses=ips)
        out = files.as_dict()
        if server_owner is not None:
            server = tlsca.server_copy(files, Path(folder) / "server", server_owner)
            out.update(
                server_ca_file=str(server.ca),
                server_cert_file=str(server.node_cert),
                server_key_file=str(server.node_key),
            )
    except (tlsca.TlsError, OSError, ValueError) as exc:
        fail(f"tls init: {exc}")
    console.print_json(json.dumps({"hosts": names, "addresses": ips, **out}))
