"""The stack's monitor (`choreo monitor`): every choreo queue's depth and consumer count as
Prometheus gauges, from a process that is not a worker.

A worker that reports its own queue stops reporting when it dies, which is exactly when its
queue fills with no consumer: the alert on that must read a process that outlives the worker.
The monitor is that process, one per stack, started by `choreo up` like the others and with the
same /health, /ready, /metrics listener (on settings.monitor_port). At each scrape it asks the
broker over one kept connection, as the operator's broker user, with a passive declare per queue
(RabbitMQ checks no permission on a passive declare: the operator needs no grant for it), for the
domain queues, their retry rungs and DLQs, and the unrouted queue:
`choreo_queue_messages{queue,domain,kind}` and `choreo_queue_consumers{queue,domain,kind}`, kind
one of queue, retry, dlq, unrouted. Nothing but RabbitMQ's AMQP port is needed (not its
prometheus plugin, which the machine's shared broker does not enable).
"""

from __future__ import annotations

import logging
import signal
import threading

from choreo.infra import telemetry
from choreo.infra.health import Cached, HealthServer
from choreo.messaging.admin import BrokerAdmin
from choreo.messaging.topology import Names
from config.settings import Settings

log = logging.getLogger("choreo.monitor")


def queue_kinds(settings: Settings) -> dict[str, tuple[str, str]]:
    """queue -> (domain, kind) for every queue the monitor reports (kind: queue, retry, dlq,
    unrouted; the unrouted queue belongs to no domain: "")."""
    n = Names(settings.namespace)
    out: dict[str, tuple[str, str]] = {}
    for d in settings.domains:
        out[n.queue(d)] = (d, "queue")
        for k in range(1, settings.retry_max_attempts + 1):
            out[n.retry(d, k)] = (d, "retry")
        out[n.dlq(d)] = (d, "dlq")
    out[n.unrouted] = ("", "unrouted")
    return out


class QueueMonitor:
    """The broker's counts of every choreo queue over one connection kept between scrapes
    (opened again when it has gone), and the monitor's /health, /ready and /breakers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kinds = queue_kinds(settings)
        self._admin: BrokerAdmin | None = None
        self._lock = threading.Lock()
        self.readiness = Cached(self._readiness, ttl=1.0)

    def depths(self) -> list[tuple[str, str, str, int, int]]:
        """(queue, domain, kind, messages, consumers) of each queue that exists."""
        with self._lock:
            try:
                if self._admin is None or not self._admin.conn.is_open:
                    self._admin = BrokerAdmin(self.settings)
                stats = self._admin.queue_stats()
            except Exception:
                self.close()
                raise
        rows = []
        for q in stats:
            if q["messages"] is None or q["name"] not in self.kinds:
                continue  # not declared (yet): nothing to report
            domain, kind = self.kinds[q["name"]]
            rows.append((q["name"], domain, kind, q["messages"], q["consumers"]))
        return rows

    def liveness(self) -> tuple[bool, dict]:
        # Nothing here can stall: a scrape that cannot reach the broker fails by itself.
        return True, {"state": "running"}

    def _readiness(self) -> tuple[bool, dict]:
        try:
            seen = len(self.depths())
        except Exception as exc:  # the broker is away or refuses the operator: not ready
            return False, {"checks": {"broker": False}, "error": repr(exc)[:200]}
        return True, {"checks": {"broker": True}, "queues": seen}

    def breakers(self) -> list[dict]:
        return []

    def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                admin.close()
            except Exception:  # a connection already torn down: nothing to close
                log.debug("closing the monitor's broker connection failed", exc_info=True)


def serve(settings: Settings) -> None:
    """Run the monitor until SIGTERM or SIGINT: the listener in a thread, this one waiting."""
    monitor = QueueMonitor(settings)
    telemetry.scrape_time("monitor").add(telemetry.queue_families(monitor.depths))
    server = HealthServer(settings.health_host, settings.monitor_port, monitor, "monitor").start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("monitor on %s (queues of %s)", settings.health_url("monitor"), settings.namespace)
    while not stop.wait(1.0):
        pass
    server.stop()
    monitor.close()
