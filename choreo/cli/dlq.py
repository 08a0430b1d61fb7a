"""`choreo dlq list|peek|replay|replays`: the dead letters of each domain (and `unrouted`).

Replay is a dry run unless `--execute` is given: it shows what would move and, for each
message, whether the consumer already processed its event (then the copy is absorbed). A dead
letter older than the dedup window is refused unless `--force-outside-window` is given.
"""

from __future__ import annotations

import json

import click
from rich.table import Table

from choreo.app.window import OUTSIDE_WINDOW
from choreo.cli.base import console, current_settings, fail
from choreo.messaging.admin import UNROUTED, BrokerAdmin
from choreo.ops import replay as rp


@click.group()
def dlq() -> None:
    """Dead-letter queues (one per domain, and `unrouted`): list, peek, replay, replays."""


def _domain_arg(settings, domain: str) -> str:
    domains = (*settings.domains, UNROUTED)
    if domain not in domains:
        fail(f"unknown domain {domain!r}; choose from {', '.join(domains)}")
    return domain


@dlq.command("list")
@click.argument("domain")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def dlq_list(domain: str, limit: int, as_json: bool) -> None:
    """One line per dead letter of DOMAIN: id, type, order, reason (nothing is consumed)."""
    settings = current_settings()
    with BrokerAdmin(settings) as admin:
        items = admin.peek(_domain_arg(settings, domain), limit)
    known = rp.orders_known(settings, items)
    if as_json:
        print(json.dumps([{**i.summary(), **_order_known(i, known)} for i in items], indent=2))
        return
    t = Table(title=f"{domain} dead letters ({len(items)})")
    for col in ("event id", "type", "order", "attempts", "reason"):
        t.add_column(col, overflow="fold")
    for i in items:
        order = i.order_id or ""
        if known.get(order) is False:
            order += f" ({UNKNOWN_ORDER})"
        t.add_row(i.event_id, i.type, order, str(i.attempts or ""), i.reason)
    console.print(t)
    if any(v is False for v in known.values()):
        console.print(
            f"{UNKNOWN_ORDER}: not in this stack's order database (`choreo order` cannot find "
            "it): a dead letter an earlier stack left in this namespace?"
        )
    if any(i.reason.startswith(OUTSIDE_WINDOW) for i in items):
        console.print(STALE_NOTE)


UNKNOWN_ORDER = "unknown order"
STALE_NOTE = (
    f"{OUTSIDE_WINDOW}: the message occurred longer ago than the dedup window, so it was not "
    "run (it might have run before); `choreo dlq replay` refuses it unless "
    "--force-outside-window (docs/operating/retention.md)"
)


def _order_known(letter, known: dict[str, bool]) -> dict:
    """`order_known`: True/False for this stack's order database, None when not checked."""
    return {"order_known": known.get(letter.order_id) if letter.order_id else None}


@dlq.command("peek")
@click.argument("domain")
@click.option("--limit", default=5, show_default=True)
def dlq_peek(domain: str, limit: int) -> None:
    """Full headers and body of the first dead letters of DOMAIN (nothing is consumed)."""
    settings = current_settings()
    with BrokerAdmin(settings) as admin:
        items = admin.peek(_domain_arg(settings, domain), limit)
    known = rp.orders_known(settings, items)
    print(
        json.dumps(
            [{**i.as_dict(), **_order_known(i, known)} for i in items], indent=2, default=str
        )
    )


