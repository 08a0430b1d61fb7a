"""`choreo enqueue|place|demo|order`: place orders (a scenario mix, or the user's own), watch them
settle, inspect one.

Progress bars and warnings go to stderr; with `--json`, stdout holds the JSON document alone, so
a script can pipe it into a JSON parser."""

from __future__ import annotations

import json
import sys

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from choreo.app.queries import order_details
from choreo.cli.base import console, current_settings, err, fail, path_hint
from choreo.cli.inspect import print_status
from choreo.cli.processes import demo_alert_lines, up_stack
from choreo.ops.orderfile import BadOrders, read_orders
from choreo.ops.prometheus import ui_links
from choreo.ops.render import outcome_table, timeline_table
from choreo.ops.scenarios import DEFAULT_MIX, SCENARIO_HELP, draw_scenarios, parse_mix
from choreo.ops.stuck import describe_waiting, waiting_queue
from choreo.ops.workload import (
    States,
    new_order_id,
    outcomes,
    place_orders,
    publish_orders,
    terminal_count,
    wait_terminal,
)
from config.settings import SAGA_MODES
from consumers.order.messages import PlaceOrder


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,  # stdout is the result's alone (a table, or JSON with --json)
        transient=False,
    )


def _settle(settings, order_ids: list[str], timeout: float, progress: Progress) -> States:
    t_set = progress.add_task("settling  ", total=len(order_ids))
    return wait_terminal(
        settings,
        order_ids,
        timeout,
        on_poll=lambda st: progress.update(t_set, completed=terminal_count(st)),
    )


def _state_of(states: States, order_id: str) -> dict:
    state, reason = states.get(order_id, (None, None))
    return {"state": state, "reason": reason}


def _warn_unsettled(states: States, count: int, timeout: float) -> int:
    unsettled = count - terminal_count(states)
    if unsettled:
        err.print(f"[red]{unsettled} order(s) did not settle within {timeout:.0f}s[/red]")
    return unsettled


def enqueue_orders(
    count: int, mix: str | None, seed: int | None, wait: bool, timeout: float, as_json: bool = False
) -> int:
    """Place `count` orders; with `wait`, show where they ended. Returns the exit code."""
    if count < 1:
        fail("--count must be at least 1")
    try:
        weights = parse_mix(mix)
    except ValueError as exc:
        fail(str(exc))
    settings = current_settings()
    scenarios = draw_scenarios(count, weights, seed)
    with _progress() as progress:
        t_pub = progress.add_task("publishing", total=count)
        sent = publish_orders(settings, scenarios, seed, on_sent=lambda: progress.advance(t_pub))
        states = _settle(settings, [o for o, _ in sent], timeout, progress) if wait else {}
    if not wait:
        if as_json:
            print(json.dumps({"orders": [{"order_id": o, "scenario": s} for o, s in sent]}))
        else:
            console.print(f"enqueued {count} orders")
        return 0
    rows = outcomes(sent, states)
    mismatches = sum(r["mismatches"] for r in rows)
    if as_json:
        orders = [{"order_id": o, "scenario": s, **_state_of(states, o)} for o, s in sent]
        print(json.dumps({"orders": orders, "mismatches": mismatches}))
    else:
        console.print(outcome_table(rows))
    unsettled = _warn_unsettled(states, len(sent), timeout)
    if mismatches:
        err.print(f"[red]{mismatches} order(s) ended in a state their data did not ask for[/red]")
    return 1 if (mismatches or unsettled) else 0


ENQUEUE_HELP = (
    "Place orders with a scenario mix; show progress until they settle.\n\n"
    "Each scenario is one path of the saga, chosen by the order's data:\n\n\b\n"
    + "\n".join(f"  {name:<16} {what}" for name, what in SCENARIO_HELP.items())
)


@click.command(help=ENQUEUE_HELP)
@click.option("--count", "-n", default=10, show_default=True, help="How many orders.")
@click.option(
    "--mix",
    default=None,
    metavar="WEIGHTS",
    help="Scenario weights, e.g. completed=60,declined=20,out_of_stock=20; 'all' weighs every "
    "scenario (listed above) equally. Default: "
    + ",".join(f"{name}={w}" for name, w in DEFAULT_MIX.items())
    + ".",
)
@click.option(
    "--seed", type=int, default=None, help="Make the scenario draw and order ids repeatable."
)
@click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Wait until every order settles."
)
@click.option("--timeout", default=180.0, show_default=True)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON document on stdout (progress goes to stderr): the orders' ids and "
    "scenarios, and with --wait their state and reason.",
)
def enqueue(
    count: int, mix: str | None, seed: int | None, wait: bool, timeout: float, as_json: bool
) -> None:
    sys.exit(enqueue_orders(count, mix, seed, wait, timeout, as_json))


