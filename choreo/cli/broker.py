"""`choreo broker setup|users|rotate`: the broker's users, their grants and the topology."""

from __future__ import annotations

import json
import os

import click

from choreo.cli.base import console, current_settings, fail
from choreo.infra.secrets import env_name, rotate
from choreo.messaging import access
from consumers.registry import topology


@click.group()
def broker() -> None:
    """The broker's per-service users and grants (choreo.messaging.access)."""


@broker.command()
def setup() -> None:
    """Create or update every service's broker user, its permissions and topic permissions, then
    declare the topology; idempotent (`choreo up` runs it). Needs the bootstrap user of
    CHOREO_BROKER_URL and the local rabbitmqctl, or CHOREO_BROKER_ADMIN_API."""
    settings = current_settings()
    try:
        users = access.setup(settings, topology(settings))
    except (access.SetupFailed, OSError) as exc:
        fail(f"broker setup: {exc}")
    console.print(
        f"{len(users)} broker users set up on vhost {access.vhost_of(settings.broker_url)}: "
        f"{', '.join(users)}"
    )


@broker.command()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON document: each user's name, service, vhost, where its password comes from, "
    "its permissions and topic permissions (no secrets).",
)
def users(as_json: bool) -> None:
    """Who may do what: each user's configure / write / read patterns and topic
    permissions (no secrets)."""
    settings = current_settings()
    grants = access.grants(settings, access.hears_of(topology(settings)))
    if as_json:
        print(json.dumps({"users": [_user_dict(settings, svc, g) for svc, g in grants.items()]}))
        return
    for service, g in grants.items():
        console.print(
            f"[bold]{access.user_name(settings, service)}[/bold]  "
            f"(password: ${env_name(access.PASSWORD, service)}"
            f" or {access.password_file(settings, service)})",
            soft_wrap=True,
        )
        console.print(
            f"  configure {g.configure}\n  write     {g.write}\n  read      {g.read}",
            soft_wrap=True,
        )
        for exchange, (w, r) in g.topics.items():
            console.print(f"  topic {exchange}: write {w}  read {r}", soft_wrap=True)


def _user_dict(settings, service: str, g: access.Grant) -> dict:
    return {
        "user": access.user_name(settings, service),
        "service": service,
        "vhost": access.vhost_of(settings.broker_url),
        "password_env": env_name(access.PASSWORD, service),
        "password_file": str(access.password_file(settings, service)),
        "configure": g.configure,
        "write": g.write,
        "read": g.read,
        "topics": [
            {"exchange": exchange, "write": w, "read": r} for exchange, (w, r) in g.topics.items()
        ],
    }


@broker.command("rotate")
@click.argument("service", type=click.Choice(access.SERVICES))
def rotate_password(service: str) -> None:
    """Give SERVICE a new generated broker password and set it on the broker; restart that
    service afterwards (its open connections keep working until then)."""
    settings = current_settings()
    var = env_name(access.PASSWORD, service)
    if os.environ.get(var):
        fail(
            f"{var} is set: its password comes from there; "
            "change it there and run choreo broker setup"
        )
    rotate(settings.run_dir, access.PASSWORD, service)
    try:
        access.setup(settings, topology(settings))
    except (access.SetupFailed, OSError) as exc:
        fail(f"broker setup: {exc}")
    console.print(
        f"new password for {access.user_name(settings, service)} set; "
        "restart it (choreo down && choreo up)",
        soft_wrap=True,
    )
