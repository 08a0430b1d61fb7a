"""Guarantee 6: a worker dying between "state committed" and "next event published" loses nothing.

The inventory worker is restarted with a fault hook that exits hard (os._exit, like kill -9)
right after its commit and before it publishes. The message is redelivered (late ack), the
redelivery is a duplicate (inbox), and the outbox relay publishes the stranded event. Run
with the configured pool: solo (the default) loses the worker, prefork only its child.
"""
from __future__ import annotations

import pytest
from sqlmodel import Session, select

from tests.helpers import settled, wait_for

pytestmark = pytest.mark.e2e


def test_crash_between_commit_and_publish_loses_nothing(settings, stack, isolated_redis, tmp_path):
    from choreo.ops.workload import publish_orders
    from choreo.infra.db import engine_for
    from choreo.infra.metrics import Metrics
    from models.tables import Outbox, Reservation
    from tests.e2e.conftest import start_stack

    marker = tmp_path / "crash-once"
    stack.stop("worker-inventory")
    faulty = start_stack(settings, env={"CHOREO_FAULT_CRASH_AFTER_COMMIT": "inventory",
                                        "CHOREO_FAULT_MARKER": str(marker)}, names=["worker-inventory"])
    try:
        metrics = Metrics(isolated_redis, settings.redis_prefix)
        relayed_before = metrics.snapshot()["relayed"].get("inventory", 0)
        marker.write_text("armed")
        ids = [o for o, _ in publish_orders(settings, ["completed"], seed=None)]
        # Under the solo pool the hard exit takes the whole worker down: the test plays its
        # supervisor (systemd, Kubernetes, compose's restart policy) and starts it again, with
        # the marker gone. Under prefork, Celery forks a new pool child by itself.
        wait_for(lambda: not marker.exists(), 60, what="the fault to fire")
        if settings.worker_pool == "solo":
            wait_for(lambda: faulty.pid("worker-inventory") is None, 30, what="the worker to die")
            faulty.start("worker-inventory")
        assert settled(settings, ids, timeout=120)[ids[0]] == ("COMPLETED", None)
        with Session(engine_for(settings, "inventory")) as s:
            assert len(s.exec(select(Reservation).where(Reservation.order_id == ids[0])).all()) == 1
            row = s.exec(select(Outbox).where(Outbox.order_id == ids[0])).one()
            assert row.type == "inventory.reserved" and row.sent_at is not None
        wait_for(lambda: metrics.snapshot()["relayed"].get("inventory", 0) > relayed_before, 30,
                 what="relay to count the stranded event")
    finally:
        faulty.stop("worker-inventory")
        start_stack(settings, names=["worker-inventory"])
