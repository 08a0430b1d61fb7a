"""`choreo worker|users|flower|up|down|stop|start`: the processes of a stack, started by one code
path."""

from __future__ import annotations

import os
from contextlib import suppress

import click
import redis
from pydantic import ValidationError

from choreo.app.bootstrap import prepare
from choreo.cli.base import (
    SAGA_MARKER,
    WORKERS_MARKER,
    console,
    current_settings,
    err,
    fail,
    path_hint,
)
from choreo.infra import logs
from choreo.infra.db import engine_for
from choreo.infra.metrics import Metrics
from choreo.infra.redis_client import redis_client
from choreo.infra.schema import SchemaError
from choreo.messaging.access import node_name
from choreo.ops import flower as flower_options
from choreo.ops import owner, prometheus
from choreo.ops.stack import Stack, bring_up, process_names, wait_consuming, worker_of
from choreo.world.users import make_server
from config.settings import DOMAINS, SAGA_MODES, Settings
from consumers.registry import topology
from tasks.app import make_app


def started(settings: Settings, services: list[str]) -> None:
    """Seed a starting process's databases, refusing (one line) any not at this code's schema:
    `choreo db upgrade` (run by `choreo up` and the compose set-up) migrates, once."""
    try:
        prepare(settings, services, migrate=False)
    except SchemaError as exc:
        fail(str(exc))


@click.command()
@click.argument("domain", type=click.Choice([*DOMAINS, "orchestrator"]))
@click.option(
    "--index",
    type=click.IntRange(1, 8),
    default=1,
    show_default=True,
    help="Which of the domain's workers (competing consumers on its queue) this is.",
)
def worker(domain: str, index: int) -> None:
    """Run one domain's Celery worker (what `choreo up` starts, workers_per_domain times per
    domain)."""
    settings = current_settings()
    logs.configure(
        f"worker:{domain}" + (f"-{index}" if index > 1 else ""),
        settings.log_level,
        settings.log_json,
    )
    started(settings, [domain, "gateway"] if domain == "payment" else [domain])
    # The topology is the set-up's (choreo broker setup, run by choreo up): a worker's user may
    # not declare it, and needs nothing of it but its own queue.
    topo = topology(settings)
    app = make_app(domain, settings)
    app.worker_index = index  # its health listener's port (tasks.observe)
    # Node names must be unique per vhost (Flower and `celery inspect` tell workers apart by it; the
    # broker no longer refuses a duplicate: each connection's pidbox queue has a name of its own,
    # tasks.remote); its broker user may declare only its own (choreo.messaging.access.node_name).
    node = node_name(settings, domain, index)
    app.worker_main(
        [
            "worker",
            "-Q",
            topo.names.queue(domain),
            "-n",
            f"{node}@%h",
            # solo: the worker runs its batches in the consuming process
            # (tasks.worker.BatchConsumer).
            "-c",
            "1",
            "-P",
            "solo",
            "-l",
            settings.log_level,
            "--without-gossip",
            "--without-mingle",
            "-E",
        ]
    )


@click.command()
def users() -> None:
    """Run the user service (GET /users/{id}) over HTTP."""
    settings = current_settings()
    logs.configure("users", settings.log_level, settings.log_json)
    started(settings, ["user"])
    server = make_server(
        engine_for(settings, "user"),
        settings.user_service_host,
        settings.user_service_port,
        settings.metrics,
        run_dir=settings.run_dir,
    )
    console.print(f"user service on {settings.users_url}")
    with suppress(KeyboardInterrupt):
        server.serve_forever()


@click.command()
def flower() -> None:
    """Run Flower on the broker (every domain's worker and task)."""
    settings = current_settings()
    # Flower listens on loopback only; its JSON API (used by scripts and `choreo status`
    # readers) needs this flag to answer without a login.
    os.environ.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
    app = make_app("flower", settings)
    api = flower_options.broker_api(settings)
    if api is None:
        console.print(
            f"Flower's Broker tab stays empty: no management API answers at "
            f"{flower_options.management_api(settings)} (CHOREO_BROKER_ADMIN_API)"
        )
    app.start(["flower", *flower_options.argv(settings, api)])