@dlq.command("replay")
@click.argument("domain")
@click.option(
    "--id",
    "ids",
    multiple=True,
    help="Only these event ids (repeatable; default: the first --limit).",
)
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(1, rp.MAX_LIMIT),
    help="Replay at most this many.",
)
@click.option(
    "--batch",
    default=50,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Copies confirmed, recorded and acked together.",
)
@click.option(
    "--execute", is_flag=True, help="Replay for real (without it: a dry run that moves nothing)."
)
@click.option(
    "--force-outside-window",
    "force",
    is_flag=True,
    help="Also replay dead letters older than the dedup window, knowingly: their dedup record "
    "may be gone, so one that ran before runs again.",
)
@click.option("--json", "as_json", is_flag=True)
def dlq_replay(
    domain: str,
    ids: tuple[str, ...],
    limit: int,
    batch: int,
    execute: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Move dead letters of DOMAIN back to its queue for another try (attempts start again).

    Without --execute, shows what would move and what each replay would do: run again, or be
    absorbed because the consumer already processed that event, or be refused because it is
    older than the dedup window (CHOREO_DEDUP_WINDOW). Every executed replay is recorded:
    `choreo dlq replays`."""
    settings = current_settings()
    domain = _domain_arg(settings, domain)
    if not execute:
        show_plan(
            rp.plan(settings, domain, list(ids) or None, limit, force), domain, as_json, list(ids)
        )
        return
    run = rp.execute(settings, domain, list(ids) or None, limit, batch, force=force)
    if as_json:
        print(
            json.dumps(
                {
                    "run_id": run.run_id,
                    "by": run.by,
                    "domain": domain,
                    "moved": len(run.moved),
                    "refused": len(run.refused),
                    "records": [rp.record_dict(r) for r in run.records],
                },
                indent=2,
            )
        )
    else:
        show_records(
            run.records, f"replay run {run.run_id} by {run.by}: {len(run.moved)} moved to {domain}"
        )
    refused = sorted({r.event_id for r in run.refused})
    missing = sorted(set(ids) - {r.event_id for r in run.moved} - set(refused))
    if refused:
        console.print(
            f"refused, {len(refused)} older than the dedup window (add --force-outside-window "
            f"to replay them knowingly): {', '.join(refused)}"
        )
    if refused and ids:
        fail(f"not replayed: {', '.join(refused)}")
    if missing:
        fail(
            f"not replayed (no such dead letter in {domain}, or the broker refused the copy): "
            f"{', '.join(missing)}"
        )


def show_plan(candidates: list[rp.Candidate], domain: str, as_json: bool, ids: list[str]) -> None:
    missing = sorted(set(ids) - {c.letter.event_id for c in candidates})
    if as_json:
        print(
            json.dumps(
                {
                    "dry_run": True,
                    "domain": domain,
                    "would_replay": [c.as_dict() for c in candidates],
                    "not_found": missing,
                },
                indent=2,
                default=str,
            )
        )
        return
    moving = [c for c in candidates if not c.refused]
    t = Table(
        title=f"dry run: {len(moving)} dead letter(s) of {domain} would be replayed"
        + (f", {len(candidates) - len(moving)} refused" if len(moving) < len(candidates) else "")
    )
    for col in ("event id", "type", "order", "reason", "replayed before", "effect"):
        t.add_column(col, overflow="fold")
    for c in candidates:
        v = c.letter
        t.add_row(
            v.event_id,
            v.type,
            v.order_id or "",
            v.reason[:120],
            str(c.replayed_before or ""),
            c.effect,
        )
    console.print(t)
    if missing:
        console.print(f"not in {domain}'s dead letters: {', '.join(missing)}")
    if moving:
        console.print("Nothing was moved. Add --execute to replay these.")


def show_records(records, title: str) -> None:
    t = Table(title=title)
    for col in (
        "when",
        "by",
        "domain",
        "event id",
        "type",
        "order",
        "already processed",
        "outcome",
    ):
        t.add_column(col, overflow="fold")
    for r in records:
        known = {None: "could not check", True: "yes (absorbed)", False: "no"}[r.already_processed]
        t.add_row(
            r.replayed_at.isoformat(timespec="seconds"),
            r.by,
            r.domain,
            r.event_id,
            r.type,
            r.order_id or "",
            known,
            r.outcome,
        )
    console.print(t)


@dlq.command("replays")
@click.argument("domain", required=False)
@click.option("--id", "event_id", default=None, help="Only this event id.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True)
def dlq_replays(domain: str | None, event_id: str | None, limit: int, as_json: bool) -> None:
    """The replay record, newest first: when, which message, by whom, outcome."""
    settings = current_settings()
    if domain is not None:
        domain = _domain_arg(settings, domain)
    records = rp.history(settings, domain, limit, event_id)
    if as_json:
        print(json.dumps([rp.record_dict(r) for r in records], indent=2))
        return
    show_records(records, f"replays ({len(records)})")
