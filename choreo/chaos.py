"""`choreo chaos`: place orders while killing workers, restarting the broker and Redis and injecting
duplicates, out-of-order events and poison; then let the system settle and audit it.

Everything runs in a sandbox of its own (a RabbitMQ vhost, a Redis server it starts, data,
run and log folders, ports), so a run never touches `choreo up`'s stack or a test session,
and every process it signals is one it started. Faults follow a schedule drawn from a
seeded random.Random: a run is repeatable up to the machine's timing.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika.exceptions
import redis
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, select

from choreo.db import dispose_engines
from choreo.queries import TERMINAL
from choreo.stack import children, free_port, rabbitmqctl
from config.settings import DOMAINS, SERVICES, Settings

WORKERS = [f"worker-{d}" for d in DOMAINS]
# The machine's services failing under the harness: a failed run with the error, not a traceback.
ENVIRONMENT_FAILURES = (RuntimeError, OSError, subprocess.SubprocessError, redis.RedisError,
                        pika.exceptions.AMQPError, SQLAlchemyError)


@dataclass
class ChaosConfig:
    """What a run does; `choreo chaos` fills it from its options."""
    orders: int = 1000
    duration: float = 120.0          # seconds of fault injection at most
    kill_every: float = 3.0          # seconds between worker kills
    seed: int | None = None          # None: drawn, then printed so the run can be repeated
    broker_restart: str = "vhost"    # vhost | node (every vhost of the node!) | none
    settle_timeout: float = 300.0
    redis_restart: bool = True
    keep: bool = False               # keep the sandbox's folders (they are also kept when a run fails)
    workdir: Path | None = None      # default: a new temporary folder


@dataclass
class ChaosReport:
    """What a run did and found; `as_dict()` is the JSON of `choreo chaos --json`."""
    config: dict
    seed: int
    workdir: str
    actions: list[dict] = field(default_factory=list)
    injected: dict[str, int] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    audit: list[dict] = field(default_factory=list)
    mismatches: int = 0              # settled orders whose outcome is not the one their data asked for
    unsettled: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # published, confirmed, never seen by the order service
    errors: list[str] = field(default_factory=list)
    checks: list = field(default_factory=list, repr=False)  # the audit's Check objects, for printing

    @property
    def violations(self) -> int:
        """Broken guarantees (a stuck order is one, in the audit's terminal check), wrong outcomes and
        lost orders; an unanswerable check counts once."""
        failed = sum(c["count"] or (0 if c["passed"] else 1) for c in self.audit)
        return failed + self.mismatches + len(self.missing)

    @property
    def passed(self) -> bool:
        return bool(self.audit) and self.violations == 0 and not self.unsettled and not self.errors

    def as_dict(self) -> dict:
        return {"passed": self.passed, "violations": self.violations, "seed": self.seed, "workdir": self.workdir,
                "config": self.config, "figures": self.figures, "injected": self.injected,
                "mismatches": self.mismatches, "unsettled": self.unsettled[:50], "missing": self.missing[:50],
                "errors": self.errors,
                "actions": self.actions, "audit": self.audit}


class Journal:
    """What the harness did, when (seconds since start): printed as it happens, kept for the report."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.t0 = time.monotonic()
        self.actions: list[dict] = []
        self.lock = threading.Lock()

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def note(self, kind: str, text: str, style: str = "", **data) -> None:
        with self.lock:
            self.actions.append({"t": self.now(), "kind": kind, "text": text, **data})
        self.console.print(f"[dim]{self.now():7.1f}s[/dim] [{style or 'bold'}]{kind:<14}[/] {text}")


def _kill(pid: int) -> bool:
    """SIGKILL one pid of ours; False if it was already gone (it may exit between listing and kill)."""
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


# --- the sandbox ---------------------------------------------------------------------

class Sandbox:
    """The run's own vhost, Redis server, folders and ports, and the Settings/env that point at them."""

    def __init__(self, cfg: ChaosConfig) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self.own_workdir = cfg.workdir is None
        self.workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix=f"choreo-chaos-{self.run_id}-")).resolve()
        self.vhost = f"choreo-chaos-{self.run_id}"
        self.redis_port = free_port()
        self.redis_proc: subprocess.Popen | None = None
        self.vhost_created = False
        overrides: dict[str, Any] = {
            "broker_url": f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}",
            "redis_url": f"redis://127.0.0.1:{self.redis_port}/0",
            "redis_prefix": f"choreo-chaos-{self.run_id}",
            "namespace": "choreo",
            "data_dir": self.workdir / "data",
            "run_dir": self.workdir / "run",
            "user_service_port": free_port(),
            "flower_port": free_port(),
            # SQLite files in the sandbox, whatever database the calling shell points at.
            "database_server": "",
            **{f"{s}_database_url": "" for s in SERVICES},
            # The harness starts the five choreography workers (ignored by a core without modes).
            "saga_mode": "choreography",
            # Never inherit the crash-after-commit test hook: chaos brings its own faults.
            "fault_crash_after_commit": "",
            "fault_marker": "",
        }
        # Workers read CHOREO_* variables; this process uses the Settings object built from the
        # same values (explicit values win over the environment, so both agree by construction).
        self.settings = Settings(**overrides)
        self.env = {f"CHOREO_{k.upper()}": str(v) for k, v in overrides.items()}

    def open(self) -> None:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        rabbitmqctl("add_vhost", self.vhost)
        self.vhost_created = True
        rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        self.start_redis()

    def start_redis(self) -> int:
        log = open(self.workdir / "logs" / "redis.log", "ab")
        self.redis_proc = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        client = redis.Redis(port=self.redis_port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.redis_proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.redis_port} did not start; see "
                                       f"{self.workdir / 'logs' / 'redis.log'}") from None
                time.sleep(0.05)
        client.close()
        return self.redis_proc.pid

    def kill_redis(self) -> int | None:
        proc, self.redis_proc = self.redis_proc, None
        if proc is None or proc.poll() is not None:
            return None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        return proc.pid

    def close(self, keep: bool) -> list[str]:
        """Stop what the sandbox started; return what could not be cleaned (for the report)."""
        problems = []
        self.kill_redis()
        if self.vhost_created:
            try:
                rabbitmqctl("delete_vhost", self.vhost)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                problems.append(f"vhost {self.vhost} not deleted: {exc}")
        dispose_engines(str(self.workdir))  # its databases go away with it: close their engines
        if not keep and self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return problems


