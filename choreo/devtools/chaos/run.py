"""One chaos run: the sandbox, the stack, the fault phase, settling, the audit and the report."""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika.exceptions
import redis
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from choreo.app.bootstrap import prepare
from choreo.app.queries import order_states
from choreo.devtools.chaos.faults import Faults, kill_pid, worker_view
from choreo.devtools.chaos.inject import Injector, OrderFeed
from choreo.devtools.chaos.report import ChaosConfig, ChaosReport, Journal, print_summary
from choreo.devtools.chaos.settle import (
    dead_letter_figures,
    log_count,
    metrics_snapshot,
    settle,
    total,
)
from choreo.devtools.cluster import Cluster, ClusterError
from choreo.devtools.sandbox import Sandbox, private_cluster
from choreo.ops.audit import Snapshot, late_answers, run_audit
from choreo.ops.render import outcome_table
from choreo.ops.scenarios import DEFAULT_MIX, draw_scenarios
from choreo.ops.stack import Stack, is_ours, process_names, wait_consuming
from choreo.ops.workload import expected_by_scenario, outcomes, terminal_count
from config.settings import Settings
from consumers.order.rules import TERMINAL, WAITING_ON, timeout_reason
from consumers.registry import topology

TIMEOUT = timeout_reason("")  # the reason's prefix of an order a deadline cancelled
# The machine's services failing under the harness: a failed run with the error, not a traceback.
ENVIRONMENT_FAILURES = (
    RuntimeError,
    OSError,
    subprocess.SubprocessError,
    redis.RedisError,
    pika.exceptions.AMQPError,
    SQLAlchemyError,
)


def run_chaos(cfg: ChaosConfig, console: Console | None = None) -> ChaosReport:
    console = console or Console()
    seed = cfg.seed if cfg.seed is not None else random.SystemRandom().getrandbits(32)
    journal = Journal(console)
    cluster = _cluster(cfg)
    own_cluster = cluster is not None and cfg.cluster_dir is None
    if cluster:
        console.print(
            f"cluster: {', '.join(cluster.name(i) for i in cluster.nodes)} in {cluster.base_dir}"
            + ("" if own_cluster else " (given: left running)")
        )
    try:
        sandbox = Sandbox(
            "chaos",
            own_redis=True,
            workdir=cfg.workdir,
            database_server=cfg.database_server,
            workers_per_domain=cfg.workers_per_domain,
            **deadline_settings(cfg),
            cluster_dir=cluster.base_dir if cluster else None,
            redis_tls=bool(cluster and cfg.tls),
        )
    except BaseException:
        if cluster and own_cluster:
            cluster.down(purge=True)
        raise
    report = ChaosReport(
        config={k: str(v) if isinstance(v, Path) else v for k, v in cfg.__dict__.items()},
        seed=seed,
        workdir=str(sandbox.workdir),
    )
    if cfg.broker_restart == "node" and not cluster:
        console.print(
            "[bold red]warning:[/bold red] --broker-restart node stops and starts the whole "
            "RabbitMQ node: every vhost and every client on this machine is disconnected"
        )
    console.print(
        f"chaos run {sandbox.run_id}: {cfg.orders} orders, {cfg.duration:.0f}s of faults, "
        f"a kill every {cfg.kill_every}s, seed {seed}; vhost {sandbox.vhost}, "
        f"redis :{sandbox.redis_port}, folder {sandbox.workdir}"
    )
    stack = Stack(sandbox.settings, env=sandbox.env)
    faults = None
    try:
        sandbox.open()
        faults = Faults(
            sandbox,
            stack,
            random.Random(seed),
            journal,
            "none" if cluster else cfg.broker_restart,
            cluster,
        )
        _run(cfg, seed, sandbox, stack, faults, journal, report)
    except ENVIRONMENT_FAILURES as exc:
        report.errors.append(f"harness: {exc!r}")
        journal.note("error", repr(exc), style="red")
    finally:
        keep = cfg.keep or not report.passed
        try:
            _stop_all(stack, faults, journal)
            report.actions = journal.actions
            if cluster and not own_cluster:  # its nodes back before the vhost goes
                report.errors += _hand_back(cluster, faults)
            report.errors += sandbox.close(keep)
        finally:
            if cluster and own_cluster:
                cluster.down(purge=not keep)  # its nodes by pid; their data stays with a kept run
    print_summary(console, report, keep, sandbox.workdir)
    return report


