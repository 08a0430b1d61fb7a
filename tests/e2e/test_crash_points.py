"""kill -9 at every step of a batch loses nothing and doubles nothing.

The inventory worker is stopped while six orders are paid for, so six payment.completed wait
in its queue; then it starts with a fault hook (tests/e2e/crash_hook.py, loaded through
tasks.faults) that exits hard (os._exit, like kill -9) at one point of its first batch, which
holds all six:

  before_commit   handlers ran, nothing committed       -> redelivered, processed again
  after_commit    committed, nothing published          -> redelivered as duplicates; the
                                                           outbox relay publishes the events
  mid_burst       half of the burst's events published  -> the same, and the events already
                                                           out arrive twice downstream
  after_publish   every event confirmed, nothing acked  -> the same, all arrive twice

The test plays the supervisor (systemd, Kubernetes, compose's restart policy) and starts the
worker again. Every order must complete with one reservation, one inventory.reserved applied
once by each consumer, no event twice in the order's history, and every outbox row sent.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from tasks.faults import HOOK_ENV, POINTS
from tests.helpers import scrape, settled, wait_for

pytestmark = pytest.mark.e2e
ORDERS = 6


def _waiting(settings, queue: str) -> int:
    from choreo.messaging.admin import BrokerAdmin

    with BrokerAdmin(settings) as admin:
        return next(q["messages"] for q in admin.queue_stats() if q["name"] == queue) or 0


@pytest.mark.parametrize("point", POINTS)
def test_a_worker_killed_at_any_point_of_a_batch_loses_and_doubles_nothing(
    point, settings, stack, isolated_redis, tmp_path
):
    from choreo.infra.db import engine_for
    from choreo.infra.metrics import Metrics
    from choreo.messaging.topology import Names
    from choreo.ops.stack import Stack
    from choreo.ops.workload import publish_orders
    from consumers.inventory.tables import Reservation
    from consumers.order.tables import OrderEvent
    from models.tables import Inbox
    from tests.e2e.conftest import start_stack

    queue = Names(settings.namespace).queue("inventory")
    metrics = Metrics(isolated_redis, settings.redis_prefix)
    relayed_before = metrics.snapshot()["relayed"].get("inventory", 0)
    marker = tmp_path / "crash-once"
    marker.write_text("armed")
    stack.stop("worker-inventory")
    faulty = None
    try:
        ids = [o for o, _ in publish_orders(settings, ["completed"] * ORDERS, seed=None)]
        wait_for(
            lambda: _waiting(settings, queue) >= ORDERS,
            60,
            what="the paid orders to wait for inventory",
        )
        # Started, not waited for: it dies on its first batch, maybe before anyone sees it consume.
        faulty = Stack(
            settings,
            {
                HOOK_ENV: "tests.e2e.crash_hook",
                "CHOREO_FAULT_CRASH_POINT": point,
                "CHOREO_FAULT_CRASH_DOMAIN": "inventory",
                "CHOREO_FAULT_MARKER": str(marker),
            },
        )
        faulty.start("worker-inventory")
        wait_for(lambda: not marker.exists(), 60, what=f"the fault at {point} to fire")
        wait_for(lambda: faulty.pid("worker-inventory") is None, 30, what="the worker to die")
        faulty.start("worker-inventory")  # the supervisor's restart, the marker gone

        assert set(settled(settings, ids, timeout=120).values()) == {("COMPLETED", None)}
        with Session(engine_for(settings, "inventory")) as s:
            reserved = s.exec(
                select(Reservation.order_id).where(Reservation.order_id.in_(ids))
            ).all()
            assert sorted(reserved) == sorted(ids)
        wait_for(
            lambda: _unsent(engine_for(settings, "inventory"), ids) == 0,
            30,
            what="the relay to send the rest",
        )
        # Each consumer applied exactly one inventory.reserved per order: a re-run emitted the
        # same event ids (derived from the cause), so what arrived twice was absorbed.
        for consumer in ("order", "shipment"):
            with Session(engine_for(settings, consumer)) as s:
                rows = s.exec(
                    select(Inbox.order_id, func.count())
                    .where(Inbox.order_id.in_(ids), Inbox.type == "inventory.reserved")
                    .group_by(Inbox.order_id)
                ).all()
            assert sorted(rows) == sorted((o, 1) for o in ids), consumer
        with Session(engine_for(settings, "order")) as s:
            for order_id in ids:
                types = s.exec(
                    select(OrderEvent.type)
                    .where(OrderEvent.order_id == order_id)
                    .order_by(OrderEvent.version)
                ).all()
                assert len(types) == len(set(types)), f"{order_id}: {types}"
        if (
            point != "before_commit"
        ):  # committed and then killed: the relay published what was stranded
            wait_for(
                lambda: metrics.snapshot()["relayed"].get("inventory", 0) > relayed_before,
                30,
                what="the relay to count the stranded events",
            )
            # ...which the restarted worker's own Prometheus counter and its spans say too: a relay
            # publish is a PRODUCER span under, and linked to, the span that staged the event.
            samples = scrape(settings, "inventory")
            assert (
                samples[("choreo_relay_published_total", frozenset({("service", "inventory")}))]
                >= 1
            )
            relayed = wait_for(lambda: _relay_spans(settings, ids), 20, what="the relay's spans")
            for span in relayed:
                assert span["kind"] == "PRODUCER" and span["name"] == "send inventory.reserved"
                assert [link["span_id"] for link in span["links"]] == [span["parent_span_id"]]
    finally:
        if faulty is not None:
            faulty.stop("worker-inventory")
        start_stack(settings, names=["worker-inventory"])


def _relay_spans(settings, ids: list[str]) -> list[dict]:
    import json

    spans = [
        json.loads(line)
        for f in settings.trace_dir.glob("inventory-*.jsonl")
        for line in f.read_text().splitlines()
        if '"choreo.relay"' in line
    ]
    return [s for s in spans if s["attributes"].get("choreo.order_id") in ids]


def _unsent(engine, ids: list[str]) -> int:
    from models.tables import Outbox

    with Session(engine) as s:
        return s.exec(
            select(func.count())
            .select_from(Outbox)
            .where(Outbox.order_id.in_(ids), Outbox.sent_at.is_(None))
        ).one()
