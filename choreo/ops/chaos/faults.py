"""The faults: kill -9 of workers (whole or a pool child), the broker's connections dropped, Redis killed."""
from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter

import redis

from choreo.ops.chaos.report import Journal
from choreo.ops.sandbox import Sandbox
from choreo.ops.stack import Stack, children, rabbitmqctl
from config.settings import DOMAINS

WORKERS = [f"worker-{d}" for d in DOMAINS]


def kill_pid(pid: int) -> bool:
    """SIGKILL one pid of ours; False if it was already gone (it may exit between listing and kill)."""
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


class Faults:
    """Kills and restarts workers, the broker and Redis; keeps the books of what it did."""

    def __init__(self, sandbox: Sandbox, stack: Stack, rng: random.Random, journal: Journal, broker_mode: str) -> None:
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
            kids = [pid for pid in kids if kill_pid(pid)]
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
