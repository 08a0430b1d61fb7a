"""Saga deadlines: the order's decision on a due timer, the timer rows kept in the order's own
transactions, and every service undoing (or refusing) what it is asked to do for an expired
order. Real adapter and SQLite units of work (tests.unit.handler_harness), fakes for the rest."""

from __future__ import annotations

from datetime import timedelta

import pytest

from config.catalog import ADDRESS_OK, CARD_OK
from config.settings import Settings
from consumers.inventory.tables import Reservation, StockDecision
from consumers.orchestrator.rules import Saga, react
from consumers.order import rules as domain
from consumers.order import timers
from consumers.order.tables import OrderDeadline, OrderEvent, OrderView
from consumers.payment.tables import PaymentDecision
from consumers.shipment.tables import Shipment
from models.envelope import Envelope
from models.tables import utcnow
from tests.unit.handler_harness import Harness
from tests.unit.test_handlers import paid, snapshot


@pytest.fixture
def make(tmp_path):
    made: list[Harness] = []

    def build(domain: str) -> Harness:
        # The tests fire timers on a clock moved ahead and deliver the firings on the real one (in a
        # worker both are one clock): allow them to lie that far ahead.
        h = Harness(domain, tmp_path / f"{len(made)}-{domain}", max_clock_skew=86400.0)
        made.append(h)
        return h

    yield build
    for h in made:
        h.close()


PLACED = domain.OrderPlaced("cust-1", [{"sku": "SKU-RED", "qty": 1}], ADDRESS_OK, CARD_OK, 1500)


def order_in(*facts: domain.Event) -> domain.Order:
    return domain.fold("ord-1", [PLACED, *facts])


# --- the order's decision ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facts", "step"),
    [
        ((), "payment"),
        ((domain.PaymentCaptured("ch", 1500),), "inventory"),
        ((domain.PaymentCaptured("ch", 1500), domain.StockReserved("r")), "shipment"),
        ((domain.PaymentCaptured("ch", 1500),), "saga"),
    ],
)
def test_a_due_deadline_cancels_the_order_waiting_on_its_step(facts, step):
    order = order_in(*facts)
    events = domain.expire(order, step)
    assert events == [domain.DeadlinePassed(step), domain.OrderCancelled(f"timeout:{step}")]
    after = domain.fold("ord-1", [PLACED, *facts, *events])
    assert (after.state, after.reason) == ("CANCELLED", f"timeout:{step}")
    said = [domain.announcement(after, e) for e in events]
    assert said[0] == (
        "order.expired",
        {"customer_id": "cust-1", "step": step, "reason": f"timeout:{step}"},
    )
    assert said[1] == (
        "order.cancelled",
        {"customer_id": "cust-1", "reason": f"timeout:{step}", "amount_cents": 1500},
    )


@pytest.mark.parametrize(
    ("facts", "step"),
    [
        # the answer came first: a deadline for a step the order has left
        ((domain.PaymentCaptured("ch", 1500),), "payment"),
        ((domain.PaymentCaptured("ch", 1500), domain.StockReserved("r")), "inventory"),
        # after completion, the saga's deadline (or any) does nothing
        (
            (
                domain.PaymentCaptured("ch", 1500),
                domain.StockReserved("r"),
                domain.ShipmentDispatched("s"),
                domain.OrderCompleted(),
            ),
            "saga",
        ),
        # failing and compensating: the business failure ends it, not the clock
        ((domain.PaymentCaptured("ch", 1500), domain.StockUnavailable("out", ["X"])), "saga"),
        # a second firing of a deadline that already cancelled it
        ((domain.DeadlinePassed("payment"), domain.OrderCancelled("timeout:payment")), "saga"),
        ((domain.PaymentDeclined("no", "card"), domain.OrderCancelled("declined")), "payment"),
    ],
)
def test_a_stale_deadline_changes_nothing(facts, step):
    assert domain.expire(order_in(*facts), step) == []


def test_an_answer_after_expiry_is_kept_in_the_history_and_the_order_stays_cancelled():
    expired = order_in(domain.DeadlinePassed("payment"), domain.OrderCancelled("timeout:payment"))
    late = domain.record(expired, domain.PaymentCaptured("ch", 1500))
    assert late == [domain.PaymentCaptured("ch", 1500)]  # recorded, no decision
    after = domain.apply(expired, late[0])
    assert (after.state, after.reason) == ("CANCELLED", "timeout:payment")
    refunded = domain.record(after, domain.PaymentRefunded(1500, "timeout:payment"))
    assert refunded == [domain.PaymentRefunded(1500, "timeout:payment")]