def _cluster(cfg: ChaosConfig) -> Cluster | None:
    """The run's cluster: none without `cfg.cluster`; the running one in `cfg.cluster_dir`;
    else a private one of its own, started here."""
    if not cfg.cluster:
        if cfg.cluster_dir is not None:
            raise ValueError("cluster_dir is for a cluster run (cluster=True)")
        return None
    if cfg.cluster_dir is None:
        return private_cluster("chaos", cfg.workdir, tls=cfg.tls)
    cluster = Cluster.open(cfg.cluster_dir)
    if cluster.tls != cfg.tls:
        raise ValueError(
            f"the cluster in {cluster.base_dir} runs {'with' if cluster.tls else 'without'} TLS; "
            f"the run asked for tls={cfg.tls}"
        )
    if down := [cluster.name(i) for i in cluster.nodes if not cluster.app_running(i)]:
        raise ClusterError(
            f"not running in {cluster.base_dir}: {', '.join(down)} "
            f"(choreo cluster up --dir {cluster.base_dir})"
        )
    return cluster


def _hand_back(cluster: Cluster, faults: Faults | None) -> list[str]:
    """A cluster the run was given, as it was found: every node fault's job over and every node
    running its app again (a run that failed half-way may leave one down); the errors."""
    for thread in faults.node_jobs if faults else ():
        thread.join(180)
    if all(cluster.app_running(i) for i in cluster.nodes):
        return []
    try:
        cluster.up()
    except (ClusterError, subprocess.SubprocessError) as exc:
        return [f"the given cluster not running again: {exc}"]
    return []


def deadline_settings(cfg: ChaosConfig) -> dict[str, Any]:
    """The run's deadlines: each step's `cfg.deadline`, the saga's ten times that; timers looked
    for twice a second."""
    steps = {f"deadline_{step}": cfg.deadline for step in set(WAITING_ON.values())}
    return {
        **steps,
        "deadline_saga": cfg.deadline * 10,
        "timer_interval": 0.5,
        "timer_refire": max(5.0, cfg.deadline / 2),
    }


def _run(
    cfg: ChaosConfig,
    seed: int,
    sb: Sandbox,
    stack,
    faults: Faults,
    journal: Journal,
    report: ChaosReport,
) -> None:
    settings = sb.settings
    prepare(settings)
    topology(settings).declare()
    processes = ["users", *faults.workers]
    for name in processes:
        faults.start(name)
    wait_consuming(settings, stack, processes, 120, start=faults.start)
    journal.note("stack", f"users + {len(faults.workers)} workers consuming", style="green")

    rng = random.Random(seed ^ 0x5EED)
    feed, injector, progress, t0 = _inject(cfg, seed, settings, faults, journal, rng)
    injection_end = time.monotonic()
    journal.note(
        "faults off", f"after {injection_end - t0:.0f}s; {feed.published} orders published"
    )
    if feed.error:
        report.errors.append(feed.error)
    if feed.retries:
        report.figures["order_feed_retries"] = feed.retries
        journal.note(
            "feed", f"{len(feed.retries)} chunk(s) of orders published again: {feed.retries}"
        )
    if len(feed.sent) < cfg.orders:
        report.errors.append(f"only {len(feed.sent)} of {cfg.orders} orders were published")
    report.injected = dict(injector.counts)
    if injector.counts["forged:accepted_by_broker"] or injector.counts["forged:failed"]:
        report.errors.append(
            "a forged payment.completed sent with the operator's credentials was not refused "
            "by the broker's topic permissions"
        )

    # Settle: every node and worker back, then wait for terminal orders, drained outboxes, idle
    # queues.
    if faults.cluster:
        report.errors += faults.settle_nodes()
    faults.end_outage()
    for name in list(faults.restart_due):
        faults.restart_due.pop(name)
        faults.start(name, "settle")
    wait_consuming(settings, stack, processes, 120, start=faults.start)
    ids = [o for o, _ in feed.sent]
    states = settle(settings, sb.vhost, ids, time.monotonic() + cfg.settle_timeout, journal)
    settled_at = time.monotonic()
    report.unsettled = [o for o in ids if states.get(o, ("MISSING",))[0] not in TERMINAL]
    journal.note(
        "settled" if not report.unsettled else "NOT settled",
        f"{len(ids) - len(report.unsettled)}/{len(ids)} terminal "
        f"after {settled_at - injection_end:.1f}s",
        style="green" if not report.unsettled else "red",
    )
    _conclude(settings, feed.sent, states, faults, stack, report)
    report.figures.update(
        injection_seconds=round(injection_end - t0, 1),
        settle_seconds=round(settled_at - injection_end, 1),
    )
    if faults.cluster:
        report.figures.update(_cluster_figures(settings, faults, progress))


