"""A worker's observability bootstep: its /health, /ready, /metrics, /breakers listener, the
gauges read at scrape time, and the tracer's flush at shutdown.

One listener per worker process (a worker is one process: Celery's solo pool), on loopback at
settings.health_port(domain, index) (index: which of the domain's workers). Started in the
worker's main process after any fork, like the tracer (tasks.runtime builds it on first use in
the process that consumes). What it reads of the consumer (each turn of the event loop, the batch
in hand) the batch consumer step declares on it (tasks.worker.BatchConsumer).
"""

from __future__ import annotations

import logging
import time

import redis
from celery import bootsteps

from choreo.app.outbox import backlog
from choreo.app.stuck import saga_summary
from choreo.infra import telemetry, tls, tracing
from choreo.infra.db import reachable
from choreo.infra.health import Cached, HealthServer
from consumers.registry import subscriptions
from tasks.runtime import runtime

log = logging.getLogger("choreo.observe")
# /health fails only when the loop is stuck: a batch running, or a connected loop not turning,
# for this long. A broker that is away is not a stall (the consumer is reconnecting).
STALL_SECONDS = 120.0


class WorkerProbes:
    """What /health, /ready and /breakers answer for a worker, and its scrape-time gauges."""

    def __init__(self, worker, app) -> None:
        self.worker, self.app = worker, app
        self.settings, self.domain = app.settings, app.domain
        self.rt = runtime(app)
        self._redis = redis.Redis.from_url(
            self.settings.redis_url,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            **tls.redis_options(self.settings),
        )
        self.readiness = Cached(self._readiness, ttl=1.0)
        self.uses_users = any(
            sub.lookup for sub in subscriptions(self.settings.saga_mode)[self.domain].values()
        )

    @property
    def consumer(self):
        return getattr(self.worker, "consumer", None)

    def liveness(self) -> tuple[bool, dict]:
        c, now = self.consumer, time.monotonic()
        if c is None:
            return True, {"state": "starting"}
        started = getattr(c, "batch_started", None)
        running = now - started if started else 0.0
        idle_for = now - c.last_turn if c.last_turn else None
        connected = bool(getattr(c, "consuming", False))
        stalled = running > STALL_SECONDS or (
            connected and idle_for is not None and idle_for > STALL_SECONDS
        )
        state = (
            "stalled"
            if stalled
            else "processing"
            if started
            else "consuming"
            if connected
            else "reconnecting"
        )
        return not stalled, {
            "state": state,
            "batch_running_s": round(running, 3),
            "last_loop_turn_s": round(idle_for, 3) if idle_for is not None else None,
        }

    def _readiness(self) -> tuple[bool, dict]:
        c = self.consumer
        checks = {
            "broker": bool(
                c is not None and getattr(c, "consuming", False) and c.connection is not None
            ),
            "database": reachable(self.rt.engine),
        }
        try:
            checks["redis"] = bool(self._redis.ping())
        except redis.RedisError:
            checks["redis"] = False
        return all(checks.values()), {"checks": checks, "broker_node": self.broker_node()}

    def broker_node(self) -> str | None:
        """host:port of the broker node its consumer is connected to now (a cluster: which one)."""
        conn = getattr(self.consumer, "connection", None)
        try:
            return conn.host if conn is not None and conn.connected else None
        except Exception:  # a connection being torn down: no node to name
            return None

    def breakers(self) -> list[dict]:
        if not self.uses_users:
            return []
        b = self.rt.deps.users.breaker
        return [
            {
                "name": b.name,
                "state": str(b.current_state),
                "failures": b.fail_counter,
                "fail_max": b.fail_max,
                "reset_timeout_s": b.reset_timeout,
            }
        ]

    def close(self) -> None:
        self._redis.close()

    def register_gauges(self) -> None:
        source = telemetry.scrape_time(self.domain)
        source.add(telemetry.breaker_families(self.domain, self.breakers))
        source.add(telemetry.outbox_families(self.domain, lambda: backlog(self.rt.engine)))
        if self.domain == "order":  # open and stuck sagas, read from the order's read model
            source.add(telemetry.saga_families(lambda: saga_summary(self.settings)))
        source.add(
            telemetry.consumer_families(
                self.domain,
                lambda: getattr(self.consumer, "in_hand", 0),
                lambda: bool(getattr(self.consumer, "consuming", False)),
            )
        )


class Observability(bootsteps.StartStopStep):
    """Starts the worker's health listener and gauges; flushes its spans when it stops."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.server: HealthServer | None = None
        self.probes: WorkerProbes | None = None

    def start(self, worker):
        app = worker.app
        settings = app.settings
        self.probes = WorkerProbes(worker, app)
        if settings.metrics:
            self.probes.register_gauges()
        if not settings.health_port_base:
            log.info("health listener off (health_port_base is 0)")
            return
        port = settings.health_port(app.domain, getattr(app, "worker_index", 1))
        try:
            self.server = HealthServer(settings.health_host, port, self.probes, app.domain).start()
        except (
            OSError
        ) as exc:  # the port is taken: the worker still works, unobserved; say so loudly
            log.error(
                "health listener could not bind %s:%d (%s); /health and /metrics are off",
                settings.health_host,
                port,
                exc,
            )
            return
        log.info(
            "health listener on http://%s:%d (/health /ready /metrics /breakers)",
            settings.health_host,
            port,
        )

    def stop(self, worker):
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.probes is not None:
            self.probes.close()
        tracing.shutdown()

    shutdown = stop