def test_an_expiry_whose_compensation_fails_for_good_needs_an_operator():
    """The card's refunds always fail: the expired order cannot be made whole, so it is not left
    looking CANCELLED with the money kept."""
    expired = order_in(
        domain.PaymentCaptured("ch", 1500),
        domain.DeadlinePassed("inventory"),
        domain.OrderCancelled("timeout:inventory"),
    )
    failed = domain.AttentionRequired("compensation_failed", "payment", "order.expired", "refused")
    after = domain.apply(expired, domain.record(expired, failed)[0])
    assert (after.state, after.reason) == ("NEEDS_ATTENTION", "compensation_failed")
    # the refund done after all (an operator replayed it): cancelled, as the deadline said
    refunded = domain.PaymentRefunded(1500, "timeout:inventory")
    settled = domain.apply(after, domain.record(after, refunded)[0])
    assert (settled.state, settled.reason) == ("CANCELLED", "timeout:inventory")
    # a dead letter of anything else after the end leaves a settled order as it ended
    other = domain.AttentionRequired("dead_lettered:shipment", "shipment", "x", "poison")
    assert domain.apply(expired, other).state == "CANCELLED"


# --- the timer rows, in the order's transactions -----------------------------------------------


def place(h: Harness, order_id: str = "ord-1") -> dict:
    placed = h.deliver(
        "place_order",
        order_id,
        {
            "customer_id": "cust-1",
            "items": [{"sku": "SKU-RED", "qty": 1}],
            "card_token": CARD_OK,
            "address": ADDRESS_OK,
        },
    )
    return placed.one("order.placed").payload["order"]


def fire(h: Harness, after_seconds: float) -> list[Envelope]:
    return timers.fire_due(h.engine, h.settings, utcnow() + timedelta(seconds=after_seconds))


def test_each_step_moves_the_timer_and_the_end_deletes_it(make):
    h = make("order")
    s = Settings()
    order = place(h)
    row = h.row(OrderDeadline, "ord-1")
    assert row.step == "payment" and row.fired == 0
    assert row.saga_due_at - row.step_due_at == timedelta(
        seconds=s.deadline_saga - s.deadline_payment
    )
    h.deliver("payment.completed", "ord-1", paid(order))
    moved = h.row(OrderDeadline, "ord-1")
    assert moved.step == "inventory" and moved.due_at > row.due_at
    assert moved.saga_due_at == row.saga_due_at  # the saga's clock runs from placement
    h.deliver("inventory.reserved", "ord-1", {"reservation_id": "r-1", "order": order})
    assert h.row(OrderDeadline, "ord-1").step == "shipment"
    h.deliver("shipment.created", "ord-1", {"shipment_id": "s-1", "tracking_code": "T"})
    assert h.row(OrderDeadline, "ord-1") is None
    assert fire(h, s.deadline_saga * 2) == []  # a completed saga has no timer left to fire


def test_a_due_timer_fires_through_the_outbox_is_rearmed_and_cancels_the_order_once(make):
    h = make("order")
    order = place(h)
    h.deliver("payment.completed", "ord-1", paid(order))
    assert fire(h, 1) == []  # not due yet
    late = h.settings.deadline_inventory + 1
    (due,) = fire(h, late)
    assert (due.type, due.order_id, due.payload["step"]) == ("order.deadline", "ord-1", "inventory")
    row = h.row(OrderDeadline, "ord-1")
    assert row.fired == 1  # re-armed: a firing lost on the way fires again
    (again,) = fire(h, late + h.settings.timer_refire + 1)
    assert again.event_id != due.event_id and again.payload == due.payload

    expired = h.deliver_envelope(due)
    assert expired.types == ["order.expired", "order.cancelled"]
    assert expired[0].payload["reason"] == "timeout:inventory"
    view = h.row(OrderView, "ord-1")
    assert (view.state, view.reason) == ("CANCELLED", "timeout:inventory")
    assert h.row(OrderDeadline, "ord-1") is None  # ended: no timer left
    assert h.deliver_envelope(again) == []  # the repeat firing: nothing twice
    types = [e.type for e in sorted(h.rows(OrderEvent), key=lambda e: e.version)]
    assert types.count("DeadlinePassed") == 1 and types[-1] == "OrderCancelled"


