"""The `choreo` command line: run the stack, enqueue orders, inspect orders, queues and dead letters."""
from __future__ import annotations

import json
import os
import sys
import time
import uuid
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from config.settings import DOMAINS, get_settings

console = Console(stderr=False)
err = Console(stderr=True)


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """choreo: order sagas as a choreography of Celery services over RabbitMQ."""


# --- processes ------------------------------------------------------------------------

@cli.command()
@click.argument("domain", type=click.Choice([*DOMAINS, "orchestrator"]))
def worker(domain: str) -> None:
    """Run one domain's Celery worker (what `choreo up` starts, five times)."""
    from choreo.messaging.topology import Topology
    from choreo.queries import prepare
    from tasks.app import make_app

    settings = get_settings()
    prepare(settings, [domain, "gateway"] if domain == "payment" else [domain])
    Topology(settings).declare()
    app = make_app(domain, settings)
    # Node names must be unique per vhost (Celery's pidbox queue is exclusive to one node).
    node = domain if settings.namespace == "choreo" else f"{domain}.{settings.namespace}"
    app.worker_main([
        "worker", "-Q", Topology(settings).names.queue(domain), "-n", f"{node}@%h",
        "-c", str(settings.worker_concurrency), "-P", settings.worker_pool, "-l", settings.log_level,
        "--without-gossip", "--without-mingle", "-E",
    ])


