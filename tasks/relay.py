"""The outbox relay: a worker thread that publishes events a crashed batch committed but never
published."""

from __future__ import annotations

import logging

from celery import Celery

from choreo.app.outbox import mark_sent, unsent_outbox
from choreo.infra.db import engine_for
from choreo.infra.metrics import Metrics
from choreo.infra.redis_client import redis_client
from choreo.infra.telemetry import RELAYED
from choreo.messaging.publisher import Publisher
from choreo.messaging.topology import Names
from tasks.sweeper import Sweeper

log = logging.getLogger("choreo.relay")


class OutboxRelay(Sweeper):
    """Publishes outbox rows a crashed task committed but never published (guarantee 6).

    Runs as a thread in the worker's main process; tasks publish their own rows right after
    commit, so the relay only sees rows older than `outbox_relay_after` seconds.
    """

    thread_name = "outbox-relay"
    log = log

    def interval(self, app: Celery) -> float:
        return app.settings.outbox_relay_interval

    def prepare(self, app: Celery) -> None:
        self.publisher = Publisher(app, Names(app.settings.namespace))
        self.metrics = Metrics(redis_client(app.settings), app.settings.redis_prefix)

    def sweep(self, app: Celery) -> int:
        settings, publisher = app.settings, self.publisher
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