def test_an_answer_and_its_deadline_together_end_the_order_one_way(make):
    h = make("order")
    order = place(h)
    (due,) = fire(h, h.settings.deadline_payment + 1)
    # the answer first: the deadline finds the order moved on, and the next timer stays armed
    assert h.deliver("payment.completed", "ord-1", paid(order)) == []
    assert h.deliver_envelope(due) == []
    assert h.row(OrderView, "ord-1").state == "PAID"
    assert h.row(OrderDeadline, "ord-1").step == "inventory"

    # the deadline first: the late answer is history, the order stays cancelled
    order2 = place(h, "ord-2")
    (due2,) = [e for e in fire(h, h.settings.deadline_payment + 1) if e.order_id == "ord-2"]
    assert h.deliver_envelope(due2).types == ["order.expired", "order.cancelled"]
    assert h.deliver("payment.completed", "ord-2", paid(order2)) == []
    view = h.row(OrderView, "ord-2")
    assert (view.state, view.reason) == ("CANCELLED", "timeout:payment")


def test_the_saga_deadline_fires_first_when_it_is_the_earlier(make, monkeypatch):
    monkeypatch.setenv("CHOREO_DEADLINE_SAGA", "10")
    monkeypatch.setenv("CHOREO_DEADLINE_PAYMENT", "60")
    from config.settings import get_settings

    get_settings.cache_clear()
    try:
        h = make("order")
        place(h)
        row = h.row(OrderDeadline, "ord-1")
        assert row.step == "saga" and row.due_at == row.saga_due_at
    finally:
        get_settings.cache_clear()


# --- each service undoes, or refuses, what it is asked to do for an expired order -------------


def expired(step: str) -> dict:
    return {"customer_id": "cust-1", "step": step, "reason": f"timeout:{step}"}


def test_payment_refunds_a_late_charge_and_refuses_a_charge_asked_after_expiry(make):
    h = make("payment")
    order = snapshot(("SKU-RED", 1))
    # late: the charge, then the expiry behind it in the queue -> charged, then refunded in full
    assert h.deliver("order.placed", "ord-1", {"order": order, "card_token": CARD_OK}).types == [
        "payment.completed"
    ]
    refunded = h.deliver("order.expired", "ord-1", expired("payment"))
    assert refunded.types == ["payment.refunded"]
    assert refunded[0].payload["amount_cents"] == order["amount_cents"]
    assert h.gateway.moved("ord-1") == {
        "charge": order["amount_cents"],
        "refund": order["amount_cents"],
    }

    # overtaken: the expiry first -> decided, and the late order.placed charges nothing
    assert h.deliver("order.expired", "ord-2", expired("payment")).types == ["payment.refunded"]
    assert h.row(PaymentDecision, "ord-2").outcome == "cancelled"
    assert h.deliver("order.placed", "ord-2", {"order": order, "card_token": CARD_OK}) == []
    assert h.gateway.moved("ord-2") == {"charge": 0, "refund": 0}
    assert h.deliver("order.expired", "ord-2", expired("saga")) == []  # once


def test_inventory_releases_a_late_reservation_and_refuses_one_asked_after_expiry(make):
    h = make("inventory")
    order = snapshot(("SKU-RED", 1))
    assert h.deliver("payment.completed", "ord-1", paid(order)).types == ["inventory.reserved"]
    assert h.deliver("order.expired", "ord-1", expired("inventory")).types == ["inventory.released"]
    assert h.row(Reservation, "ord-1").status == "released"

    assert h.deliver("order.expired", "ord-2", expired("payment")) == []
    assert h.row(StockDecision, "ord-2").outcome == "released"
    assert h.deliver("payment.completed", "ord-2", paid(order)) == []  # never reserved
    assert h.row(Reservation, "ord-2") is None