@cli.command()
def users() -> None:
    """Run the user service (GET /users/{id}) over HTTP."""
    from choreo import logs
    from choreo.db import engine_for
    from choreo.queries import prepare
    from choreo.users import make_server

    settings = get_settings()
    logs.configure("users", settings.log_level, settings.log_json)
    prepare(settings, ["user"])
    server = make_server(engine_for(settings, "user"), settings.user_service_host, settings.user_service_port)
    console.print(f"user service on {settings.users_url}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


@cli.command()
def flower() -> None:
    """Run Flower on the broker (every domain's worker and task)."""
    from tasks.app import make_app

    settings = get_settings()
    # Flower listens on loopback only; its JSON API (used by scripts and `choreo status`
    # readers) needs this flag to answer without a login.
    os.environ.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
    app = make_app("flower", settings)
    app.start(["flower", f"--port={settings.flower_port}", "--address=127.0.0.1", "--purge_offline_workers=60"])


def _up(with_flower: bool = True, wait: float = 90.0, saga: str | None = None) -> None:
    from choreo.messaging.admin import BrokerAdmin
    from choreo.messaging.topology import Topology
    from choreo.queries import prepare
    from choreo.stack import Stack, process_names

    settings = get_settings()
    env = {}
    if saga:
        running = [n for n, pid in Stack(settings).running().items() if pid]
        if saga != settings.saga_mode and running:
            fail(f"the stack runs in {settings.saga_mode} mode; run `choreo down` before switching to {saga}")
        settings = settings.model_copy(update={"saga_mode": saga})
        env["CHOREO_SAGA_MODE"] = saga
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    (settings.run_dir / "saga-mode").write_text(settings.saga_mode)
    get_settings.cache_clear()
    prepare(settings)
    Topology(settings).declare()
    stack = Stack(settings, env)
    names = [n for n in process_names(settings) if with_flower or n != "flower"]
    for name in names:
        stack.start(name)
    deadline = time.monotonic() + wait
    with BrokerAdmin(settings) as admin:
        while True:
            stats = {q["name"]: q["consumers"] for q in admin.queue_stats()}
            missing = [d for d in settings.domains if not stats.get(Topology(settings).names.queue(d))]
            dead = [n for n in names if stack.pid(n) is None]
            if not missing and not dead:
                break
            if time.monotonic() > deadline:
                fail(f"stack not ready after {wait:.0f}s: no consumer on {missing or '-'}, not running: "
                     f"{dead or '-'} (logs in {stack.log_dir})")
            time.sleep(0.5)
    console.print(f"[green]stack up[/green] ({settings.saga_mode}): {', '.join(names)} (logs in {stack.log_dir})")
    if with_flower:
        console.print(f"Flower: http://127.0.0.1:{settings.flower_port}")


@cli.command()
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
@click.option("--saga", type=click.Choice(["choreography", "orchestrated"]), default=None,
              help="Saga style (default: the running one, else choreography).")
def up(no_flower: bool, saga: str | None) -> None:
    """Start the user service, the five domain workers (and the orchestrator) and Flower (idempotent)."""
    _up(with_flower=not no_flower, saga=saga)


@cli.command()
def down() -> None:
    """Stop what `choreo up` started (by pid file; nothing else is touched)."""
    from choreo.stack import Stack, process_names

    settings = get_settings()
    stack = Stack(settings)
    for name in reversed(process_names(settings.model_copy(update={"saga_mode": "orchestrated"}))):
        if stack.stop(name):
            console.print(f"stopped {name}")


# --- orders ---------------------------------------------------------------------------

def publish_orders(settings, scenarios: list[str], seed: int | None, on_sent=None) -> list[tuple[str, str]]:
    import random

    from choreo.messaging.publisher import Publisher
    from choreo.messaging.topology import Names
    from config.catalog import make_order
    from models.envelope import PlaceOrder, make_envelope
    from tasks.app import make_app

    rng = random.Random(seed)
    app = make_app("client", settings)
    publisher = Publisher(app, Names(settings.namespace))
    sent = []
    for scenario in scenarios:
        spec = make_order(scenario, rng)
        order_id = f"ord-{uuid.UUID(int=rng.getrandbits(128)).hex[:16]}" if seed is not None else f"ord-{uuid.uuid4().hex[:16]}"
        env = make_envelope("place_order", order_id, PlaceOrder(customer_id=spec.customer_id, items=spec.items,
                                                              card_token=spec.card_token, address=spec.address),
                            source="cli")
        publisher.publish(env)
        sent.append((order_id, scenario))
        if on_sent:
            on_sent()
    return sent


def wait_settled(settings, order_ids: list[str], timeout: float, progress: Progress | None = None, task=None) -> dict:
    from choreo.queries import TERMINAL, order_states

    deadline = time.monotonic() + timeout
    states: dict = {}
    while True:
        states = order_states(settings, order_ids)
        done = sum(1 for st, _ in states.values() if st in TERMINAL)
        if progress is not None:
            progress.update(task, completed=done)
        if done == len(order_ids) or time.monotonic() > deadline:
            return states
        time.sleep(0.3)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


def outcome_table(sent: list[tuple[str, str]], states: dict, specs: dict) -> tuple[Table, int]:
    from config.catalog import SCENARIOS

    table = Table(title="orders by scenario")
    for col in ("scenario", "orders", "expected", "actual", "ok"):
        table.add_column(col)
    mismatches = 0
    for scenario in SCENARIOS:
        ids = [o for o, s in sent if s == scenario]
        if not ids:
            continue
        exp = specs[scenario]
        actual: dict[str, int] = {}
        for o in ids:
            st, reason = states.get(o, ("MISSING", None))
            key = f"{st} ({reason})" if reason else st
            actual[key] = actual.get(key, 0) + 1
            if (st, reason) != exp:
                mismatches += 1
        exp_text = f"{exp[0]} ({exp[1]})" if exp[1] else exp[0]
        ok = actual == {exp_text: len(ids)}
        table.add_row(scenario, str(len(ids)), exp_text, ", ".join(f"{k}: {v}" for k, v in sorted(actual.items())),
                      "[green]yes[/green]" if ok else "[red]NO[/red]")
    return table, mismatches


def expected_by_scenario() -> dict[str, tuple[str, str | None]]:
    import random

    from config.catalog import SCENARIOS, expected_outcome, make_order

    out = {}
    for s in SCENARIOS:
        spec = make_order(s, random.Random(0))
        out[s] = expected_outcome(spec.card_token, spec.items, spec.address)
    return out


def _enqueue(count: int, mix: str | None, seed: int | None, wait: bool, timeout: float, as_json: bool = False) -> int:
    from config.catalog import draw_scenarios, parse_mix

    if count < 1:
        fail("--count must be at least 1")
    try:
        weights = parse_mix(mix)
    except ValueError as exc:
        fail(str(exc))
    settings = get_settings()
    scenarios = draw_scenarios(count, weights, seed)
    with _progress() as progress:
        t_pub = progress.add_task("publishing", total=count)
        sent = publish_orders(settings, scenarios, seed, on_sent=lambda: progress.advance(t_pub))
        if not wait:
            states = {}
        else:
            t_set = progress.add_task("settling  ", total=count)
            states = wait_settled(settings, [o for o, _ in sent], timeout, progress, t_set)
    if not wait:
        console.print(f"enqueued {count} orders")
        return 0
    table, mismatches = outcome_table(sent, states, expected_by_scenario())
    if as_json:
        print(json.dumps({"orders": [{"order_id": o, "scenario": s, "state": states.get(o, (None, None))[0],
                                      "reason": states.get(o, (None, None))[1]} for o, s in sent],
                          "mismatches": mismatches}))
    else:
        console.print(table)
    unsettled = sum(1 for o, _ in sent if o not in states or states[o][0] not in ("COMPLETED", "CANCELLED", "NEEDS_ATTENTION"))
    if unsettled:
        err.print(f"[red]{unsettled} order(s) did not settle within {timeout:.0f}s[/red]")
    if mismatches:
        err.print(f"[red]{mismatches} order(s) ended in a state their data did not ask for[/red]")
    return 1 if (mismatches or unsettled) else 0


@cli.command()
@click.option("--count", "-n", default=10, show_default=True, help="How many orders.")
@click.option("--mix", default=None, help="Scenario weights, e.g. completed=60,declined=20,out_of_stock=20 or 'all'.")
@click.option("--seed", type=int, default=None, help="Make the scenario draw and order ids repeatable.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until every order settles.")
@click.option("--timeout", default=180.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def enqueue(count: int, mix: str | None, seed: int | None, wait: bool, timeout: float, as_json: bool) -> None:
    """Place orders with a scenario mix; show progress until they settle."""
    sys.exit(_enqueue(count, mix, seed, wait, timeout, as_json))


@cli.command()
@click.option("--count", "-n", default=200, show_default=True)
@click.option("--timeout", default=300.0, show_default=True)
@click.option("--saga", type=click.Choice(["choreography", "orchestrated"]), default=None)
def demo(count: int, timeout: float, saga: str | None) -> None:
    """Bring the stack up, enqueue orders with every path, and summarise where they ended."""
    _up(with_flower=True, saga=saga)
    code = _enqueue(count, None, None, True, timeout)
    _print_status(get_settings(), as_json=False)
    settings = get_settings()
    console.print(f"\nWatch it in Flower: http://127.0.0.1:{settings.flower_port}   "
                  f"Inspect one: choreo order <ORDER_ID>   Dead letters: choreo dlq list payment   Stop: choreo down")
    sys.exit(code)


@cli.command()
@click.argument("order_id")
@click.option("--json", "as_json", is_flag=True)
def order(order_id: str, as_json: bool) -> None:
    """Show an order: state, reason, payment/stock/shipment facts and its timeline across services."""
    from choreo.queries import order_details

    details = order_details(get_settings(), order_id)
    if details is None:
        fail(f"no order {order_id!r}")
    if as_json:
        print(json.dumps(details, indent=2))
        return
    d = details
    console.print(f"[bold]{d['order_id']}[/bold]  {d['state']}" + (f" ({d['reason']})" if d["reason"] else ""))
    console.print(f"customer {d['customer_id']}  amount {d['amount_cents'] / 100:.2f}  card {d['card_token']}  "
                  f"address {d['address']}")
    items = ", ".join(f"{i['qty']}x {i['sku']}" for i in d["items"])
    console.print(f"items: {items}")
    pay = d["payment"]
    console.print(f"payment: charge {pay['charge'] or '-'}; refund {pay['refund'] or '-'}")
    console.print(f"stock: {d['stock'] or '-'}")
    console.print(f"shipment: {d['shipment'] or '-'}")
    console.print(f"notifications: {', '.join(n['kind'] for n in d['notifications']) or '-'}")
    table = Table(title="timeline")
    for col in ("at", "service", "what", "detail"):
        table.add_column(col)
    for t in d["timeline"]:
        table.add_row(t["at"] or "", t["service"], t["what"], str(t["detail"] or ""))
    console.print(table)


def _print_status(settings, as_json: bool) -> dict:
    from choreo.messaging.admin import BrokerAdmin
    from choreo.queries import summary
    from choreo.stack import Stack

    from sqlalchemy.exc import SQLAlchemyError

    try:
        data: dict[str, Any] = summary(settings)
    except SQLAlchemyError as exc:  # nothing started yet, or a database server away: a status, not a crash
        data = {"orders": {"total": 0, "by_state_reason": []},
                "database_error": f"{type(exc.orig or exc).__name__}: {str(exc.orig or exc).splitlines()[0]}"}
    try:
        with BrokerAdmin(settings) as admin:
            data["queues"] = admin.queue_stats()
    except Exception as exc:  # the broker being down is a status, not a crash
        data["queues"] = []
        data["broker_error"] = repr(exc)
    data["dlq"] = {q["name"].split(".")[-2]: q["messages"] for q in data["queues"] if q["name"].endswith(".dlq")}
    data["unrouted"] = next((q["messages"] for q in data["queues"] if q["name"] == f"{settings.namespace}.unrouted"), None)
    data["processes"] = Stack(settings).running()
    try:
        from choreo.bootstrap import redis_client
        from choreo.metrics import Metrics
        data["metrics"] = Metrics(redis_client(settings), settings.redis_prefix).snapshot()
    except Exception as exc:
        data["metrics"] = {}
        data["redis_error"] = repr(exc)
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return data
    t = Table(title=f"orders ({data['orders']['total']})")
    for col in ("state", "reason", "count"):
        t.add_column(col)
    for row in data["orders"]["by_state_reason"]:
        t.add_row(row["state"], row["reason"] or "", str(row["count"]))
    console.print(t)
    q = Table(title="queues")
    for col in ("name", "messages", "consumers"):
        q.add_column(col)
    for row in data["queues"]:
        if row["name"].split(".")[-2] == "retry" and not row["messages"]:
            continue  # empty retry rungs are noise
        q.add_row(row["name"], str(row["messages"]), str(row["consumers"]))
    console.print(q)
    if data.get("broker_error"):
        err.print(f"[red]broker unreachable:[/red] {data['broker_error']}")
    if data.get("database_error"):
        err.print(f"[red]order database unreachable:[/red] {data['database_error']} (started yet? `choreo up`)")
    if data.get("unrouted"):
        console.print(f"[yellow]{data['unrouted']} unrouted message(s)[/yellow]: no binding matched their routing key; "
                      f"see `choreo dlq list unrouted`")
    if data["metrics"]:
        console.print("counters: " + "; ".join(f"{name} " + ", ".join(f"{d}={v}" for d, v in sorted(per.items()))
                                               for name, per in data["metrics"].items() if per))
    procs = ", ".join(f"{n}={'pid ' + str(p) if p else 'down'}" for n, p in data["processes"].items())
    console.print(f"processes: {procs}")
    return data


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Orders by state and reason, queue depths and consumers, dead letters, processes."""
    _print_status(get_settings(), as_json)


# --- dead letters ---------------------------------------------------------------------

@cli.group()
def dlq() -> None:
    """Dead-letter queues (one per domain, and `unrouted`): list, peek, replay."""


def _domain_arg(domain: str) -> str:
    from choreo.messaging.admin import UNROUTED

    domains = (*get_settings().domains, UNROUTED)
    if domain not in domains:
        fail(f"unknown domain {domain!r}; choose from {', '.join(domains)}")
    return domain


@dlq.command("list")
@click.argument("domain")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def dlq_list(domain: str, limit: int, as_json: bool) -> None:
    """One line per dead letter of DOMAIN: id, type, order, reason (nothing is consumed)."""
    from choreo.messaging.admin import BrokerAdmin

    with BrokerAdmin(get_settings()) as admin:
        items = admin.peek(_domain_arg(domain), limit)
    if as_json:
        print(json.dumps([{k: v for k, v in i.as_dict().items() if k not in ("headers", "body")} for i in items], indent=2))
        return
    t = Table(title=f"{domain} dead letters ({len(items)})")
    for col in ("event id", "type", "order", "attempts", "reason"):
        t.add_column(col, overflow="fold")
    for i in items:
        t.add_row(i.event_id, i.type, i.order_id or "", str(i.attempts or ""), i.reason)
    console.print(t)


@dlq.command("peek")
@click.argument("domain")
@click.option("--limit", default=5, show_default=True)
def dlq_peek(domain: str, limit: int) -> None:
    """Full headers and body of the first dead letters of DOMAIN (nothing is consumed)."""
    from choreo.messaging.admin import BrokerAdmin

    with BrokerAdmin(get_settings()) as admin:
        items = admin.peek(_domain_arg(domain), limit)
    print(json.dumps([i.as_dict() for i in items], indent=2, default=str))


@dlq.command("replay")
@click.argument("domain")
@click.option("--id", "event_id", default=None, help="Only this event id (default: all).")
def dlq_replay(domain: str, event_id: str | None) -> None:
    """Move dead letters back to DOMAIN's queue for another try (attempts start again)."""
    from choreo.messaging.admin import BrokerAdmin

    with BrokerAdmin(get_settings()) as admin:
        done = admin.replay(_domain_arg(domain), event_id)
    if event_id and not done:
        fail(f"no dead letter with id {event_id!r} in {domain}")
    console.print(f"replayed {len(done)} message(s) to {domain}")


@cli.command()
def topology() -> None:
    """Declare exchanges, queues and bindings (idempotent) and list them."""
    from choreo.messaging.topology import Topology

    for name in Topology(get_settings()).declare():
        console.print(name)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def breakers(as_json: bool) -> None:
    """Circuit breakers and their shared state (in Redis)."""
    from choreo.bootstrap import redis_client
    from choreo.users import UsersClient

    settings = get_settings()
    client = UsersClient(settings.users_url, redis_client(settings), settings.redis_prefix)
    state = client.breaker_state()
    if as_json:
        print(json.dumps([state]))
    else:
        console.print(f"{state['name']}: {state['state']} (failures {state['failures']})")


@cli.group()
def projections() -> None:
    """The order read model (a projection of the order event store)."""


@projections.command("rebuild")
def projections_rebuild() -> None:
    """Drop the read model and rebuild it from the event store."""
    from choreo import projections as proj
    from choreo.db import engine_for

    engine = engine_for(get_settings(), "order")
    n = proj.rebuild(engine)
    console.print(f"rebuilt {n} order view(s); drift after rebuild: {len(proj.drift(engine))}")


@projections.command("check")
def projections_check() -> None:
    """Compare the read model with a replay of the event store; exit 1 on drift."""
    from choreo import projections as proj
    from choreo.db import engine_for

    drifted = proj.drift(engine_for(get_settings(), "order"))
    console.print(f"{len(drifted)} order view(s) drift from their events" + (f": {drifted[:20]}" if drifted else ""))
    sys.exit(1 if drifted else 0)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def audit(as_json: bool) -> None:
    """Check every guarantee over the services' own databases; exit 1 on any violation."""
    from choreo.audit import print_report, run_audit

    checks = run_audit(get_settings())
    if as_json:
        print(json.dumps({"passed": all(c.passed for c in checks), "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        print_report(checks, console)
    sys.exit(0 if all(c.passed for c in checks) else 1)


@cli.command()
@click.option("--orders", default=1000, show_default=True, help="Orders to place while faults are injected.")
@click.option("--duration", default=120.0, show_default=True, help="Seconds of fault injection at most.")
@click.option("--kill-every", default=3.0, show_default=True, help="Seconds between worker kills.")
@click.option("--seed", type=int, default=None)
@click.option("--broker-restart", type=click.Choice(["vhost", "node", "none"]), default="vhost", show_default=True,
              help="vhost: restart only this run's vhost and drop its connections; node: stop_app/start_app.")
@click.option("--settle-timeout", default=300.0, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the run's folder (data, logs) afterwards; kept anyway on failure.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="Folder for the run (default: a new temp folder).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout (progress goes to stderr).")
def chaos(orders: int, duration: float, kill_every: float, seed: int | None, broker_restart: str,
          settle_timeout: float, keep: bool, workdir: str | None, as_json: bool) -> None:
    """Place orders while killing workers, restarting the broker and Redis, injecting duplicates
    and poison; then wait for the system to settle and audit it. Exits 1 on any violation."""
    from choreo.chaos import ChaosConfig, run_chaos

    if orders < 1 or duration <= 0 or kill_every <= 0:
        fail("--orders, --duration and --kill-every must be positive")
    from pathlib import Path

    report = run_chaos(ChaosConfig(orders=orders, duration=duration, kill_every=kill_every, seed=seed,
                                   broker_restart=broker_restart, settle_timeout=settle_timeout, keep=keep,
                                   workdir=Path(workdir) if workdir else None),
                       console=err if as_json else console)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    sys.exit(0 if report.passed else 1)


def main() -> None:
    try:
        from pydantic import ValidationError

        get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        err.print(f"error: setting CHOREO_{str(first['loc'][0]).upper()}: {first['msg']}")
        sys.exit(2)
    cli()


if __name__ == "__main__":
    main()
