"""A worker outlives every fault of the broker node it consumes from: on a private three-node
cluster (choreo.devtools.cluster), one worker per domain, while orders flow, the node that holds the
most workers not yet hit is stopped (stop_app, then start_app) and, in a second pass, killed -9
(then started again), until every worker has been on a node hit by each fault (bounded). No
worker may exit (Celery once died of its own remote-control queue: RESOURCE_LOCKED on the
exclusive pidbox queue the lost connection still held, celery#1963); each consumes again from
another node and processes orders placed after its fault; every order ends where its data asked
and the audit is green; Flower's user still reaches every worker by broadcast (ping).

The faults, the watch of where each worker reconnects and the worker views are the chaos
harness's (choreo.devtools.chaos.faults). The cluster is the session's, shared with
test_chaos_cluster (conftest.py): this module's vhost and broker users are its own, and after each
fault it waits until every node runs again with every quorum replica online."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import threading
import time
from datetime import datetime

import pytest

from choreo.devtools import cluster as rabbit_cluster

# Bounded: about two minutes on two cores (each fault 10-25 s; half a minute more if this module
# starts the session's cluster); the timeout is the hard stop.
pytestmark = [
    pytest.mark.chaos,
    pytest.mark.timeout(420),
    pytest.mark.skipif(
        not rabbit_cluster.available(), reason="rabbitmq-server and epmd are not installed"
    ),
]

FAULTS = ("stop_app", "kill -9")
MAX_FAULTS_PER_KIND = 3  # 5 workers on 3 nodes: the busiest node holds at least 2
ORDERS_PER_FAULT = 24  # published over FEED_SECONDS from the moment of each fault
FEED_SECONDS = 6.0
NODE_DOWN_SECONDS = 3.0  # a killed node stays down this long (its workers are elsewhere by then)
STOPPED_SECONDS = 1.0  # a stopped app stays down this long once its workers moved
DEATH = re.compile(r"Unrecoverable error.*")  # Celery's last words before a worker exits
CLASH = "remote control not available"  # tasks.remote: a refused pidbox declare, absorbed


class Run:
    """What the run did and saw, for the tests below."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.pids_before: dict[str, int | None] = {}
        self.pids_after: dict[str, int | None] = {}
        self.faults: list[dict] = []
        self.sent: list[tuple[str, str]] = []
        self.ordered = 0
        self.states: dict = {}
        self.checks: list = []
        self.consumers: dict[str, int | None] = {}
        self.handled_after: dict[str, int] = {}
        self.ping: dict = {}
        self.unexpected_exits = 0
        self.errors: list[str] = []
        self.feed_retries: list[str] = []  # chunks of orders the client published again
        self.log_lines: list[str] = []
        # each refused pidbox declare: the worker, when, after which fault
        self.clashes: list[dict] = []
        self.workers: list[str] = []
        self.node_names: dict[str, str] = {}

    def why(self) -> str:
        faults = [{k: v for k, v in x.items() if k != "leaders_before"} for x in self.faults]
        return (
            f"errors {self.errors}; feed retries {self.feed_retries}; "
            f"worker log lines {self.log_lines[:6]}; faults {faults}; "
            f"timings {self.timings}"
        )

    def read_logs(self, log_dir) -> None:
        """Deaths (Celery's unrecoverable errors) and absorbed pidbox clashes, from the workers'
        JSON logs."""
        for path in sorted(log_dir.glob("worker-*.log")):
            with open(path, errors="replace") as log:
                for line in log:
                    if m := DEATH.search(line):
                        self.log_lines.append(f"{path.stem}: {m.group(0)[:240]}")
                    elif CLASH in line:
                        # workers log JSON lines (log_json); a plain line is not attributed
                        ts = json.loads(line).get("ts") if line.startswith("{") else None
                        at = datetime.fromisoformat(ts).timestamp() if ts else 0.0
                        after = max(
                            (x for x in self.faults if x["wall"] <= at),
                            key=lambda x: x["wall"],
                            default=None,
                        )
                        self.clashes.append(
                            {
                                "worker": path.stem,
                                "after": after and f"{after['fault']} node {after['node']}",
                                "seconds_after_fault": after and round(at - after["wall"], 2),
                            }
                        )


