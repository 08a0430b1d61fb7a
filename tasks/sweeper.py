"""A worker's background sweep: a thread in the worker's main process that runs every few
seconds until the worker stops (the outbox relay, the timer sweep)."""

from __future__ import annotations

import logging
import threading

from celery import Celery, bootsteps


class Sweeper(bootsteps.StartStopStep):
    """Runs `sweep(app)` every `interval(app)` seconds on a thread of its own. A sweep that fails
    (the broker or the database away) is logged and tried again at the next tick: what it
    sweeps is durable and waits."""

    requires = {"celery.worker.components:Pool"}
    thread_name = "background"
    log = logging.getLogger("choreo.sweeper")

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, worker):
        self.domain = worker.app.domain
        if not self.wanted(worker.app):
            return
        self.thread = threading.Thread(
            target=self.loop, args=(worker.app,), name=self.thread_name, daemon=True
        )
        self.thread.start()

    def stop(self, worker):
        self.stop_event.set()
        if self.thread:
            self.thread.join(timeout=5)

    terminate = stop
    shutdown = stop

    def wanted(self, app: Celery) -> bool:
        """Whether this worker runs the sweep at all."""
        return True

    def interval(self, app: Celery) -> float:
        raise NotImplementedError

    def prepare(self, app: Celery) -> None:
        """Once, on the sweep's thread, before the first tick."""

    def sweep(self, app: Celery) -> int:
        raise NotImplementedError

    def loop(self, app: Celery) -> None:
        self.prepare(app)
        while not self.stop_event.wait(self.interval(app)):
            try:
                self.sweep(app)
            except Exception as exc:
                self.log.warning("%s sweep failed, will retry: %r", self.thread_name, exc)
