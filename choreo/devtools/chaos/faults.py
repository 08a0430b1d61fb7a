"""The faults: kill -9 of workers (whole or a pool child), the broker's connections dropped, Redis
killed; on a cluster (`choreo chaos --cluster`), kill -9 of the node leading the busiest domain
queue and a stop_app/start_app of another."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from choreo.devtools.chaos.report import Journal
from choreo.devtools.sandbox import Sandbox
from choreo.ops.stack import Stack, children, process_names, rabbitmqctl, worker_of


def worker_view(settings, stack: Stack, names: list[str]) -> dict[str, dict]:
    """Each running worker's pid, the broker node it consumes from (its /ready) and the messages
    it has processed since it started (its /metrics)."""
    out = {}
    for name in names:
        worker = worker_of(name)
        if worker is None:
            raise ValueError(f"{name} is not a worker")
        domain, index = worker
        base = settings.health_url(domain, index)
        try:  # a worker being killed or restarted: not in the view (the parser is lazy: inside)
            ready = httpx.get(base + "/ready", timeout=5, trust_env=False).json()
            text = httpx.get(base + "/metrics", timeout=5, trust_env=False).text
            handled = sum(
                sample.value
                for family in text_string_to_metric_families(text)
                if family.name == "service_request"
                for sample in family.samples
                if sample.name == "service_request_total"
                and sample.labels.get("outcome") == "processed"
            )
        except (httpx.HTTPError, ValueError):
            continue
        out[name] = {
            "pid": stack.pid(name),
            "broker_node": ready.get("broker_node"),
            "handled": int(handled),
        }
    return out


def kill_pid(pid: int) -> bool:
    """SIGKILL one pid of ours; False if it was already gone (it may exit between listing and
    kill)."""
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


class Faults:
    """Kills and restarts workers, the broker and Redis; keeps the books of what it did."""

    def __init__(
        self,
        sandbox: Sandbox,
        stack: Stack,
        rng: random.Random,
        journal: Journal,
        broker_mode: str,
        cluster=None,
    ) -> None:
        self.sb = sandbox
        self.stack = stack
        self.cluster = cluster  # choreo.devtools.cluster.Cluster of a --cluster run
        # Every worker of the run: worker-<domain>, and worker-<domain>-<i> with several per domain.
        self.workers = [n for n in process_names(sandbox.settings) if worker_of(n)]
        self.node_down: dict[int, float] = {}  # node killed -> when to start it again
        self.node_faults: list[dict] = []  # what each node fault did, for the report
        self.handled_before_kills: Counter = (
            Counter()
        )  # worker -> messages it processed before kills
        self.node_jobs: list[threading.Thread] = []
        self.restarting: set[int] = set()  # nodes killed and being started again
        self.node_errors: list[str] = []
        self.rng = rng
        self.journal = journal
        self.broker_mode = broker_mode
        self.restart_due: dict[str, float] = {}
        self.started_pids: set[int] = set()
        self.counts: Counter = Counter()
        self.metrics_before_redis_restart: dict[str, dict[str, int]] = {}
        self.outage: dict | None = None  # the domain stopped on purpose now, and until when

    def start(self, name: str, why: str = "") -> int | None:
        """(Re)start `name` by Stack.restart: None, and nothing started, while an operator holds
        it stopped (`choreo stop NAME`)."""
        pid = self.stack.restart(name)
        if pid is None:
            self.journal.note(
                "held",
                f"{name} not started ({why or 'start'}): stopped on purpose (choreo stop)",
                style="yellow",
                process=name,
            )
            return None
        self.started_pids.add(pid)
        if why:
            self.journal.note(
                "restart", f"{name} pid {pid} ({why})", style="green", process=name, pid=pid
            )
        return pid

    def start_outage(self, domain: str, seconds: float) -> None:
        """Stop every worker of `domain` on purpose (held: nothing restarts them) for `seconds`:
        longer than a deadline, so the sagas waiting on it expire, and its backlog's answers come
        late, once `tend` starts it again."""
        names = [n for n in self.workers if (worker_of(n) or ("",))[0] == domain]
        for name in names:
            self.restart_due.pop(name, None)
            self.stack.stop_on_purpose(name, timeout=5.0)
        self.outage = {"domain": domain, "workers": names, "until": time.monotonic() + seconds}
        self.counts["outage"] += 1
        self.journal.note(
            "outage",
            f"{domain}: {', '.join(names)} stopped on purpose for {seconds:.0f}s",
            style="red",
            domain=domain,
            seconds=seconds,
        )

    def end_outage(self) -> None:
        """Start the outage's workers again (an operator's `choreo start`)."""
        outage, self.outage = self.outage, None
        if outage is None:
            return
        for name in outage["workers"]:
            pid = self.stack.start(name)
            self.started_pids.add(pid)
            self.journal.note("outage over", f"{name} pid {pid}", style="green", process=name)

    def kill_random_worker(self) -> None:
        # The workers that consumed from a faulted node are never killed: their failover is observed
        # (and compared at the end, same pid).
        watched = {name for x in self.node_faults for name in x.get("workers_on_node", {})}
        candidates = [
            n
            for n in self.workers
            if n not in self.restart_due and n not in watched and self.stack.pid(n)
        ]
        if not candidates:
            return

        name = self.rng.choice(candidates)
        parent = self.stack.pid(name)
        kids = children(parent) if parent is not None else []
        if kids and self.rng.random() < 0.5:
            # Only the pool process: Celery's parent notices, rejects the task for redelivery
            # (task_reject_on_worker_lost) and forks a new child: nothing for us to restart.
            kids = [pid for pid in kids if kill_pid(pid)]
            self.counts["kill_child"] += 1
            self.journal.note(
                "kill -9",
                f"{name} pool child {kids} (parent {parent} lives)",
                style="red",
                process=name,
                mode="child",
                pids=kids,
            )
            return
        if self.cluster:
            # What it processed dies with it: count it first (who did the work, over the run).
            view = worker_view(self.sb.settings, self.stack, [name]).get(name)
            self.handled_before_kills[name] += view["handled"] if view else 0
        pids = self.stack.kill(name)
        delay = round(self.rng.uniform(0.3, 2.0), 2)
        self.restart_due[name] = time.monotonic() + delay
        self.counts["kill_worker"] += 1
        self.journal.note(
            "kill -9",
            f"{name} pids {pids}; restart in {delay}s",
            style="red",
            process=name,
            mode="worker",
            pids=pids,
        )

    def tend(self) -> None:
        """Restart killed workers when due; restart any process that died on its own (and say
        so)."""
        now = time.monotonic()
        if self.outage is not None and now >= self.outage["until"]:
            self.end_outage()
        for name, due in list(self.restart_due.items()):
            if now >= due:
                del self.restart_due[name]
                self.start(name, "after kill")
        for node, due in list(self.node_down.items()):
            if now >= due:
                del self.node_down[node]
                self.restarting.add(node)  # until it runs again: no other node is stopped meanwhile
                self._in_background(self._start_node, node, "after kill")
        for name in ["users", *self.workers]:
            # Stopped on purpose (`choreo stop`): not dead, and left alone.
            if self.stack.held(name) or name in self.restart_due:
                continue
            if self.stack.pid(name) is None:
                self.counts["unexpected_exit"] += 1
                self.journal.note(
                    "died",
                    f"{name} was not running (not killed by us); see {self.stack.logfile(name)}",
                    style="yellow",
                    process=name,
                )
                self.start(name, "found dead")

    def restart_broker(self) -> None:
        vhost = self.sb.vhost
        if self.broker_mode == "vhost":
            on = (
                self.sb.settings.broker_cluster_dir
            )  # never this machine's node when the run has a cluster
            out = rabbitmqctl(
                "close_all_connections", "-p", vhost, "chaos: broker restart", cluster_dir=on
            )
            # restart_vhost restarts a vhost whose stores failed; on a healthy vhost RabbitMQ
            # 3.10 answers "already running": the forced disconnect above is the real fault.
            out += rabbitmqctl("restart_vhost", "-p", vhost, cluster_dir=on)
            self.journal.note(
                "broker",
                f"closed every connection of vhost {vhost}, restart_vhost: "
                f"{' '.join(out.split())[:160]}",
                style="magenta",
                mode="vhost",
            )
        elif self.broker_mode == "node":
            self.journal.note(
                "broker",
                "stop_app/start_app: EVERY vhost on this node is disconnected",
                style="magenta",
                mode="node",
            )
            rabbitmqctl("stop_app")
            time.sleep(
                self.rng.uniform(0.5, 2.0)
            )  # the broker stays down a moment, as in a real restart
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup", "--timeout", "60")
            self.journal.note("broker", "node back", style="magenta", mode="node")
        self.counts["broker_restart"] += 1

    def restart_redis(self, metrics_snapshot) -> None:
        # Counters live in this Redis and die with it: take them first (figures, not correctness).
        try:
            self.metrics_before_redis_restart = metrics_snapshot()
        except redis.RedisError as exc:
            self.journal.note(
                "redis", f"could not read counters before restart: {exc!r}", style="yellow"
            )
        old = self.sb.kill_redis()
        time.sleep(self.rng.uniform(0.1, 0.8))
        new = self.sb.start_redis()
        self.counts["redis_restart"] += 1
        self.journal.note(
            "redis",
            f"kill -9 redis-server pid {old}, new pid {new} on port {self.sb.redis_port} "
            f"(every key lost)",
            style="magenta",
            old=old,
            new=new,
        )

    # --- a cluster's nodes ----------------------------------------------------------------

    def leaders(self) -> dict[str, int | None]:
        """Domain queue -> the index of the node leading it now (None: no leader, or could not
        ask)."""
        names = [self.cluster.name(i) for i in self.cluster.nodes]
        queues = [f"{self.sb.settings.namespace}.{d}" for d in self.sb.settings.domains]
        try:  # one short look: a node just killed or restarting may not answer
            rows = json.loads(
                self.cluster.ctl(
                    "list_queues",
                    "-p",
                    self.sb.vhost,
                    "name",
                    "leader",
                    "--formatter",
                    "json",
                    timeout=15,
                )
                or "[]"
            )
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError):
            return dict.fromkeys(queues)
        lead = {r["name"]: r.get("leader") for r in rows}
        return {q: names.index(lead[q]) + 1 if lead.get(q) in names else None for q in queues}

    def busiest_queue(self) -> str:
        """The domain queue holding the most messages now (ready + unacknowledged)."""
        depths = {}
        try:
            listing = self.cluster.ctl(
                "list_queues",
                "-p",
                self.sb.vhost,
                "name",
                "messages",
                "--no-table-headers",
                timeout=15,
            )
        except (RuntimeError, OSError, subprocess.SubprocessError):
            listing = ""
        for line in listing.splitlines():
            parts = line.split()
            if (
                len(parts) == 2
                and parts[1].isdigit()
                and not parts[0].endswith((".dlq", ".unrouted"))
            ):
                depths[parts[0]] = int(parts[1])
        domain_queues = {f"{self.sb.settings.namespace}.{d}" for d in self.sb.settings.domains}
        ranked = sorted((q for q in depths if q in domain_queues), key=lambda q: -depths[q])
        return ranked[0] if ranked else f"{self.sb.settings.namespace}.payment"

    def workers_by_node(self) -> dict[int, list[str]]:
        """Node index -> the workers consuming from it now (every node listed; a worker that is
        reconnecting or being restarted is on none)."""
        view = worker_view(self.sb.settings, self.stack, self.workers)
        return {
            i: sorted(
                name
                for name, v in view.items()
                if v["broker_node"] == f"127.0.0.1:{self.cluster.ports(i)['amqp']}"
            )
            for i in self.cluster.nodes
        }

    def _on_node(self, node: int) -> tuple[str, dict[str, dict]]:
        """The node's AMQP address and the workers consuming from it now."""
        address = f"127.0.0.1:{self.cluster.ports(node)['amqp']}"
        return address, {
            name: view
            for name, view in worker_view(self.sb.settings, self.stack, self.workers).items()
            if view["broker_node"] == address
        }

    def _watch(self, fault: dict, since: float, address: str, queue: str | None = None) -> None:
        """In the background: how long `queue` had no leader off the faulted node, and
        where each worker that was on it went (the first look that names another node);
        bounded by 60 s. A leader look is a rabbitmqctl run (a second or two here): paced,
        the workers' /ready cheap."""
        waiting, node = set(fault["workers_on_node"]), fault["node"]
        next_look = 0.0
        while time.monotonic() < since + 60 and (
            waiting or (queue and "new_leader_after_s" not in fault)
        ):
            if queue and "new_leader_after_s" not in fault and time.monotonic() >= next_look:
                if self.leaders()[queue] not in (None, node):
                    fault["new_leader_after_s"] = round(time.monotonic() - since, 2)
                next_look = time.monotonic() + 1.0
            for name, view in worker_view(self.sb.settings, self.stack, sorted(waiting)).items():
                if view["broker_node"] not in (None, address):
                    waiting.discard(name)
                    fault["workers_on_node"][name].update(
                        reconnected_to=view["broker_node"],
                        reconnected_after_s=round(time.monotonic() - since, 2),
                        pid_on_reconnect=view["pid"],
                        handled_on_reconnect=view["handled"],
                    )
            time.sleep(0.2)

    def kill_leader_node(self, down_for: float) -> None:
        """kill -9 the node that leads the busiest domain queue; start it again after
        `down_for` s. The workers consuming from it are watched (and never killed): each
        must reconnect elsewhere."""
        queue = self.busiest_queue()
        before = self.leaders()
        # Not known: the first node (where the set-up declared the queues).
        self.kill_node(before[queue] or 1, down_for, queue, before)

    def kill_node(
        self,
        node: int,
        down_for: float,
        queue: str | None = None,
        leaders_before: dict | None = None,
    ) -> dict:
        """kill -9 node `node`; start it again after `down_for` s (tend, settle_nodes). Its workers
        are watched as they reconnect elsewhere; with `queue`, how long that queue had no leader.
        Returns the fault's record (filled in by the watch)."""
        before = leaders_before if leaders_before is not None else self.leaders()
        address, on_it = self._on_node(node)
        killed_at = time.monotonic()
        pid = self.cluster.kill(node)
        self.node_down[node] = killed_at + down_for
        self.counts["node_kill"] += 1
        fault = {
            "t": self.journal.now(),
            "fault": "kill -9",
            "node": node,
            "queue": queue,
            "leaders_before": before,
            "workers_on_node": on_it,
        }
        self.node_faults.append(fault)
        self._in_background(self._watch, fault, killed_at, address, queue)
        self.journal.note(
            "kill -9 node",
            f"node {node} ({self.cluster.name(node)}, pid {pid})"
            + (f", leader of {queue}" if queue else "")
            + f"; start again in "
            f"{down_for:.1f}s; workers on it: {', '.join(on_it) or 'none'}",
            style="red",
            node=node,
            queue=queue,
        )
        return fault

    def bounce_app(self, pause: float, node: int | None = None) -> bool:
        """stop_app, then start_app, of another node (its broker app only: the Erlang node stays;
        its clients are disconnected and its queue replicas go offline); `node`, or one drawn.
        Only while every other node runs (else the quorum queues would lose their majority), in
        the background: a stop takes seconds, and workers keep being killed meanwhile."""
        up = [
            i
            for i in self.cluster.nodes
            if i not in self.node_down and i not in self.restarting and self.cluster.app_running(i)
        ]
        if len(up) < self.cluster.size:
            return False  # a killed node is not back yet: the caller asks again a moment later
        node = node if node is not None else self.rng.choice(up)
        address, on_it = self._on_node(node)
        self.counts["node_stop_app"] += 1
        fault = {
            "t": self.journal.now(),
            "fault": "stop_app/start_app",
            "node": node,
            "leaders_before": self.leaders(),
            "workers_on_node": on_it,
        }
        self.node_faults.append(fault)
        self.journal.note(
            "stop_app",
            f"node {node} ({self.cluster.name(node)}); start_app once its workers moved "
            f"and {pause:.1f}s more; workers on it: {', '.join(on_it) or 'none'}",
            style="magenta",
            node=node,
        )

        def bounce() -> None:
            stopped_at = time.monotonic()
            try:
                self.cluster.stop_app(node)
                self._watch(fault, stopped_at, address)
                fault["leaders_after"] = (
                    self.leaders()
                )  # while its app is down (a stop takes seconds)
                time.sleep(pause)
            finally:
                self.cluster.start_app(node)
            self.journal.note("start_app", f"node {node} back", style="magenta", node=node)

        self._in_background(bounce)
        return True

    def _start_node(self, node: int, why: str) -> None:
        try:
            self.cluster.start(node)
        finally:
            self.restarting.discard(node)
        self.journal.note(
            "node",
            f"started node {node} again ({self.cluster.name(node)}; {why})",
            style="green",
            node=node,
        )

    def _in_background(self, job, *args) -> None:
        """A node fault's slow part (a node start, a stop_app) off the fault loop;
        its error is the run's."""

        def run() -> None:
            try:
                job(*args)
            except Exception as exc:  # noqa: BLE001 (reported as the run's error by settle_nodes)
                self.node_errors.append(f"{getattr(job, '__name__', job)}{args}: {exc!r}")

        thread = threading.Thread(target=run, name="chaos-node", daemon=True)
        self.node_jobs.append(thread)
        thread.start()

    def note_leaders_after(self, force: bool = False) -> None:
        """A node kill's queue leaders a few seconds after it (once elections are
        done); a stop_app's are taken by its own job while the app is down (`force`:
        whatever is still missing)."""
        for x in self.node_faults:
            if "leaders_after" not in x and (
                force or (x["fault"] == "kill -9" and self.journal.now() - x["t"] >= 5)
            ):
                x["leaders_after"] = self.leaders()

    def settle_nodes(self, timeout: float = 180) -> list[str]:
        """Every node fault's background job done, every killed node started again; the errors."""
        for node in list(self.node_down):
            del self.node_down[node]
            self._in_background(self._start_node, node, "settle")
        for thread in self.node_jobs:
            thread.join(timeout)
        stopped = [
            f"node {i} ({self.cluster.name(i)}) is not running its app after the faults"
            for i in self.cluster.nodes
            if not self.cluster.app_running(i)
        ]
        return (
            self.node_errors
            + stopped
            + [
                f"{t.name} still running after {timeout:.0f}s"
                for t in self.node_jobs
                if t.is_alive()
            ]
        )