def _all_members_online(cluster, vhost: str) -> bool:
    """Every quorum queue has a replica online on every node again (after a node came back)."""
    try:
        rows = json.loads(
            cluster.ctl(
                "list_queues",
                "-p",
                vhost,
                "name",
                "type",
                "online",
                "--formatter",
                "json",
                timeout=15,
            )
            or "[]"
        )
    except (rabbit_cluster.ClusterError, subprocess.SubprocessError, ValueError):
        return False
    return all(len(r["online"]) == cluster.size for r in rows if r["type"] == "quorum")


def _until(predicate, timeout: float, what: str, tend=None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        if tend:
            tend()
        time.sleep(0.2)


def _fault_the_busiest_node(faults, kind: str, hit: set[str], run: Run, everyone_answers) -> bool:
    """Fault the node holding the most workers not hit by `kind` yet; wait until it runs again,
    every replica is back and every worker answers Flower's ping. False when every worker was
    hit."""
    by_node = faults.workers_by_node()
    node = max(by_node, key=lambda i: (len(set(by_node[i]) - hit), -i))
    if not set(by_node[node]) - hit:
        return False
    started, wall = time.monotonic(), time.time()
    if kind == "stop_app":
        assert faults.bounce_app(STOPPED_SECONDS, node=node), (
            "a node was not running before a stop_app"
        )
    else:
        faults.kill_node(node, NODE_DOWN_SECONDS)
    fault = faults.node_faults[-1]
    fault["wall"] = wall  # to tell which fault a worker's log line follows
    hit |= set(fault["workers_on_node"])
    # Until its background jobs end (the watch of its workers, the stop/start); a worker that died
    # meanwhile is started again by tend (counted: the tests fail on it) so the run can go on.
    _until(
        lambda: (
            not faults.node_down
            and not faults.restarting
            and not any(t.is_alive() for t in faults.node_jobs)
        ),
        120,
        f"{kind} of node {node} to end",
        tend=faults.tend,
    )
    run.errors += faults.settle_nodes()
    _until(
        lambda: _all_members_online(faults.cluster, faults.sb.vhost),
        60,
        "every quorum replica online",
    )
    back = time.monotonic()
    try:
        _until(everyone_answers, 20, "a ping answer from every worker")
        fault["all_answered_after_s"] = round(time.monotonic() - back, 1)
    except RuntimeError as exc:
        run.errors.append(f"{kind} node {node}: {exc}; answered {sorted(run.ping)}")
    run.timings[f"{kind} node {node} (#{len(run.faults) + 1})"] = round(
        time.monotonic() - started, 1
    )
    run.faults.append(fault)
    return True


class _Feeds:
    """Orders placed in the background while the faults happen, counted in the run."""

    def __init__(self, sandbox, rng: random.Random, run: Run) -> None:
        self.sandbox, self.rng, self.run = sandbox, rng, run
        self.feeds: list = []

    def start(self, count: int, seconds: float) -> None:
        from choreo.devtools.chaos.inject import OrderFeed
        from choreo.ops.scenarios import DEFAULT_MIX, draw_scenarios

        f = OrderFeed(
            self.sandbox.settings,
            draw_scenarios(count, dict(DEFAULT_MIX), self.rng.getrandbits(32)),
            seconds,
            self.rng,
        )
        f.start()
        self.feeds.append(f)
        self.run.ordered += count

    def join(self) -> None:
        """Wait for every feed; what each sent and any error it met go into the run."""
        for f in self.feeds:
            f.join(timeout=60)
            self.run.sent += f.sent
            self.run.feed_retries += f.retries
            if f.error:
                self.run.errors.append(f.error)

    def stop(self) -> None:
        for f in self.feeds:
            f.stop_event.set()


def _seed() -> int:
    """CHOREO_CHAOS_SEED replays a run; without it, a fresh seed (printed with the results)."""
    if os.environ.get("CHOREO_CHAOS_SEED"):
        return int(os.environ["CHOREO_CHAOS_SEED"])
    return random.getrandbits(32)


def _ping_all(flower, host: dict[str, str], run: Run):
    """A predicate: every worker answered Flower's ping (the answers are kept in run.ping)."""
    probe = flower.connection_for_write()  # not connected: its transport's error classes
    flower_errors = probe.connection_errors + probe.channel_errors

    def everyone_answers() -> bool:
        try:
            run.ping = flower.control.inspect(timeout=2.0).ping() or {}
        except flower_errors:
            # its pooled connection was on the faulted node: the next try connects anew
            # (Flower's inspector, likewise, logs a failed inspect and asks again)
            return False
        return set(host.values()) <= {n.split("@")[0] for n in run.ping}

    return everyone_answers


def _fault_each_kind(faults, run: Run, feeds: _Feeds, everyone_answers) -> None:
    """Each kind of fault, node by node, until every worker was on a faulted node (bounded)."""
    t = time.monotonic()
    for kind in FAULTS:
        hit: set[str] = set()
        for _ in range(MAX_FAULTS_PER_KIND):
            feeds.start(ORDERS_PER_FAULT, FEED_SECONDS)  # orders flow through the fault
            if not _fault_the_busiest_node(faults, kind, hit, run, everyone_answers):
                break
    run.timings["faults"] = round(time.monotonic() - t, 1)


def _observe_the_end(settings, stack, faults, run: Run, host, everyone_answers) -> None:
    """Once the orders settled: the audit, the ping, the queues' consumers, the workers' views."""
    from choreo.devtools.chaos.faults import worker_view
    from choreo.messaging.admin import BrokerAdmin
    from choreo.ops.audit import run_audit

    run.checks = run_audit(settings)

    try:
        _until(everyone_answers, 30, "a ping answer from every worker")
    except RuntimeError as exc:
        run.errors.append(str(exc))
    run.node_names = {
        w: next((n for n in run.ping if n.split("@")[0] == host[w]), "") for w in faults.workers
    }

    with BrokerAdmin(settings) as admin:
        run.consumers = {q["name"]: q["consumers"] for q in admin.queue_stats()}
    now = worker_view(settings, stack, faults.workers)
    run.handled_after = {w: v["handled"] for w, v in now.items()}
    run.pids_after = {w: stack.pid(w) for w in faults.workers}
    run.unexpected_exits = faults.counts["unexpected_exit"]


def _stop_all(stack, names: list[str]) -> None:
    stoppers = [threading.Thread(target=stack.stop, args=(n,)) for n in names]
    for s in stoppers:
        s.start()
    for s in stoppers:
        s.join(timeout=30)


def _moves(run: Run) -> list[str]:
    """Per fault: where each of its node's workers reconnected, and when all answered again."""
    return [
        f"{x['fault']} node {x['node']}: "
        + ", ".join(
            f"{w} -> {v.get('reconnected_to')} in {v.get('reconnected_after_s')}s"
            for w, v in x["workers_on_node"].items()
        )
        + f"; all answered ping {x.get('all_answered_after_s')}s after the node was back"
        for x in run.faults
    ]


@pytest.fixture(scope="module")
def failover(chaos_cluster):
    from rich.console import Console

    from choreo.app.bootstrap import prepare
    from choreo.devtools.chaos.faults import Faults
    from choreo.devtools.chaos.report import Journal
    from choreo.devtools.sandbox import Sandbox
    from choreo.messaging.access import node_name
    from choreo.ops.stack import Stack, wait_consuming, worker_of
    from choreo.ops.workload import wait_terminal
    from tasks.app import make_app

    seed = _seed()
    rng = random.Random(seed)
    run, t0 = Run(), time.monotonic()
    journal = Journal(Console(width=140, force_terminal=False))
    journal.note("seed", str(seed))
    cluster = chaos_cluster.lease("worker failover")
    run.timings["cluster ready"] = round(time.monotonic() - t0, 1)
    sandbox = Sandbox("failover", own_redis=True, cluster_dir=cluster.base_dir)
    stack = Stack(sandbox.settings, env=sandbox.env)
    feeds = _Feeds(sandbox, rng, run)
    names: list[str] = []
    flower = faults = None

    try:
        sandbox.open()
        settings = sandbox.settings
        prepare(settings)
        faults = Faults(sandbox, stack, rng, journal, "none", cluster)
        run.workers, names = faults.workers, ["users", *faults.workers]
        for name in names:
            faults.start(name)
        wait_consuming(settings, stack, names, 120, start=faults.start)
        run.timings["stack up"] = round(time.monotonic() - t0 - run.timings["cluster ready"], 1)
        run.pids_before = {w: stack.pid(w) for w in faults.workers}
        journal.note("workers", f"{faults.workers_by_node()}")

        host = {w: node_name(settings, *worker_of(w)) for w in faults.workers}
        flower = make_app("flower", settings)  # Flower's own broker user: broadcast, replies
        everyone_answers = _ping_all(flower, host, run)

        _fault_each_kind(faults, run, feeds, everyone_answers)

        feeds.start(ORDERS_PER_FAULT, FEED_SECONDS / 2)  # orders placed after the last fault
        feeds.join()
        t = time.monotonic()
        run.states = wait_terminal(settings, [o for o, _ in run.sent], timeout=90)
        run.timings["settle"] = round(time.monotonic() - t, 1)
        _observe_the_end(settings, stack, faults, run, host, everyone_answers)
        run.timings["total"] = round(time.monotonic() - t0, 1)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        run.errors.append(f"harness: {exc!r}")
    finally:
        if flower is not None:
            flower.close()
        for job in faults.node_jobs if faults else ():  # a node's start: over before the next lease
            job.join(180)
        feeds.stop()
        _stop_all(stack, names)
        run.read_logs(stack.log_dir)
        keep = bool(run.errors or run.log_lines or run.unexpected_exits)
        run.errors += sandbox.close(keep=keep)  # its vhost and broker users: the cluster stays
        chaos_cluster.keep |= keep
        print(
            f"\nworker failover: seed {seed}; timings (s) {run.timings}; "
            f"pidbox clashes absorbed {run.clashes}; client retries {run.feed_retries}; "
            f"faults: {_moves(run)}"
            + (
                f"; kept {sandbox.workdir} and (at the session's end) {cluster.base_dir}"
                if keep
                else ""
            )
        )
    return run


def test_no_worker_exited_through_the_node_faults(failover):
    assert failover.pids_before and all(failover.pids_before.values()), failover.why()
    assert failover.pids_after == failover.pids_before, failover.why()
    assert failover.unexpected_exits == 0, failover.why()
    assert failover.log_lines == [], failover.why()


def test_every_worker_was_on_a_node_hit_by_each_fault(failover):
    for kind, name in (("stop_app", "stop_app/start_app"), ("kill -9", "kill -9")):
        hit = {w for x in failover.faults if x["fault"] == name for w in x["workers_on_node"]}
        assert hit == set(failover.workers), (kind, hit, failover.why())


def test_each_faulted_worker_consumed_again_from_another_node_and_worked(failover):
    assert failover.faults, failover.why()
    for x in failover.faults:
        for name, w in x["workers_on_node"].items():
            assert w.get("reconnected_to") and w["reconnected_to"] != w["broker_node"], (
                x["fault"],
                name,
                w,
                failover.why(),
            )
            assert w["pid_on_reconnect"] == w["pid"], (
                name,
                w,
            )  # the same process, not a restarted one
            # It processed orders placed after its fault (the last batch comes after every fault).
            assert failover.handled_after.get(name, 0) > w["handled_on_reconnect"], (
                name,
                w,
                failover.handled_after,
            )
    # Every domain queue has its worker's consumer again.
    domain_queues = {
        q: n
        for q, n in failover.consumers.items()
        if not q.endswith((".dlq", ".unrouted")) and q.count(".") == 1
    }
    assert domain_queues and all(n == 1 for n in domain_queues.values()), failover.consumers


def test_every_order_ended_where_its_data_asked_and_the_audit_is_green(failover):
    from choreo.ops.workload import outcomes

    assert not failover.errors, failover.why()
    assert failover.sent and len(failover.sent) == failover.ordered, failover.why()
    wrong = [row for row in outcomes(failover.sent, failover.states) if not row["ok"]]
    assert wrong == [], wrong
    failed = {c.name: c.as_dict() for c in failover.checks if not c.as_dict()["passed"]}
    assert failover.checks and failed == {}, failed


def test_flowers_user_reaches_every_worker_after_each_fault(failover):
    assert all("all_answered_after_s" in x for x in failover.faults), failover.why()
    assert all(failover.node_names.values()), (failover.node_names, failover.ping)
    assert all(reply == {"ok": "pong"} for reply in failover.ping.values()), failover.ping