def test_shipment_cancels_a_late_shipment_and_refuses_one_asked_after_expiry(make):
    h = make("shipment")
    order = snapshot(("SKU-RED", 1))
    reserved = {"reservation_id": "r-1", "order": order}
    assert h.deliver("inventory.reserved", "ord-1", reserved).types == ["shipment.created"]
    cancelled = h.deliver("order.expired", "ord-1", expired("shipment"))
    assert cancelled.types == ["shipment.cancelled"]
    assert cancelled[0].payload["shipment_id"] == h.row(Shipment, "ord-1").shipment_id
    assert h.row(Shipment, "ord-1").status == "cancelled"
    assert h.deliver("order.expired", "ord-1", expired("saga")) == []  # once

    first = h.deliver("order.expired", "ord-2", expired("inventory"))
    assert first.types == ["shipment.cancelled"] and first[0].payload["shipment_id"] is None
    assert h.deliver("inventory.reserved", "ord-2", reserved) == []  # never shipped
    assert h.row(Shipment, "ord-2").status == "cancelled"


# --- the orchestrated saga -------------------------------------------------------------------

ORDER = {"customer_id": "cust-1", "items": [], "address": ADDRESS_OK, "amount_cents": 1500}


def run(saga: Saga, *events: tuple[str, dict]) -> tuple[Saga, list[str]]:
    sent: list[str] = []
    for type_, payload in events:
        saga, commands = react(saga, type_, payload)
        sent += [c for c, _ in commands]
    return saga, sent


def test_orchestrated_expiry_undoes_what_was_done_and_every_late_answer():
    started = (("order.placed", {"order": ORDER, "card_token": CARD_OK}),)
    # timed out waiting on inventory: refund now; the late reservation is released when it comes
    saga, sent = run(
        Saga("o"),
        *started,
        ("payment.completed", {}),
        ("order.expired", {"reason": "timeout:inventory"}),
        ("payment.refunded", {}),
        ("inventory.reserved", {}),
    )
    assert sent == ["charge_payment", "reserve_stock", "refund_payment", "release_stock"]
    assert (saga.status, saga.failure) == ("cancelled", "timeout:inventory")
    # timed out waiting on shipment, and the shipment made late is cancelled
    saga, sent = run(
        Saga("o"),
        *started,
        ("payment.completed", {}),
        ("inventory.reserved", {}),
        ("order.expired", {"reason": "timeout:shipment"}),
        ("inventory.released", {}),
        ("payment.refunded", {}),
        ("shipment.created", {}),
        ("shipment.cancelled", {}),
    )
    assert sent[3:] == ["release_stock", "refund_payment", "cancel_shipment"]
    assert saga.status == "cancelled" and saga.undone == ("reserve", "charge", "ship")


def test_orchestrated_expiry_before_the_placement_starts_nothing_and_completion_ignores_it():
    saga, sent = run(
        Saga("o"),
        ("order.expired", {"reason": "timeout:payment"}),
        ("order.placed", {"order": ORDER, "card_token": CARD_OK}),
    )
    assert sent == [] and saga.status == "cancelled"
    done, _ = run(
        Saga("o"),
        ("order.placed", {"order": ORDER, "card_token": CARD_OK}),
        ("payment.completed", {}),
        ("inventory.reserved", {}),
        ("shipment.created", {}),
    )
    assert done.status == "completed"
    assert react(done, "order.expired", {"reason": "timeout:saga"}) == (done, [])


def test_a_late_answer_replayed_from_a_dlq_after_expiry_is_refused(make, monkeypatch):
    """payment.completed dead-lettered at inventory (a fault that outlived its retries), the order
    expires meanwhile, then the operator replays the dead letter: nothing is reserved."""
    import consumers.inventory.handlers as inventory

    h = make("inventory")
    order = snapshot(("SKU-RED", 1))

    def broken(items):
        raise RuntimeError("stock table unreadable (injected)")

    monkeypatch.setattr(inventory, "merged", broken)
    paid_late = h.envelope("payment.completed", "ord-1", paid(order))
    [out] = h.deliver_batch([paid_late], attempt=h.settings.retry_max_attempts)
    assert out.outcome.kind == "dead_lettered"
    [letter] = [m for m in h.burst.sent if m["task_id"] == paid_late.event_id]
    monkeypatch.undo()  # the operator fixed the cause

    assert h.deliver("order.expired", "ord-1", expired("inventory")) == []
    [replayed] = h.deliver_batch([h.returned(letter, replayed=True)])
    assert replayed.outcome.kind == "processed" and replayed == []
    assert h.row(Reservation, "ord-1") is None
    assert h.row(StockDecision, "ord-1").outcome == "released"