@click.command()
@click.argument("file", type=click.File("r", encoding="utf-8"), default="-")
@click.option(
    "--wait/--no-wait", default=False, show_default=True, help="Wait until every order settles."
)
@click.option("--timeout", default=180.0, show_default=True)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print one JSON document on stdout: {"orders": [{"order_id": ...}]}, with --wait '
    "each order's state and reason too.",
)
def place(file, wait: bool, timeout: float, as_json: bool) -> None:
    """Place your own orders, read as JSON Lines from FILE (default `-`, stdin).

    \b
    One order per line, the wire format's place_order payload, plus an optional order_id:
      {"customer_id": "cust-7", "items": [{"sku": "SKU-RED", "qty": 2}],
       "card_token": "tok_visa", "address": "1 Main Street", "order_id": "my-0001"}
    (docs/client.md; schemas/payloads/place_order.json). A line without order_id gets a new
    one. Blank lines are skipped.

    All or nothing: every line is checked first, and if any is bad, each bad line is reported
    (its number and what is wrong) and no order of the file is placed (exit 2). Then each
    order is published, confirmed by the broker. Prints the order ids, one per line (with
    --wait: id, state and reason), or with --json one JSON document.

    If publishing stops half-way (a publish refused or failed), the ids placed so far are
    printed and it exits 2. Give every line an order_id to make running the file again safe:
    an order id placed twice is one order."""
    try:
        orders = read_orders(file)
    except BadOrders as exc:
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        fail(f"{len(exc.errors)} bad line(s) in {file.name}: nothing was placed")
    if not orders:
        fail(f"no orders in {file.name}")
    settings = current_settings()
    # Ids first, so that a publish failing half-way can still say which orders were placed.
    named = [(order_id or new_order_id(), payload) for order_id, payload in orders]
    ids = [o for o, _ in named]
    with _progress() as progress:
        placed, error = _publish(settings, named, progress)
        if error is not None:
            _print_placed(ids[:placed], {}, as_json, wait=False)
            fail(f"publishing stopped after {placed} of {len(ids)} orders (placed: above): {error}")
        states = _settle(settings, ids, timeout, progress) if wait else {}
    _print_placed(ids, states, as_json, wait)
    sys.exit(1 if wait and _warn_unsettled(states, len(ids), timeout) else 0)


def _publish(
    settings, orders: list[tuple[str, PlaceOrder]], progress: Progress
) -> tuple[int, str | None]:
    """Publish the orders in turn: (how many the broker confirmed, None), or, when publishing
    failed, that count and the failure."""
    task = progress.add_task("publishing", total=len(orders))
    sent = 0

    def one_sent() -> None:
        nonlocal sent
        sent += 1
        progress.advance(task)

    try:
        place_orders(settings, orders, on_sent=one_sent)
    except Exception as exc:  # not hidden: the caller prints what was placed, then exits 2
        return sent, f"{type(exc).__name__}: {exc}"
    return sent, None


def _print_placed(ids: list[str], states: States, as_json: bool, wait: bool) -> None:
    if as_json:
        rows = [{"order_id": o, **(_state_of(states, o) if wait else {})} for o in ids]
        print(json.dumps({"orders": rows}))
        return
    for o in ids:
        print(o if not wait else "\t".join((o, *(str(v or "") for v in states.get(o, ("", ""))))))


@click.command()
@click.option("--count", "-n", default=200, show_default=True)
@click.option("--timeout", default=300.0, show_default=True)
@click.option("--saga", type=click.Choice(SAGA_MODES), default=None)
def demo(count: int, timeout: float, saga: str | None) -> None:
    """Bring the stack up, enqueue orders with every path, and summarise where they ended."""
    up_stack(with_flower=True, saga=saga)
    code = enqueue_orders(count, None, None, True, timeout)
    settings = current_settings()
    print_status(settings, as_json=False)
    console.print(
        f"\nWatch it in Flower: http://127.0.0.1:{settings.flower_port}   "
        f"Prometheus alerts: {ui_links(settings)['alerts']}   "
        f"Health: curl {settings.health_url('payment')}/health (and /ready /metrics /breakers)\n"
        f"Inspect one: choreo order <ORDER_ID>   Its trace: choreo trace <ORDER_ID>   "
        f"Dead letters: choreo dlq list payment   Stop: choreo down"
    )
    console.print(*demo_alert_lines(settings))
    hint = path_hint()
    if hint:
        console.print(hint, soft_wrap=True)
    sys.exit(code)


@click.command()
@click.argument("order_id")
@click.option("--json", "as_json", is_flag=True)
def order(order_id: str, as_json: bool) -> None:
    """Show an order: state, reason, payment/stock/shipment facts and its timeline across
    services."""
    settings = current_settings()
    d = order_details(settings, order_id)
    if d is None:
        fail(f"no order {order_id!r}")
    if d["waiting"] is not None:  # where it waits: its queue's figures, live from the broker
        d["waiting"]["queue"] = waiting_queue(settings, d["waiting"]["service"])
    if as_json:
        print(json.dumps(d, indent=2))
        return
    console.print(
        f"[bold]{d['order_id']}[/bold]  {d['state']}" + (f" ({d['reason']})" if d["reason"] else "")
    )
    if d["reason_detail"]:  # which line, which price: what the reason code means for this order
        console.print(f"  {escape(d['reason_detail'])}")
    if d["waiting"] is not None:
        console.print(describe_waiting(d["waiting"]))
    console.print(
        f"customer {d['customer_id']}  amount {d['amount_cents'] / 100:.2f}  "
        f"card {d['card_token']}  address {d['address']}"
    )
    items = ", ".join(f"{i['qty']}x {i['sku']}" for i in d["items"])
    console.print(f"items: {items}")
    pay = d["payment"]
    console.print(f"payment: charge {pay['charge'] or '-'}; refund {pay['refund'] or '-'}")
    console.print(f"stock: {d['stock'] or '-'}")
    console.print(f"shipment: {d['shipment'] or '-'}")
    console.print(f"notifications: {', '.join(n['kind'] for n in d['notifications']) or '-'}")
    console.print(timeline_table(d["timeline"]))
