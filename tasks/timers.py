"""The timer sweep: a worker thread that fires a service's due durable timers (saga deadlines).

A service with timers has a `consumers/<service>/timers.py` whose `fire_due(engine, settings)`
commits the due timers' messages to its outbox and returns them; this thread publishes them at
once (the outbox relay does, if this process dies first). Every worker of the service runs one,
so a timer does not wait for any one process: it fires as soon as any of them is up.
"""

from __future__ import annotations

import logging
import threading
from types import ModuleType

from celery import Celery, bootsteps

from choreo.app.outbox import mark_sent
from choreo.infra.db import engine_for
from choreo.messaging.publisher import Publisher
from choreo.messaging.topology import Names
from models.services import service_part
from tasks.faults import Faults, load_faults

log = logging.getLogger("choreo.timers")


class TimerSweep(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.faults: Faults | None = None

    def start(self, worker):
        self.domain = worker.app.domain
        timers = service_part(self.domain, "timers", optional=True)
        if timers is None:
            return  # this service keeps no timers
        self.faults = load_faults(self.domain)  # a test's crash hook; None in production
        self.thread = threading.Thread(
            target=self.loop, args=(worker.app, timers), name="timer-sweep", daemon=True
        )
        self.thread.start()

    def stop(self, worker):
        self.stop_event.set()
        if self.thread:
            self.thread.join(timeout=5)

    terminate = stop
    shutdown = stop

    def _fault(self, point: str) -> None:
        if self.faults is not None:
            self.faults.at(point)

    def loop(self, app: Celery, timers: ModuleType) -> None:
        settings = app.settings
        publisher = Publisher(app, Names(settings.namespace))
        while not self.stop_event.wait(settings.timer_interval):
            try:
                self.sweep(app, timers, publisher)
            except Exception as exc:  # database or broker away: the timers wait, durable
                log.warning("timer sweep failed, will retry: %r", exc)

    def sweep(self, app: Celery, timers: ModuleType, publisher: Publisher) -> int:
        engine = engine_for(app.settings, self.domain)
        fired = timers.fire_due(
            engine, app.settings, before_commit=lambda: self._fault("timer_before_commit")
        )
        if fired:
            self._fault("timer_after_commit")
        for env in fired:
            publisher.publish(env)
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