# --- faults --------------------------------------------------------------------------

class Faults:
    """Kills and restarts workers, the broker and Redis; keeps the books of what it did."""

    def __init__(self, sandbox: Sandbox, stack, rng: random.Random, journal: Journal, broker_mode: str) -> None:
        self.sb = sandbox
        self.stack = stack
        self.rng = rng
        self.journal = journal
        self.broker_mode = broker_mode
        self.restart_due: dict[str, float] = {}
        self.started_pids: set[int] = set()
        self.counts: Counter = Counter()
        self.metrics_before_redis_restart: dict[str, dict[str, int]] = {}

    def start(self, name: str, why: str = "") -> int:
        pid = self.stack.start(name)
        self.started_pids.add(pid)
        if why:
            self.journal.note("restart", f"{name} pid {pid} ({why})", style="green", process=name, pid=pid)
        return pid

    def kill_random_worker(self) -> None:
        candidates = [n for n in WORKERS if n not in self.restart_due and self.stack.pid(n)]
        if not candidates:
            return

        name = self.rng.choice(candidates)
        parent = self.stack.pid(name)
        kids = children(parent)
        if kids and self.rng.random() < 0.5:
            # Only the pool process: Celery's parent notices, rejects the task for redelivery
            # (task_reject_on_worker_lost) and forks a new child: nothing for us to restart.
            kids = [pid for pid in kids if _kill(pid)]
            self.counts["kill_child"] += 1
            self.journal.note("kill -9", f"{name} pool child {kids} (parent {parent} lives)", style="red",
                              process=name, mode="child", pids=kids)
            return
        pids = self.stack.kill(name)
        delay = round(self.rng.uniform(0.3, 2.0), 2)
        self.restart_due[name] = time.monotonic() + delay
        self.counts["kill_worker"] += 1
        self.journal.note("kill -9", f"{name} pids {pids}; restart in {delay}s", style="red",
                          process=name, mode="worker", pids=pids)

    def tend(self) -> None:
        """Restart killed workers when due; restart any process that died on its own (and say so)."""
        now = time.monotonic()
        for name, due in list(self.restart_due.items()):
            if now >= due:
                del self.restart_due[name]
                self.start(name, "after kill")
        for name in ["users", *WORKERS]:
            if name not in self.restart_due and self.stack.pid(name) is None:
                self.counts["unexpected_exit"] += 1
                self.journal.note("died", f"{name} was not running (not killed by us); see "
                                          f"{self.stack.logfile(name)}", style="yellow", process=name)
                self.start(name, "found dead")

    def restart_broker(self) -> None:
        vhost = self.sb.vhost
        if self.broker_mode == "vhost":
            out = rabbitmqctl("close_all_connections", "-p", vhost, "chaos: broker restart")
            # restart_vhost restarts a vhost whose stores failed; on a healthy vhost RabbitMQ
            # 3.10 answers "already running": the forced disconnect above is the real fault.
            out += rabbitmqctl("restart_vhost", "-p", vhost)
            self.journal.note("broker", f"closed every connection of vhost {vhost}, restart_vhost: "
                                        f"{' '.join(out.split())[:160]}", style="magenta", mode="vhost")
        elif self.broker_mode == "node":
            self.journal.note("broker", "stop_app/start_app: EVERY vhost on this node is disconnected",
                              style="magenta", mode="node")
            rabbitmqctl("stop_app")
            time.sleep(self.rng.uniform(0.5, 2.0))  # the broker stays down a moment, as in a real restart
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup", "--timeout", "60")
            self.journal.note("broker", "node back", style="magenta", mode="node")
        self.counts["broker_restart"] += 1

    def restart_redis(self, metrics_snapshot) -> None:
        # Counters live in this Redis and die with it: take them first (figures, not correctness).
        try:
            self.metrics_before_redis_restart = metrics_snapshot()
        except redis.RedisError as exc:
            self.journal.note("redis", f"could not read counters before restart: {exc!r}", style="yellow")
        old = self.sb.kill_redis()
        time.sleep(self.rng.uniform(0.1, 0.8))
        new = self.sb.start_redis()
        self.counts["redis_restart"] += 1
        self.journal.note("redis", f"kill -9 redis-server pid {old}, new pid {new} on port {self.sb.redis_port} "
                                   f"(every key lost)", style="magenta", old=old, new=new)


