"""Guarantee 6: a worker dying between "state committed" and "next event published" loses nothing.

The inventory worker is restarted with a fault hook that exits hard (os._exit, like kill -9)
right after its commit and before it publishes. The message is redelivered (late ack), the
redelivery is a duplicate (inbox), and the outbox relay publishes the stranded event.
"""
from __future__ import annotations

import pytest
from sqlmodel import Session, select

from tests.helpers import settled, wait_for

pytestmark = pytest.mark.e2e


def test_crash_between_commit_and_publish_loses_nothing(settings, stack, isolated_redis, tmp_path):
    from choreo.cli import publish_orders
    from choreo.db import engine_for
    from choreo.metrics import Metrics
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
        assert settled(settings, ids, timeout=120)[ids[0]] == ("COMPLETED", None)
        assert not marker.exists()  # the fault really fired
        with Session(engine_for(settings, "inventory")) as s:
            assert len(s.exec(select(Reservation).where(Reservation.order_id == ids[0])).all()) == 1
            row = s.exec(select(Outbox).where(Outbox.order_id == ids[0])).one()
            assert row.type == "inventory.reserved" and row.sent_at is not None
        wait_for(lambda: metrics.snapshot()["relayed"].get("inventory", 0) > relayed_before, 30,
                 what="relay to count the stranded event")
    finally:
        faulty.stop("worker-inventory")
        start_stack(settings, names=["worker-inventory"])
