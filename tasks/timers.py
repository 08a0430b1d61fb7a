"""The timer sweep: a worker thread that fires a service's due durable timers (saga deadlines).

A service with timers has a `consumers/<service>/timers.py` whose `fire_due(engine, settings)`
commits the due timers' messages to its outbox and returns them; this thread publishes them at
once (the outbox relay does, if this process dies first). Every worker of the service runs one,
so a timer does not wait for any one process: it fires as soon as any of them is up.
"""

from __future__ import annotations

import logging

from celery import Celery

from choreo.app.outbox import mark_sent
from choreo.infra.db import engine_for
from choreo.messaging.publisher import Publisher
from choreo.messaging.topology import Names
from models.services import service_part
from tasks.faults import Faults, load_faults
from tasks.sweeper import Sweeper

log = logging.getLogger("choreo.timers")


class TimerSweep(Sweeper):
    thread_name = "timer-sweep"
    log = log

    def wanted(self, app: Celery) -> bool:
        self.timers = service_part(self.domain, "timers", optional=True)
        self.faults: Faults | None = load_faults(self.domain)  # a test's crash hook, else None
        return self.timers is not None  # a service without timers: no thread

    def interval(self, app: Celery) -> float:
        return app.settings.timer_interval

    def prepare(self, app: Celery) -> None:
        self.publisher = Publisher(app, Names(app.settings.namespace))

    def _fault(self, point: str) -> None:
        if self.faults is not None:
            self.faults.at(point)

    def sweep(self, app: Celery) -> int:
        assert self.timers is not None  # started only for a service with timers (`wanted`)
        engine = engine_for(app.settings, self.domain)
        fired = self.timers.fire_due(
            engine, app.settings, before_commit=lambda: self._fault("timer_before_commit")
        )
        if fired:
            self._fault("timer_after_commit")
        for env in fired:
            self.publisher.publish(env)
        if fired:
            self._fault("timer_after_publish")
        mark_sent(engine, [env.event_id for env in fired])
        if fired:
            log.info(
                "fired %d due timer(s)",
                len(fired),
                extra={"domain": self.domain, "orders": [e.order_id for e in fired[:20]]},
            )
        return len(fired)