@dataclass
class _Schedule:
    """When the fault phase's faults land (time.monotonic() instants)."""

    one_offs: dict[str, float | None]  # None once it happened
    bursts: list[float]
    next_kill: float
    next_look: float = 0.0  # when to look again whether every order is terminal

    @classmethod
    def draw(
        cls, cfg: ChaosConfig, faults: Faults, rng: random.Random, t0: float, window: float
    ) -> _Schedule:
        one_offs = {
            "poison": t0 + rng.uniform(0.15, 0.3) * window,
            "broker": (
                t0 + rng.uniform(0.3, 0.45) * window if faults.broker_mode != "none" else None
            ),
            "redis": t0 + rng.uniform(0.55, 0.75) * window if cfg.redis_restart else None,
            # A cluster: the busiest queue's leader node dies while orders flow; later another
            # node's app stops.
            "node_kill": t0 + rng.uniform(0.3, 0.45) * window if faults.cluster else None,
            "stop_app": t0 + rng.uniform(0.75, 0.9) * window if faults.cluster else None,
            # One domain away longer than its deadline while orders flow (it comes back on its
            # own: Faults.tend).
            # A cluster run has node faults instead (its figures follow each worker by pid).
            "outage": (
                t0 + rng.uniform(0.25, 0.4) * window if cfg.outage and not faults.cluster else None
            ),
        }
        bursts = [t0 + window * f for f in (0.2, 0.4, 0.6, 0.8, 1.0)]
        return cls(one_offs, bursts, next_kill=t0 + cfg.kill_every)

    def all_fired(self) -> bool:
        return not any(self.one_offs.values()) and not self.bursts

    def injecting(self, now: float, t0: float, cfg: ChaosConfig) -> bool:
        """Whether the fault phase goes on: until `cfg.duration`, and past it (by at most
        `cfg.settle_timeout`) only while a one-off fault waits its turn. A cluster's stop_app
        waits until a killed node runs again, which on a busy machine may be after the duration:
        the run must not end without it."""
        if now - t0 < cfg.duration:
            return True
        return any(self.one_offs.values()) and now - t0 < cfg.duration + cfg.settle_timeout


