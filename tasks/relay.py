"""The outbox relay: a worker thread that publishes events a crashed batch committed but never
published."""

from __future__ import annotations

import logging
import threading

from celery import Celery, bootsteps

from choreo.app.outbox import mark_sent, unsent_outbox
from choreo.infra.db import engine_for
from choreo.infra.metrics import Metrics
from choreo.infra.redis_client import redis_client
from choreo.infra.telemetry import RELAYED
from choreo.messaging.publisher import Publisher
from choreo.messaging.topology import Names

log = logging.getLogger("choreo.relay")


class OutboxRelay(bootsteps.StartStopStep):
    """Publishes outbox rows a crashed task committed but never published (guarantee 6).

    Runs as a thread in the worker's main process; tasks publish their own rows right after
    commit, so the relay only sees rows older than `outbox_relay_after` seconds.
    """

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, worker):
        self.domain = worker.app.domain
        self.thread = threading.Thread(
            target=self.loop, args=(worker.app,), name="outbox-relay", daemon=True
        )
        self.thread.start()

    def stop(self, worker):
        self.stop_event.set()
        if self.thread:
            self.thread.join(timeout=5)

    terminate = stop
    shutdown = stop

    def loop(self, app: Celery) -> None:
        settings = app.settings
        publisher = Publisher(app, Names(settings.namespace))
        self.metrics = Metrics(redis_client(settings), settings.redis_prefix)
        while not self.stop_event.wait(settings.outbox_relay_interval):
            try:
                self.sweep(settings, publisher)
            except Exception as exc:  # broker or database away: try again next tick
                log.warning("outbox relay sweep failed, will retry: %r", exc)

    def sweep(self, settings, publisher: Publisher) -> int:
        engine = engine_for(settings, self.domain)
        rows = unsent_outbox(engine, settings.outbox_relay_after)
        for env in rows:
            publisher.publish(env, relay=True)
            mark_sent(engine, [env.event_id])
        if rows:
            self.metrics.incr("relayed", self.domain, len(rows))
            if settings.metrics:
                RELAYED.labels(self.domain).inc(len(rows))
            log.warning(
                "outbox relay published %d stranded event(s)",
                len(rows),
                extra={"domain": self.domain},
            )
        return len(rows)