def up_stack(
    with_flower: bool = True,
    wait: float = 90.0,
    saga: str | None = None,
    with_prometheus: bool = True,
    workers: int | None = None,
    take_namespace: bool = False,
) -> None:
    """`choreo up`: start what is not running and wait until every worker consumes, then
    Prometheus (a stack runs without it: a failure to start it is a warning). Refused when
    another checkout holds the namespace (choreo.ops.owner), unless `take_namespace`."""
    settings = current_settings()
    claim_namespace(settings, take_namespace)
    running = [n for n, pid in Stack(settings).running().items() if pid]
    if saga and saga != settings.saga_mode and running:
        fail(
            f"the stack runs in {settings.saga_mode} mode; "
            f"run `choreo down` before switching to {saga}"
        )
    if workers and workers < settings.workers_per_domain and running:
        fail(
            f"the stack runs {settings.workers_per_domain} workers per domain; "
            f"run `choreo down` before starting it with {workers}"
        )
    if saga or workers:
        try:
            settings = Settings(
                **{
                    **settings.model_dump(),
                    **({"saga_mode": saga} if saga else {}),
                    **({"workers_per_domain": workers} if workers else {}),
                }
            )
        except ValidationError as exc:
            fail(exc.errors()[0]["msg"].removeprefix("Value error, "))
    if not running:
        reset_counters(settings)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    (settings.run_dir / SAGA_MARKER).write_text(settings.saga_mode)
    (settings.run_dir / WORKERS_MARKER).write_text(str(settings.workers_per_domain))
    names = [n for n in process_names(settings) if with_flower or n != "flower"]
    # A full bring-up starts everything, what was stopped on purpose too (docker compose up).
    for name in Stack(settings).release_all():
        console.print(f"{name}: no longer held stopped")
    try:
        stack = bring_up(settings, names, wait)
    except RuntimeError as exc:
        fail(str(exc))
    console.print(
        f"[green]stack up[/green] ({settings.saga_mode}): {', '.join(names)} "
        f"(logs in {stack.log_dir})"
    )
    if with_flower:
        console.print(f"Flower: http://127.0.0.1:{settings.flower_port}")
    if with_prometheus:
        start_prometheus(settings)


def claim_namespace(settings: Settings, force: bool) -> None:
    """Fail in one line when another checkout holds the namespace; Redis away: a warning (the
    stack cannot run without it anyway, and says so)."""
    try:
        other = owner.claim(settings, force)
    except redis.RedisError as exc:
        err.print(f"[yellow]warning:[/yellow] namespace owner not checked (Redis: {exc})")
        return
    if other is not None:
        fail(owner.refusal(settings, other))


def reset_counters(settings: Settings) -> None:
    """A stack starting from nothing counts from zero, and `choreo status` says since when: the
    counters are Redis hashes that outlive it (and an earlier stack's figures are not this one's).
    Redis away: a warning, the stack starts all the same (nothing decides on the counters)."""
    try:
        since = Metrics(redis_client(settings), settings.redis_prefix).reset()
    except redis.RedisError as exc:
        err.print(f"[yellow]warning:[/yellow] counters not reset (Redis: {exc})")
        return
    console.print(f"counters reset at {since}")


def start_prometheus(settings) -> None:
    try:
        prometheus.start(settings)
        prometheus.wait_ready(settings, 30)
    except RuntimeError as exc:
        err.print(f"[yellow]warning:[/yellow] Prometheus not started: {exc}")
        return
    links = prometheus.ui_links(settings)  # the paths this Prometheus answers (2.42: /classic/)
    console.print(
        f"Prometheus: {prometheus.url(settings)} "
        f"(alerts: {links['alerts']}, targets: {links['targets']})"
    )


# What a clean demo leaves firing, on purpose: the default mix's needs_attention orders have a
# refund that fails every retry and is dead-lettered in payment (their orders end NEEDS_ATTENTION).
DEMO_DEAD_LETTER_ALERTS = ("ChoreoDeadLetterQueueGrowing", "ChoreoMessagesDeadLettered")


def demo_alert_lines(settings) -> list[str]:
    """What `choreo demo` says of the alerts: those pending or firing now, and why the dead-letter
    ones are expected after it (they clear 5 minutes after the last dead letter)."""
    now = sorted(
        {f"{a['labels'].get('alertname')} ({a.get('state')})" for a in prometheus.alerts(settings)}
    )
    return [
        f"Alerts now: {', '.join(now) or 'none'}. Expected after a demo (within a scrape or two): "
        f"{' and possibly '.join(DEMO_DEAD_LETTER_ALERTS)} for payment, from the mix's "
        "needs_attention orders, whose refunds are dead-lettered on purpose (they clear 5m after "
        "the last one; `choreo dlq list payment` shows each with its reason, `choreo audit` the "
        "orders)."
    ]