# --- injections ----------------------------------------------------------------------

def celery_message(task: str, args: list, task_id: str) -> tuple[bytes, dict]:
    """A protocol-2 task message as any AMQP client can build it (see tests/e2e)."""
    headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None, "group": None,
               "retries": 0, "eta": None, "expires": None, "argsrepr": "", "kwargsrepr": "", "origin": "chaos"}
    body = json.dumps([args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()
    return body, headers


class Injector:
    """Re-publishes real envelopes from the services' outboxes (same event ids), and poison."""

    def __init__(self, settings: Settings, rng: random.Random, journal: Journal, per_burst: int) -> None:
        from choreo.messaging.publisher import Publisher
        from choreo.messaging.topology import Names
        from tasks.app import make_app

        self.settings = settings
        self.rng = rng
        self.journal = journal
        self.per_burst = per_burst
        self.app = make_app("chaos", settings)
        self.publisher = Publisher(self.app, Names(settings.namespace))
        self.counts: Counter = Counter()

    def close(self) -> None:
        self.app.close()

    def _outbox(self) -> list[tuple]:
        """(domain, row id, order id, type, created_at) of every committed event, sent or not."""
        from choreo.db import engine_for
        from models.tables import Outbox

        rows = []
        for d in DOMAINS:
            with Session(engine_for(self.settings, d)) as s:
                rows += [(d, *r) for r in s.exec(select(Outbox.id, Outbox.order_id, Outbox.type, Outbox.created_at))]
        return rows

    def _bodies(self, picked: list[tuple]) -> list:
        from choreo.db import engine_for
        from models.envelope import Envelope
        from models.tables import Outbox

        out = []
        for d in DOMAINS:
            ids = [r[1] for r in picked if r[0] == d]
            if ids:
                with Session(engine_for(self.settings, d)) as s:
                    bodies = dict(s.exec(select(Outbox.id, Outbox.body).where(Outbox.id.in_(ids))).all())
                out += [(r, Envelope.model_validate_json(bodies[r[1]])) for r in picked if r[0] == d]
        # Keep the order the caller chose (reversed timelines depend on it).
        rank = {r: i for i, r in enumerate(picked)}
        return [env for r, env in sorted(out, key=lambda p: rank[p[0]])]

    def _publish(self, kind: str, envelopes: list) -> None:
        for env in envelopes:
            self.publisher.publish(env)
        self.counts[kind] += len(envelopes)

    def burst(self) -> None:
        from choreo.queries import order_states

        rows = self._outbox()
        if not rows:
            return
        states = order_states(self.settings)
        # Plain duplicates: any committed event again, same event id.
        dups = self.rng.sample(rows, min(self.per_burst, len(rows)))
        self._publish("duplicate", self._bodies(dups))
        by_order: dict[str, list[tuple]] = {}
        for r in rows:
            by_order.setdefault(r[2], []).append(r)
        ended = sorted(o for o, (st, _) in states.items() if st in TERMINAL and o in by_order)
        moving = sorted(o for o, (st, _) in states.items() if st not in TERMINAL and o in by_order)
        # Late: an order's first facts (order.placed, payment.*) arrive after the order ended.
        late, late_orders = [], self.rng.sample(ended, min(max(1, self.per_burst // 4), len(ended)))
        for o in late_orders:
            late += sorted(by_order[o], key=lambda r: r[4])[:2]
        self._publish("late", self._bodies(late))
        # Reversed: an in-flight order's whole timeline so far, newest first, possibly before
        # the original of its newest event was published (an outbox row not yet sent).
        rev, rev_orders = [], self.rng.sample(moving, min(max(1, self.per_burst // 8), len(moving)))
        for o in rev_orders:
            rev += sorted(by_order[o], key=lambda r: r[4], reverse=True)
        self._publish("reversed", self._bodies(rev))
        self.journal.note("inject", f"{len(dups)} duplicates; {len(late)} late events of {len(late_orders)} ended "
                                    f"orders; {len(rev)} events of {len(rev_orders)} in-flight orders, newest first",
                          style="cyan",
                          duplicates=len(dups), late=len(late), reversed=len(rev))

    def poison(self) -> None:
        """One of each kind; none names an audited order, so none can make an order NEEDS_ATTENTION."""
        from choreo.messaging.admin import BrokerAdmin
        from config.catalog import make_order
        from models.envelope import OrderPlaced, make_envelope

        ns = self.settings.namespace
        spec = make_order("completed", self.rng)
        good = make_envelope("order.placed", f"chaos-poison-{uuid.uuid4().hex[:8]}",
                             OrderPlaced(order={"customer_id": spec.customer_id, "items": spec.items,
                                                "address": spec.address, "amount_cents": 100},
                                         card_token="tok_visa"), source="chaos").to_wire()
        good["payload"]["order"]["items"][0]["qty"] = 0
        cases = {
            # (routing key, exchange or None for the events exchange, body, headers)
            "not_json": ("inventory.reserved", None, b"{chaos: not json",
                         celery_message("inventory.reserved", [], str(uuid.uuid4()))[1]),
            "unknown_type": (f"{ns}.inventory", "", *celery_message("inventory.exploded", [good], str(uuid.uuid4()))),
            "schema_invalid": ("order.placed", None, *celery_message("order.placed", [good], str(uuid.uuid4()))),
            # Shapes that crashed Celery's own request handling before the protocol guard.
            "wrong_shape": ("order.placed", None, json.dumps([[good], {}]).encode(),
                            celery_message("order.placed", [], str(uuid.uuid4()))[1]),
            "no_id_header": ("order.placed", None, celery_message("order.placed", [good], str(uuid.uuid4()))[0],
                             {"task": "order.placed", "lang": "py"}),
            "oversized": ("order.placed", None, b"[" + b" " * (self.settings.max_message_bytes + 1) + b"]",
                          celery_message("order.placed", [], str(uuid.uuid4()))[1]),
        }
        with BrokerAdmin(self.settings) as admin:
            for kind, (rk, exchange, body, headers) in cases.items():
                admin.publish_raw(rk, body, headers, exchange=exchange)
                self.counts[f"poison:{kind}"] += 1
        self.journal.note("inject", f"poison: {', '.join(cases)}", style="cyan")


# --- publishing orders ---------------------------------------------------------------

class OrderFeed(threading.Thread):
    """Publishes the orders at a steady pace over `window` seconds, in chunks (partial results survive)."""

    def __init__(self, settings: Settings, scenarios: list[str], window: float, rng: random.Random) -> None:
        super().__init__(name="chaos-orders", daemon=True)
        self.settings = settings
        self.scenarios = scenarios
        self.window = window
        self.seeds = [rng.getrandbits(64) for _ in range(len(scenarios))]
        self.sent: list[tuple[str, str]] = []
        self.published = 0
        self.error: str | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        from choreo.cli import publish_orders

        n = len(self.scenarios)
        per_order = self.window / n
        chunk = max(1, -(-n // 20))
        t0 = time.monotonic()

        def paced():
            self.published += 1
            lag = t0 + self.published * per_order - time.monotonic()
            if lag > 0:
                self.stop_event.wait(lag)

        try:
            for i in range(0, n, chunk):
                if self.stop_event.is_set():
                    break
                # A fresh seed per chunk: publish_orders derives order ids from its seed.
                self.sent += publish_orders(self.settings, self.scenarios[i:i + chunk], self.seeds[i], on_sent=paced)
        except Exception as exc:  # reported as a run error with the count published so far
            self.error = f"publishing failed after {self.published} of {n} orders: {exc!r}"


# --- settling and figures ------------------------------------------------------------

def _unsent(settings: Settings) -> int:
    from sqlmodel import func

    from choreo.db import engine_for
    from models.tables import Outbox

    total = 0
    for d in DOMAINS:
        with Session(engine_for(settings, d)) as s:
            total += s.exec(select(func.count()).select_from(Outbox).where(Outbox.sent_at.is_(None))).one()
    return total


def _busy_queues(vhost: str) -> dict[str, int]:
    """Queues (not DLQs) holding messages, ready or unacknowledged (a passive declare sees only ready)."""
    out = rabbitmqctl("list_queues", "-p", vhost, "name", "messages", "--no-table-headers")
    busy = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and not parts[0].endswith((".dlq", ".unrouted")) and parts[1].isdigit() and int(parts[1]):
            busy[parts[0]] = int(parts[1])
    return busy


def settle(settings: Settings, vhost: str, order_ids: list[str], deadline: float, journal: Journal) -> dict:
    """Wait until every order is terminal, every outbox drained and every queue idle, twice in a row."""
    from choreo.queries import order_states

    states: dict = {}
    calm = 0
    last_report = 0.0
    while time.monotonic() < deadline:
        states = order_states(settings, order_ids)
        open_orders = [o for o in order_ids if states.get(o, ("MISSING",))[0] not in TERMINAL]
        unsent = _unsent(settings) if not open_orders else None
        busy = _busy_queues(vhost) if not open_orders and not unsent else None
        if not open_orders and not unsent and not busy:
            calm += 1
            if calm >= 2:
                return states
        else:
            calm = 0
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                journal.note("settling", f"{len(open_orders)} open orders, unsent {unsent}, busy queues {busy}",
                             style="dim")
        time.sleep(1.0)
    return states


def _metrics(settings: Settings) -> dict[str, dict[str, int]]:
    from choreo.bootstrap import redis_client
    from choreo.metrics import Metrics

    client = redis_client(settings)
    try:
        return Metrics(client, settings.redis_prefix).snapshot()
    finally:
        client.close()


def _total(*snapshots: dict, name: str) -> int:
    return sum(sum(s.get(name, {}).values()) for s in snapshots)


def _log_count(log_dir: Path, needle: str) -> int:
    """Lines saying `needle` in the workers' logs: survives the Redis restart that resets counters."""
    n = 0
    for path in log_dir.glob("worker-*.log"):
        with open(path, errors="replace") as f:
            n += sum(1 for line in f if needle in line)
    return n


_IDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|ord-[0-9a-f]+|chaos-poison-[0-9a-f]+")


def _reason(text: str, width: int = 120) -> str:
    """A reason with its ids blanked out, so equal causes group together."""
    text = _IDS.sub("…", text)
    return text if len(text) <= width else text[:width - 1] + "…"


def dead_letter_figures(settings: Settings) -> dict:
    """DLQ messages and dead_letters rows, grouped by domain and reason (ids stripped)."""
    from choreo.db import engine_for
    from choreo.messaging.admin import BrokerAdmin
    from models.tables import DeadLetter

    queued: Counter = Counter()
    with BrokerAdmin(settings) as admin:
        depth = {q["name"]: q["messages"] or 0 for q in admin.queue_stats()}
        for d in DOMAINS:
            for letter in admin.peek(d, depth.get(admin.topology.names.dlq(d), 0)):
                queued[f"{d}: {_reason(letter.reason)}"] += 1
    recorded: Counter = Counter()
    for d in DOMAINS:
        with Session(engine_for(settings, d)) as s:
            for type_, reason in s.exec(select(DeadLetter.type, DeadLetter.reason)):
                recorded[f"{d} {type_}: {_reason(reason)}"] += 1
    return {"dlq_messages": sum(queued.values()), "dlq_by_reason": dict(queued.most_common()),
            "dead_letter_rows": sum(recorded.values()), "dead_letter_rows_by_reason": dict(recorded.most_common())}


# --- the run -------------------------------------------------------------------------

def run_chaos(cfg: ChaosConfig, console: Console | None = None) -> ChaosReport:
    from choreo.stack import Stack

    console = console or Console()
    seed = cfg.seed if cfg.seed is not None else random.SystemRandom().getrandbits(32)
    journal = Journal(console)
    sandbox = Sandbox(cfg)
    report = ChaosReport(config={k: str(v) if isinstance(v, Path) else v for k, v in cfg.__dict__.items()},
                         seed=seed, workdir=str(sandbox.workdir))
    if cfg.broker_restart == "node":
        console.print("[bold red]warning:[/bold red] --broker-restart node stops and starts the whole RabbitMQ "
                      "node: every vhost and every client on this machine is disconnected")
    console.print(f"chaos run {sandbox.run_id}: {cfg.orders} orders, {cfg.duration:.0f}s of faults, a kill every "
                  f"{cfg.kill_every}s, seed {seed}; vhost {sandbox.vhost}, redis :{sandbox.redis_port}, "
                  f"folder {sandbox.workdir}")
    stack = Stack(sandbox.settings, env=sandbox.env)
    faults = None
    try:
        sandbox.open()
        faults = Faults(sandbox, stack, random.Random(seed), journal, cfg.broker_restart)
        _run(cfg, seed, sandbox, stack, faults, journal, report)
    except ENVIRONMENT_FAILURES as exc:
        report.errors.append(f"harness: {exc!r}")
        journal.note("error", repr(exc), style="red")
    finally:
        _stop_all(stack, faults, journal)
        report.actions = journal.actions
        keep = cfg.keep or not report.passed
        report.errors += sandbox.close(keep)
    _print_summary(console, report, keep, sandbox.workdir)
    return report


def _run(cfg: ChaosConfig, seed: int, sb: Sandbox, stack, faults: Faults, journal: Journal,
         report: ChaosReport) -> None:
    from choreo.messaging.topology import Topology
    from choreo.queries import prepare

    settings = sb.settings
    prepare(settings)
    Topology(settings).declare()
    for name in ["users", *WORKERS]:
        faults.start(name)
    _wait_consuming(settings, stack, faults.start, deadline=time.monotonic() + 120)
    journal.note("stack", "users + 5 workers consuming", style="green")

    rng = random.Random(seed ^ 0x5EED)
    feed, injector, t0 = _inject(cfg, seed, settings, faults, journal, rng)
    injection_end = time.monotonic()
    journal.note("faults off", f"after {injection_end - t0:.0f}s; {feed.published} orders published")
    if feed.error:
        report.errors.append(feed.error)
    if len(feed.sent) < cfg.orders:
        report.errors.append(f"only {len(feed.sent)} of {cfg.orders} orders were published")
    report.injected = dict(injector.counts)

    # Settle: every worker back, then wait for terminal orders, drained outboxes, idle queues.
    for name in list(faults.restart_due):
        faults.restart_due.pop(name)
        faults.start(name, "settle")
    _wait_consuming(settings, stack, faults.start, deadline=time.monotonic() + 120)
    ids = [o for o, _ in feed.sent]
    states = settle(settings, sb.vhost, ids, time.monotonic() + cfg.settle_timeout, journal)
    settled_at = time.monotonic()
    report.unsettled = [o for o in ids if states.get(o, ("MISSING",))[0] not in TERMINAL]
    journal.note("settled" if not report.unsettled else "NOT settled",
                 f"{len(ids) - len(report.unsettled)}/{len(ids)} terminal after {settled_at - injection_end:.1f}s",
                 style="green" if not report.unsettled else "red")
    _conclude(settings, feed.sent, states, faults, stack, report)
    report.figures.update(injection_seconds=round(injection_end - t0, 1),
                          settle_seconds=round(settled_at - injection_end, 1))


def _inject(cfg: ChaosConfig, seed: int, settings: Settings, faults: Faults, journal: Journal,
            rng: random.Random) -> tuple[OrderFeed, Injector, float]:
    """The fault phase: orders flow over the first half of `duration` while faults land on a schedule.

    Ends at `duration`, or earlier once every order is published and terminal and every
    scheduled one-off fault has happened.
    """
    from config.catalog import DEFAULT_MIX, draw_scenarios

    window = cfg.duration / 2
    feed = OrderFeed(settings, draw_scenarios(cfg.orders, dict(DEFAULT_MIX), seed), window, rng)
    injector = Injector(settings, rng, journal, per_burst=max(5, cfg.orders // 20))
    t0 = time.monotonic()
    one_offs = {
        "poison": t0 + rng.uniform(0.15, 0.3) * window,
        "broker": t0 + rng.uniform(0.3, 0.45) * window if cfg.broker_restart != "none" else None,
        "redis": t0 + rng.uniform(0.55, 0.75) * window if cfg.redis_restart else None,
    }
    bursts = [t0 + window * f for f in (0.2, 0.4, 0.6, 0.8, 1.0)]
    next_kill, next_look = t0 + cfg.kill_every, 0.0
    feed.start()
    journal.note("orders", f"publishing {cfg.orders} orders over {window:.0f}s (mix {DEFAULT_MIX})")
    try:
        while time.monotonic() - t0 < cfg.duration:
            now = time.monotonic()
            if not feed.is_alive() and not any(one_offs.values()) and not bursts and now >= next_look:
                next_look = now + 1.0
                if _all_terminal(settings, feed.sent):
                    break
            if now >= next_kill:
                next_kill += cfg.kill_every
                faults.kill_random_worker()
            for what, when in one_offs.items():
                if when is not None and now >= when:
                    one_offs[what] = None
                    if what == "poison":
                        injector.poison()
                    elif what == "broker":
                        faults.restart_broker()
                    else:
                        faults.restart_redis(lambda: _metrics(settings))
            if bursts and now >= bursts[0]:
                bursts.pop(0)
                injector.burst()
            faults.tend()
            time.sleep(0.1)
        # Publishing is paced to end by half-time; a slow broker may stretch it: let it finish.
        feed.join(timeout=cfg.settle_timeout)
    finally:
        feed.stop_event.set()
        feed.join(timeout=30)
        injector.close()
    return feed, injector, t0


def _conclude(settings: Settings, sent: list[tuple[str, str]], states: dict, faults: Faults, stack,
              report: ChaosReport) -> None:
    """Audit, expected outcomes, and the run's figures."""
    from choreo.audit import run_audit
    from choreo.cli import expected_by_scenario, outcome_table

    report.checks = run_audit(settings)
    report.audit = [c.as_dict() for c in report.checks]
    expected = expected_by_scenario()
    table, _ = outcome_table(sent, states, expected)
    report.missing = [o for o, _ in sent if o not in states]
    report.mismatches = sum(1 for o, scenario in sent
                            if states.get(o, ("MISSING",))[0] in TERMINAL and states[o] != expected[scenario])
    faults.journal.console.print(table)
    metrics, before = _metrics(settings), faults.metrics_before_redis_restart
    report.figures = {
        "orders_placed": len(sent),
        "terminal": dict(Counter(f"{st} ({r})" if r else st for st, r in states.values() if st in TERMINAL)),
        "unsettled": len(report.unsettled),
        "stuck_by_state": dict(Counter(states.get(o, ("MISSING",))[0] for o in report.unsettled)),
        "mismatches": report.mismatches,
        "missing": len(report.missing),
        "violations": report.violations,
        "kills": {k: faults.counts[k] for k in ("kill_worker", "kill_child")},
        "unexpected_exits": faults.counts["unexpected_exit"],
        "broker_restarts": faults.counts["broker_restart"],
        "redis_restarts": faults.counts["redis_restart"],
        # Counters from before the Redis restart plus after it (the restart wipes them).
        "duplicates_absorbed": _total(before, metrics, name="duplicates"),
        "duplicates_absorbed_logged": _log_count(stack.log_dir, "duplicate absorbed"),
        "retries": _total(before, metrics, name="retries"),
        "relayed_outbox_rows": _total(before, metrics, name="relayed"),
        **dead_letter_figures(settings),
    }


def _all_terminal(settings: Settings, sent: list[tuple[str, str]]) -> bool:
    from choreo.queries import order_states

    states = order_states(settings, [o for o, _ in sent])
    return len(states) == len(sent) and all(st in TERMINAL for st, _ in states.values())


def _wait_consuming(settings: Settings, stack, start, deadline: float) -> None:
    """Until every domain queue has a consumer; (re)starts with `start` what is not running."""
    from choreo.messaging.admin import BrokerAdmin
    from choreo.messaging.topology import Names

    names = Names(settings.namespace)
    while True:
        with BrokerAdmin(settings) as admin:
            consumers = {q["name"]: q["consumers"] for q in admin.queue_stats()}
        idle = [d for d in DOMAINS if not consumers.get(names.queue(d))]
        dead = [n for n in ["users", *WORKERS] if stack.pid(n) is None]
        if not idle and not dead:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"stack not consuming: no consumer on {idle}, not running {dead}; see {stack.log_dir}")
        for name in dead:
            start(name)
        time.sleep(0.5)


def _stop_all(stack, faults: Faults | None, journal: Journal) -> None:
    """Stop every process of the run (in parallel: each may take a few seconds to shut down warm)."""
    from choreo.stack import _cmdline, alive

    names = ["users", *WORKERS]
    threads = [threading.Thread(target=stack.stop, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # Anything we started that outlived its stop (a pool child orphaned mid-kill, say): by pid,
    # and only if that pid is still a choreo process (never a recycled pid of someone else's).
    for pid in sorted(faults.started_pids if faults else ()):
        if alive(pid) and "choreo.cli" in _cmdline(pid) and _kill(pid):
            journal.note("cleanup", f"killed leftover pid {pid}", style="yellow")


def _print_summary(console: Console, report: ChaosReport, kept: bool, workdir: Path) -> None:
    from choreo.audit import print_report

    f = report.figures
    table = Table(title="chaos figures")
    table.add_column("figure")
    table.add_column("value", overflow="fold")
    rows = [
        ("orders placed", f.get("orders_placed")),
        ("terminal", ", ".join(f"{k}: {v}" for k, v in sorted(f.get("terminal", {}).items()))),
        ("unsettled", f.get("unsettled")),
        ("wrong outcome (settled orders) / lost orders", f"{report.mismatches} / {len(report.missing)}"),
        ("violations", report.violations),
        ("kills (worker / pool child)", "{kill_worker} / {kill_child}".format(**f["kills"]) if "kills" in f else None),
        ("processes that died on their own", f.get("unexpected_exits")),
        ("broker restarts / redis restarts", f"{f.get('broker_restarts')} / {f.get('redis_restarts')}"),
        ("injected", ", ".join(f"{k}: {v}" for k, v in sorted(report.injected.items()))),
        ("duplicates absorbed (counters / logs)", f"{f.get('duplicates_absorbed')} / "
                                                  f"{f.get('duplicates_absorbed_logged')}"),
        ("retries", f.get("retries")),
        ("relayed outbox rows", f.get("relayed_outbox_rows")),
        ("dead-lettered (DLQ messages)", "\n".join(f"{n}× {r}" for r, n in f.get("dlq_by_reason", {}).items())
         or f.get("dlq_messages")),
        ("dead_letters rows", "\n".join(f"{n}× {r}" for r, n in f.get("dead_letter_rows_by_reason", {}).items())
         or f.get("dead_letter_rows")),
        ("fault injection / time to settle", f"{f.get('injection_seconds')}s / {f.get('settle_seconds')}s"),
    ]
    for name, value in rows:
        table.add_row(name, "" if value is None else str(value))
    console.print(table)
    if report.checks:
        print_report(report.checks, console)
    for e in report.errors:
        console.print(f"[red]error:[/red] {e}")
    if report.unsettled:
        console.print(f"[red]{len(report.unsettled)} order(s) never settled[/red], e.g. {report.unsettled[:5]}")
    verdict = "[green]PASSED[/green]" if report.passed else "[red]FAILED[/red]"
    where = f"; sandbox kept in {workdir}" if kept else ""
    console.print(f"chaos {verdict}: {report.violations} violation(s), seed {report.seed}{where}")
