"""Deadlines on the real stack: stop the service a saga waits on past its deadline; the order ends
cancelled (timeout:<step>), what was done is undone once, the customer is told once; the service
comes back, drains its backlog, and every late answer is undone too.

Each mode gets a stack of its own (namespace, run and data folders) with deadlines of seconds.
"""

from __future__ import annotations

from collections import Counter

import pytest
from sqlmodel import Session, select

from tests.helpers import queues_idle, wait_for

pytestmark = pytest.mark.e2e

DEADLINE = 3  # each step's, in seconds; the saga's is longer
# step -> (the worker stopped, the late answer the order hears, that answer's undoing)
STEPS = {
    "payment": ("worker-payment", "PaymentCaptured", "PaymentRefunded"),
    "inventory": ("worker-inventory", "StockReserved", "StockReleased"),
    "shipment": ("worker-shipment", "ShipmentDispatched", "ShipmentWithdrawn"),
}


def short_deadlines(settings, root, mode: str = "choreography"):
    """Settings (and the environment that says them to the workers) of a stack of its own whose
    deadlines are seconds long, in the saga mode given."""
    from tests.e2e.conftest import own_stack_settings

    return own_stack_settings(
        settings,
        root,
        "dl",
        saga_mode=mode,
        deadline_payment=DEADLINE,
        deadline_inventory=DEADLINE,
        deadline_shipment=DEADLINE,
        deadline_saga=60,
        timer_interval=0.2,
        timer_refire=2,
    )


@pytest.fixture(scope="module", params=["choreography", "orchestrated"])
def short(request, settings, tmp_path_factory):
    """A stack whose deadlines are seconds long, in the saga mode given."""
    from choreo.ops.stack import process_names
    from tests.e2e.conftest import start_stack

    mode = request.param
    s, env = short_deadlines(settings, tmp_path_factory.mktemp(f"deadlines-{mode}"), mode)
    stack = start_stack(s, env=env, names=[n for n in process_names(s) if n != "flower"])
    yield s, stack
    for name in reversed(process_names(s)):
        stack.stop(name)


def timeline(settings, order_id: str) -> list[str]:
    from choreo.infra.db import engine_for
    from consumers.order.tables import OrderEvent

    with Session(engine_for(settings, "order")) as s:
        rows = s.exec(
            select(OrderEvent.type)
            .where(OrderEvent.order_id == order_id)
            .order_by(OrderEvent.version)
        )
        return list(rows)


def books(settings, order_id: str) -> dict:
    """What the services hold for the order: money moved at the gateway, the reservation's and
    the shipment's status, the notifications sent."""
    from choreo.infra.db import engine_for
    from consumers.inventory.tables import Reservation
    from consumers.notification.tables import Notification
    from consumers.shipment.tables import Shipment
    from models.tables import GatewayLedger

    def one(service, query):
        with Session(engine_for(settings, service)) as s:
            return list(s.exec(query))

    moved = Counter()
    for kind, cents in one(
        "gateway",
        select(GatewayLedger.kind, GatewayLedger.amount_cents).where(
            GatewayLedger.order_id == order_id
        ),
    ):
        moved[kind] += cents
    reservation = one(
        "inventory", select(Reservation.status).where(Reservation.order_id == order_id)
    )
    shipment = one("shipment", select(Shipment.status).where(Shipment.order_id == order_id))
    notes = one("notification", select(Notification.kind).where(Notification.order_id == order_id))
    return {
        "charged": moved["charge"],
        "refunded": moved["refund"],
        "reservation": reservation[0] if reservation else None,
        "shipment": shipment[0] if shipment else None,
        "notifications": sorted(notes),
    }


def test_each_step_past_its_deadline_cancels_and_every_late_answer_is_undone(short):
    """Three orders, each stopped at a different step: shipment goes away with one order
    RESERVED, inventory with another PAID, payment with a third just placed. All three expire
    with their step; then all three services come back together and drain their backlogs."""
    from choreo.app.queries import order_states
    from choreo.ops.audit import run_audit
    from choreo.ops.stack import wait_consuming
    from choreo.ops.workload import publish_orders

    s, stack = short
    waits = {"shipment": "RESERVED", "inventory": "PAID", "payment": None}
    orders: dict[str, str] = {}
    try:
        for step, reached in waits.items():
            stack.stop_on_purpose(STEPS[step][0])
            ((orders[step], _),) = publish_orders(s, ["completed"], seed=None)
            if reached:
                wait_for(
                    lambda o=orders[step], r=reached: (
                        order_states(s, [o]).get(o, ("",))[0] in (r, "CANCELLED")
                    ),
                    timeout=30,
                    what=f"the order to wait on {step}",
                )
        for step, order_id in orders.items():
            wait_for(
                lambda o=order_id: order_states(s, [o]).get(o, ("",))[0] == "CANCELLED",
                timeout=DEADLINE * 10,
                what=f"the order cancelled by its {step} deadline",
            )
            assert order_states(s, [order_id])[order_id] == ("CANCELLED", f"timeout:{step}")
            # while the services are still away: cancelled once, the customer told once
            wait_for(lambda o=order_id: books(s, o)["notifications"] == ["cancelled"], 30)
    finally:
        for step in waits:
            stack.start(STEPS[step][0])
    wait_consuming(s, stack, [STEPS[step][0] for step in waits], timeout=60)
    # Back: each drains its backlog (the request that waited, then the expiry behind it).
    for step, order_id in orders.items():
        _, late, undone = STEPS[step]
        wait_for(
            lambda o=order_id, u=undone: u in timeline(s, o),
            timeout=60,
            what=f"{undone} after the late {late}",
        )
    queues_idle(s, quiet_for=1.0)

    for step, order_id in orders.items():
        _, late, _ = STEPS[step]
        events = timeline(s, order_id)
        assert events.count("DeadlinePassed") == 1 and events.count("OrderCancelled") == 1
        expired_at = events.index("DeadlinePassed")
        assert late in events[expired_at:], f"no late {late} after the expiry: {events}"
        assert "OrderCompleted" not in events
        held = books(s, order_id)
        assert held["charged"] == held["refunded"]  # the gateway ledger nets to zero
        assert held["reservation"] in (None, "released")
        assert held["shipment"] in (None, "cancelled")
        assert held["notifications"] == ["cancelled"]
        assert order_states(s, [order_id])[order_id] == ("CANCELLED", f"timeout:{step}")
    failed = {c.name: c.problems for c in run_audit(s) if not c.passed}
    assert failed == {}, failed