def _inject(
    cfg: ChaosConfig,
    seed: int,
    settings: Settings,
    faults: Faults,
    journal: Journal,
    rng: random.Random,
) -> tuple[OrderFeed, Injector, Progress, float]:
    """The fault phase: orders flow over the first half of `duration` while faults land on a
    schedule.

    Ends at `duration`, or earlier once every order is published and terminal and every
    scheduled one-off fault has happened.
    """
    window = cfg.duration / 2
    feed = OrderFeed(settings, draw_scenarios(cfg.orders, dict(DEFAULT_MIX), seed), window, rng)
    injector = Injector(settings, rng, journal, per_burst=max(5, cfg.orders // 20))
    t0 = time.monotonic()
    schedule = _Schedule.draw(cfg, faults, rng, t0, window)
    feed.start()
    progress = Progress(settings, journal, feed)
    if faults.cluster:  # how long sagas stop finishing after a node fault
        progress.start()
    journal.note("orders", f"publishing {cfg.orders} orders over {window:.0f}s (mix {DEFAULT_MIX})")
    try:
        while schedule.injecting(now := time.monotonic(), t0, cfg):
            if _finished_early(now, settings, feed, schedule):
                break
            _fire_due(now, cfg, settings, faults, injector, rng, schedule)
            time.sleep(0.1)
        # Publishing is paced to end by half-time; a slow broker may stretch it: let it finish.
        feed.join(timeout=cfg.settle_timeout)
    finally:
        feed.stop_event.set()
        feed.join(timeout=30)
        if progress.is_alive():
            progress.stop()
        injector.close()
    return feed, injector, progress, t0


def _finished_early(now: float, settings: Settings, feed: OrderFeed, schedule: _Schedule) -> bool:
    """Every order published and terminal, every scheduled fault fired (looked at once a second)."""
    if feed.is_alive() or not schedule.all_fired() or now < schedule.next_look:
        return False
    schedule.next_look = now + 1.0
    return terminal_count(order_states(settings, [o for o, _ in feed.sent])) == len(feed.sent)


def _fire_due(
    now: float,
    cfg: ChaosConfig,
    settings: Settings,
    faults: Faults,
    injector: Injector,
    rng: random.Random,
    schedule: _Schedule,
) -> None:
    """What the schedule has due at `now` (a worker kill, one-off faults, a burst of bad
    messages), then the faults' upkeep."""
    if now >= schedule.next_kill:
        schedule.next_kill += cfg.kill_every
        faults.kill_random_worker()
    for what, when in schedule.one_offs.items():
        if when is not None and now >= when:
            schedule.one_offs[what] = fire_one_off(what, now, cfg, settings, faults, injector, rng)
    if schedule.bursts and now >= schedule.bursts[0]:
        schedule.bursts.pop(0)
        injector.burst()
    faults.tend()
    if faults.cluster:
        faults.note_leaders_after()


def fire_one_off(
    what: str,
    now: float,
    cfg: ChaosConfig,
    settings: Settings,
    faults: Faults,
    injector: Injector,
    rng: random.Random,
) -> float | None:
    """Inject the one-off fault `what`; returns when to try it again, or None once it happened."""
    if what == "poison":
        injector.poison()
    elif what == "broker":
        faults.restart_broker()
    elif what == "node_kill":
        faults.kill_leader_node(cfg.node_down_seconds)
    elif what == "stop_app":
        if not faults.bounce_app(rng.uniform(1.0, 3.0)):
            return now + 1.0  # only once every node runs again
    elif what == "redis":
        faults.restart_redis(lambda: metrics_snapshot(settings))
    elif what == "outage":
        faults.start_outage(
            cfg.outage_domain or rng.choice(sorted(set(WAITING_ON.values()))), cfg.outage
        )
    else:
        raise ValueError(f"unknown one-off fault {what!r}")
    return None


class Progress(threading.Thread):
    """Sagas finishing over time: (journal seconds, terminal orders, orders sent) every `every` s,
    to tell how long sagas stopped finishing after a fault."""

    def __init__(
        self, settings: Settings, journal: Journal, feed: OrderFeed, every: float = 0.25
    ) -> None:
        super().__init__(name="chaos-progress", daemon=True)
        self.settings, self.journal, self.feed, self.every = settings, journal, feed, every
        self.samples: list[tuple[float, int, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        from sqlmodel import Session, col, func, select

        from choreo.infra.db import engine_for
        from consumers.order.tables import OrderView

        q = (
            select(func.count())
            .select_from(OrderView)
            .where(col(OrderView.state).in_(list(TERMINAL)))
        )
        while not self.halt.wait(self.every):
            sent = len(self.feed.sent)
            try:
                with Session(engine_for(self.settings, "order")) as s:
                    self.samples.append((self.journal.now(), s.execute(q).scalar_one(), sent))
            except SQLAlchemyError:
                pass  # a gap in the samples, not a failure of the run

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)

    def longest_stall(self) -> float:
        """The longest time no saga finished while some were open."""
        longest = since = 0.0  # since: set by the first sample (its done > -1)
        previous = -1
        for when, done, sent in self.samples:
            if done > previous or done >= sent:
                since = when  # progress, or nothing open: no stall
            previous = done
            longest = max(longest, when - since)
        return round(longest, 2)

    def pause_after(self, t: float) -> float | None:
        """Seconds from `t` until the next saga finished (None: none finished after it)."""
        at_t = next((done for when, done, _ in reversed(self.samples) if when <= t), 0)
        later = next((when for when, done, _ in self.samples if when > t and done > at_t), None)
        return None if later is None else round(later - t, 2)


def _cluster_figures(settings: Settings, faults: Faults, progress: Progress) -> dict:
    """Each node fault: which queue leaders moved, how long sagas stopped finishing after it, and
    where the workers that consumed from a killed node are now; who did the work."""
    faults.note_leaders_after(force=True)
    now = worker_view(settings, faults.stack, faults.workers)
    node_faults = []
    for x in faults.node_faults:
        moved = {
            q: f"{a}->{x['leaders_after'].get(q)}"
            for q, a in x["leaders_before"].items()
            if a != x["leaders_after"].get(q)
        }
        # A worker that was on the killed node, not killed itself since (same pid): where it
        # consumes now and what it processed after the kill.
        failed_over = {
            name: {
                "was_on": v["broker_node"],
                "reconnected_to": v.get("reconnected_to"),
                "reconnected_after_s": v.get("reconnected_after_s"),
                "processed_after": now[name]["handled"] - v["handled"],
            }
            for name, v in x.get("workers_on_node", {}).items()
            if name in now and now[name]["pid"] == v["pid"]
        }
        node_faults.append(
            {
                **{k: v for k, v in x.items() if k != "workers_on_node"},
                "leaders_moved": moved,
                "pause_seconds": progress.pause_after(x["t"]),
                "workers_failed_over": failed_over,
            }
        )
    samples = progress.samples
    return {
        "node_faults": node_faults,
        "node_kills": faults.counts["node_kill"],
        # What pause_seconds is read from: (first, last) sample (journal s, terminal, sent) and how
        # many.
        "progress_samples": {
            "count": len(samples),
            "first": samples[0] if samples else None,
            "last": samples[-1] if samples else None,
        },
        "node_stop_apps": faults.counts["node_stop_app"],
        # over the run: before each kill of it (a kill resets its counters) and since its last start
        "handled_by_worker": {
            name: faults.handled_before_kills[name] + now.get(name, {}).get("handled", 0)
            for name in faults.workers
        },
        "longest_stall_seconds": progress.longest_stall(),
    }


def _conclude(
    settings: Settings,
    sent: list[tuple[str, str]],
    states: dict,
    faults: Faults,
    stack,
    report: ChaosReport,
) -> None:
    """Audit, expected outcomes, and the run's figures."""
    report.checks = run_audit(settings)
    report.audit = [c.as_dict() for c in report.checks]
    expected = expected_by_scenario()
    report.missing = [o for o, _ in sent if o not in states]
    # An order a deadline cancelled ended as it had to whatever its data (the audit proves it
    # undone); every other one must end where its data asked.
    report.mismatches = sum(
        1
        for o, scenario in sent
        if states.get(o, ("MISSING",))[0] in TERMINAL
        and states[o] != expected[scenario]
        and not (states[o][1] or "").startswith(TIMEOUT)
    )
    faults.journal.console.print(outcome_table(outcomes(sent, states)))
    metrics, before = metrics_snapshot(settings), faults.metrics_before_redis_restart
    report.figures = {
        "orders_placed": len(sent),
        "terminal": dict(
            Counter(f"{st} ({r})" if r else st for st, r in states.values() if st in TERMINAL)
        ),
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
        "duplicates_absorbed": total(before, metrics, name="duplicates"),
        "duplicates_absorbed_logged": log_count(stack.log_dir, "duplicate absorbed"),
        "retries": total(before, metrics, name="retries"),
        "relayed_outbox_rows": total(before, metrics, name="relayed"),
        **dead_letter_figures(settings),
        **_deadline_figures(settings, states, faults),
    }


def _deadline_figures(settings: Settings, states: dict, faults: Faults) -> dict:
    """The outage, the sagas its deadlines expired (by step) and the answers that came after
    their saga expired (each undone: the audit's money, stock and shipment checks say so)."""
    expired = Counter(
        r.removeprefix(TIMEOUT) for _, r in states.values() if (r or "").startswith(TIMEOUT)
    )
    outage = next((a for a in faults.journal.actions if a["kind"] == "outage"), None)
    return {
        "outage": {k: outage[k] for k in ("domain", "seconds", "t")} if outage else None,
        "sagas_expired": dict(expired),
        "late_answers_compensated": sum(map(late_answers, Snapshot(settings).timelines.values())),
    }


def _stop_all(stack, faults: Faults | None, journal: Journal) -> None:
    """Stop every process of the run (in parallel: each may take a few seconds to shut down
    warm)."""
    names = [n for n in process_names(stack.settings) if n != "flower"]
    threads = [threading.Thread(target=stack.stop, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # Anything we started that outlived its stop (a pool child orphaned mid-kill, say): by pid,
    # and only if that pid is still a choreo process (never a recycled pid of someone else's).
    for pid in sorted(faults.started_pids if faults else ()):
        if is_ours(pid) and kill_pid(pid):
            journal.note("cleanup", f"killed leftover pid {pid}", style="yellow")
