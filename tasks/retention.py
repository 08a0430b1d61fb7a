"""The retention sweep: a worker thread that runs the retention cleaner (choreo.app.retention) on
its own service's database every `retention_interval` seconds."""

from __future__ import annotations

import logging

from celery import Celery

from choreo.app.retention import kinds_of, sweep_service
from choreo.infra.db import engine_for
from choreo.infra.telemetry import RETENTION_DELETED, RETENTION_LONGEST
from tasks.sweeper import Sweeper

log = logging.getLogger("choreo.retention")


class RetentionSweep(Sweeper):
    """Every worker of a service runs one: batches are short and idempotent, and on PostgreSQL
    competing workers pick disjoint rows (FOR UPDATE SKIP LOCKED), so running them side by side
    costs nothing and the cleaning never waits for any one process."""

    thread_name = "retention"
    log = log

    def wanted(self, app: Celery) -> bool:
        return bool(kinds_of(self.domain))

    def interval(self, app: Celery) -> float:
        return app.settings.retention_interval

    def sweep(self, app: Celery) -> int:
        settings = app.settings
        swept = sweep_service(
            settings, self.domain, engine_for(settings, self.domain), stop=self.stop_event
        )
        deleted = sum(s.count for s in swept)
        longest = max((s.longest for s in swept), default=0.0)
        if settings.metrics:
            for s in swept:
                RETENTION_DELETED.labels(self.domain, s.kind).inc(s.count)
            RETENTION_LONGEST.labels(self.domain).set(longest)
        if deleted:
            log.info(
                "retention removed %d row(s)",
                deleted,
                extra={
                    "domain": self.domain,
                    "deleted": {s.kind: s.count for s in swept if s.count},
                    "longest_batch_ms": round(longest * 1000, 3),
                    "capped": [s.kind for s in swept if s.capped],
                },
            )
        return deleted