@click.command()
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
@click.option("--no-prometheus", is_flag=True, help="Do not start Prometheus.")
@click.option(
    "--take-namespace",
    is_flag=True,
    help="Start even if another checkout holds this namespace (when it runs no stack any more: "
    "its broker passwords are replaced by this one's).",
)
@click.option(
    "--saga",
    type=click.Choice(SAGA_MODES),
    default=None,
    help="Saga style (default: the running one, else choreography).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 8),
    default=None,
    help="Workers per domain, competing on its queue (default: the running count, else 1; "
    "more than 1 needs a database server).",
)
def up(
    no_flower: bool,
    no_prometheus: bool,
    take_namespace: bool,
    saga: str | None,
    workers: int | None,
) -> None:
    """Start the user service, the domain workers (and the orchestrator), Flower and
    Prometheus (idempotent; what `choreo stop` held is started too)."""
    up_stack(
        with_flower=not no_flower,
        saga=saga,
        with_prometheus=not no_prometheus,
        workers=workers,
        take_namespace=take_namespace,
    )
    hint = path_hint()
    if hint:
        console.print(hint, soft_wrap=True)


@click.command()
def down() -> None:
    """Stop what `choreo up` started (by pid file; nothing else is touched) and end every
    `choreo stop` hold."""
    settings = current_settings()
    if prometheus.stop(settings):
        console.print("stopped prometheus")
    stack = Stack(settings)
    # Every process it may have started, whatever the mode and worker count it was started with.
    every = settings.model_copy(update={"saga_mode": "orchestrated", "workers_per_domain": 8})
    for name in reversed(process_names(every)):
        if stack.stop(name):
            console.print(f"stopped {name}")
    stack.release_all()  # nothing runs: nothing is held either; the next `choreo up` starts all
    with suppress(redis.RedisError):
        if owner.release(settings):  # another checkout may start a stack in this namespace now
            console.print(f"namespace {settings.namespace!r} released")


def known_process(settings: Settings, name: str) -> str:
    """`name` if it is a process of this stack, else a one-line error naming the valid ones."""
    names = process_names(settings)
    if name not in names:
        fail(f"unknown process {name!r}; choose from: {', '.join(names)}")
    return name


@click.command()
@click.argument("name")
def stop(name: str) -> None:
    """Stop one process (SIGTERM; SIGKILL after 15 s) and keep it stopped until `choreo start
    NAME` or `choreo up`: nothing that restarts crashed processes starts it (like `docker
    compose stop NAME`)."""
    settings = current_settings()
    stack = Stack(settings)
    pid = stack.stop_on_purpose(known_process(settings, name))
    done = f"stopped {name} (pid {pid})" if pid else f"{name} was not running"
    console.print(
        f"{done}; held stopped until `choreo start {name}` or `choreo up` "
        f"(mark: {stack.stopped_file(name)})",
        soft_wrap=True,  # one line: a script may read it, a path is not cut
    )


@click.command()
@click.argument("name")
@click.option(
    "--wait",
    type=click.FloatRange(1, 600),
    default=60.0,
    show_default=True,
    help="Seconds to wait until it runs (a worker: until it consumes from its queue).",
)
def start(name: str, wait: float) -> None:
    """Start one process again, ending a `choreo stop NAME`, and wait until it runs (a worker:
    until it consumes from its queue)."""
    settings = current_settings()
    stack = Stack(settings)
    known_process(settings, name)
    was_held, running = stack.held(name), stack.pid(name)
    pid = stack.start(name)
    try:
        wait_consuming(settings, stack, [name], wait)
    except RuntimeError as exc:
        fail(str(exc))
    worker = worker_of(name)
    how = f", consuming from {settings.namespace}.{worker[0]}" if worker else ""
    if running:
        console.print(f"{name} was already running (pid {pid}){how}")
    else:
        console.print(f"started {name} (pid {pid}){how}")
    if was_held:
        console.print(f"{name}: no longer held stopped")
