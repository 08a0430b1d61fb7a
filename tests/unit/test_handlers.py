"""Each domain's handlers through the real adapter and a real SQLite unit of work, with fakes for
everything remote."""

from __future__ import annotations

import pytest

from choreo.app.outbox import count_unsent
from config.catalog import ADDRESS_OK, CARD_DECLINED, CARD_OK, PRICES_CENTS, SKU_SOLD_OUT
from consumers.inventory.tables import Reservation, Stock, StockDecision
from consumers.notification.tables import Notification
from consumers.orchestrator.tables import SagaState
from consumers.order.tables import OrderEvent, OrderView
from consumers.payment.tables import Charge, PaymentDecision, Refund
from tests.unit.handler_harness import Harness


@pytest.fixture
def make(tmp_path):
    made: list[Harness] = []

    def build(domain: str, mode: str = "choreography", **kw) -> Harness:
        h = Harness(domain, tmp_path / f"{len(made)}-{domain}", mode=mode, **kw)
        made.append(h)
        return h

    yield build
    for h in made:
        h.close()


def snapshot(*lines: tuple[str, int], customer_id: str = "cust-1") -> dict:
    """An order as the order service announces it: priced from the seller's catalog."""
    items = [{"sku": sku, "qty": qty, "unit_price_cents": PRICES_CENTS[sku]} for sku, qty in lines]
    return {
        "customer_id": customer_id,
        "items": items,
        "address": ADDRESS_OK,
        "amount_cents": sum(i["qty"] * i["unit_price_cents"] for i in items),
    }


def paid(order: dict, charge_id: str = "ch_test") -> dict:
    return {"charge_id": charge_id, "amount_cents": order["amount_cents"], "order": order}


def stock(h: Harness) -> dict[str, tuple[int, int]]:
    return {r.sku: (r.available, r.reserved) for r in h.rows(Stock)}


# --- inventory ----------------------------------------------------------------------------


def test_a_release_that_overtakes_its_reservation_releases_nothing_and_blocks_the_late_reservation(
    make,
):
    h = make("inventory")
    before = stock(h)

    early = h.deliver("shipment.failed", "ord-1", {"reason": "address_undeliverable"})
    assert early == [] and early.outcome.kind == "processed"
    assert stock(h) == before  # nothing was reserved, so nothing may be put back
    assert h.rows(Reservation) == []
    assert h.row(StockDecision, "ord-1").outcome == "released"

    late = h.deliver("payment.completed", "ord-1", paid(snapshot(("SKU-RED", 3))))
    assert late == [] and late.outcome.kind == "processed"
    assert stock(h) == before
    assert h.rows(Reservation) == []
    assert h.row(StockDecision, "ord-1").outcome == "released"


def test_a_reservation_moves_stock_and_a_sold_out_sku_moves_none(make):
    h = make("inventory")
    before = stock(h)
    order = snapshot(
        ("SKU-RED", 2), ("SKU-BLUE", 1), ("SKU-RED", 1)
    )  # same SKU twice: quantities add up

    ok = h.deliver("payment.completed", "ord-ok", paid(order))
    reserved = ok.one("inventory.reserved")
    assert ok.types == ["inventory.reserved"]
    assert reserved.payload["order"] == order
    assert reserved.payload["reservation_id"] == h.row(Reservation, "ord-ok").reservation_id
    after = stock(h)
    assert after["SKU-RED"] == (before["SKU-RED"][0] - 3, before["SKU-RED"][1] + 3)
    assert after["SKU-BLUE"] == (before["SKU-BLUE"][0] - 1, before["SKU-BLUE"][1] + 1)
    assert after["SKU-GREEN"] == before["SKU-GREEN"]
    assert count_unsent(h.engine) == 0  # published after commit, then marked sent

    # The in-stock line comes first (SKUs are reserved in sorted order): the savepoint must undo it.
    failed = h.deliver(
        "payment.completed", "ord-no", paid(snapshot(("SKU-RED", 1), (SKU_SOLD_OUT, 1)))
    )
    assert failed.types == ["inventory.failed"]
    assert failed[0].payload == {"reason": "out_of_stock", "skus": [SKU_SOLD_OUT]}
    assert stock(h) == after
    assert h.row(Reservation, "ord-no") is None
    assert h.row(StockDecision, "ord-no").outcome == "out_of_stock"


# --- payment ------------------------------------------------------------------------------


def test_a_refund_for_an_order_never_charged_refunds_zero_without_calling_the_gateway(make):
    h = make("payment")

    out = h.deliver("inventory.failed", "ord-1", {"reason": "out_of_stock", "skus": [SKU_SOLD_OUT]})

    assert out.types == ["payment.refunded"]
    assert out[0].payload == {"refund_id": None, "amount_cents": 0, "reason": "out_of_stock"}
    refund = h.row(Refund, "ord-1")
    assert (refund.amount_cents, refund.refund_id, refund.reason) == (0, None, "out_of_stock")
    assert h.gateway.refunds == [] and h.gateway.charges == []


def test_a_declined_card_is_a_decision_payment_failed_and_no_charge(make):
    h = make("payment")
    order = snapshot(("SKU-GREEN", 1))

    out = h.deliver("order.placed", "ord-1", {"order": order, "card_token": CARD_DECLINED})

    assert out.types == ["payment.failed"]
    assert out[0].payload == {"reason": "payment_declined", "code": "card_declined"}
    decision = h.row(PaymentDecision, "ord-1")
    assert (decision.outcome, decision.reason) == ("declined", "payment_declined")
    assert h.rows(Charge) == []
    assert h.gateway.moved("ord-1") == {"charge": 0, "refund": 0}

    # A new event id for the same order: the recorded decision answers, the card is not tried again.
    again = h.deliver("order.placed", "ord-1", {"order": order, "card_token": CARD_DECLINED})
    assert again == [] and len(h.gateway.charges) == 1


def test_a_compensation_refunds_exactly_what_was_charged_once(make):
    h = make("payment")
    order = snapshot(("SKU-RED", 2), ("SKU-BLUE", 1))

    charged = h.deliver("order.placed", "ord-1", {"order": order, "card_token": CARD_OK})
    completed = charged.one("payment.completed")
    charge = h.row(Charge, "ord-1")
    assert completed.payload == {
        "charge_id": charge.charge_id,
        "amount_cents": order["amount_cents"],
        "order": order,
    }
    assert h.gateway.moved("ord-1") == {"charge": order["amount_cents"], "refund": 0}

    refunded = h.deliver("shipment.failed", "ord-1", {"reason": "address_undeliverable"})
    assert refunded.types == ["payment.refunded"]
    assert refunded[0].payload["amount_cents"] == charge.amount_cents
    assert refunded[0].payload["reason"] == "address_undeliverable"
    assert refunded[0].payload["refund_id"] == h.row(Refund, "ord-1").refund_id is not None
    assert h.gateway.refunds == [("ord-1", charge.amount_cents, CARD_OK)]

    # Another failure report for the same order (another service, new event id): already refunded.
    second = h.deliver("inventory.failed", "ord-1", {"reason": "out_of_stock", "skus": ["SKU-RED"]})
    assert second == [] and second.outcome.kind == "processed"
    assert len(h.gateway.refunds) == 1 and len(h.rows(Refund)) == 1
    assert h.gateway.moved("ord-1") == {
        "charge": charge.amount_cents,
        "refund": charge.amount_cents,
    }


def test_a_refund_the_gateway_refuses_commits_nothing_so_the_retry_refunds_once(make):
    h = make("payment")
    order = snapshot(("SKU-GREEN", 3))
    h.deliver("order.placed", "ord-1", {"order": order, "card_token": CARD_OK})
    h.gateway.refunds_fail = True
    failure = h.envelope("shipment.failed", "ord-1", {"reason": "address_undeliverable"})

    refused = h.deliver_envelope(failure)
    assert refused == [] and refused.outcome.kind == "retry"
    assert h.rows(Refund) == []
    assert h.burst.published[-1].type == "payment.completed"  # nothing new went out
    [copy] = h.burst.sent  # to the first rung of the retry ladder, the error with it
    assert (copy["exchange"], copy["routing_key"]) == (h.rt.names.retry_exchange, "payment.1")
    assert copy["headers"]["choreo_attempt"] == 1
    assert (
        copy["headers"]["x-choreo-sender"] == "shipment"
    )  # who sent the original: a claim its record proves on the way back
    assert "processor unavailable" in copy["headers"]["choreo_last_error"]

    # The retry ladder redelivers the same event: the inbox must not have marked it processed.
    h.gateway.refunds_fail = False
    retried = h.deliver_envelope(failure)
    assert retried.types == ["payment.refunded"]
    assert retried[0].payload["amount_cents"] == order["amount_cents"]
    assert h.gateway.moved("ord-1")["refund"] == order["amount_cents"]


# --- notification -------------------------------------------------------------------------


def test_one_notification_per_kind_with_the_customer_looked_up_outside_the_transaction(make):
    h = make("notification")
    h.users.probe = h.write_lock_free
    completed = {"customer_id": "cust-1", "amount_cents": 2598}

    assert h.deliver("order.completed", "ord-1", completed) == []
    assert (
        h.deliver("order.completed", "ord-1", completed).outcome.kind == "processed"
    )  # new event id
    [only] = h.rows(Notification)
    assert (only.kind, only.email) == ("completed", "ada@example.com")
    assert "Ada Lovelace" in only.body and "25.98" in only.body

    h.deliver(
        "order.cancelled",
        "ord-1",
        {"customer_id": "cust-1", "reason": "out_of_stock", "amount_cents": 2598},
    )
    assert sorted(n.kind for n in h.rows(Notification)) == ["cancelled", "completed"]
    assert "out_of_stock" in h.row(Notification, "ord-1", "cancelled").body

    # Looked up on every delivery, and never while the unit of work held the write lock; each
    # request carries its event's id as X-Request-ID.
    assert h.users.calls == [("cust-1", True)] * 3
    assert len(set(h.users.request_ids)) == 3 and all(h.users.request_ids)


def test_the_customer_of_an_order_that_needs_attention_is_told_once(make):
    h = make("notification")
    attention = {
        "customer_id": "cust-1",
        "reason": "compensation_failed",
        "domain": "payment",
        "event_type": "inventory.failed",
        "reopened": False,
        "amount_cents": 2598,
    }
    h.deliver("order.needs_attention", "ord-1", attention)
    h.deliver("order.needs_attention", "ord-1", attention)  # a new event id: told once still
    [only] = h.rows(Notification)
    assert only.kind == "attention" and "ord-1" in only.body and "Ada Lovelace" in only.body


# --- the adapter --------------------------------------------------------------------------


def test_the_same_event_id_twice_is_absorbed_by_redis_and_without_redis_by_the_inbox(make):
    h = make("payment")
    body = {"order": snapshot(("SKU-RED", 1)), "card_token": CARD_OK}

    first = h.deliver("order.placed", "ord-1", body, event_id="ev-1")
    assert first.types == ["payment.completed"]
    assert h.idempotency.seen("payment", ["ev-1"]) == [True]

    second = h.deliver("order.placed", "ord-1", body, event_id="ev-1")
    assert second == [] and (second.outcome.kind, second.outcome.detail) == (
        "duplicate",
        "duplicate absorbed (redis)",
    )

    h.idempotency.keys.clear()  # Redis restarted empty: the inbox table is the truth
    third = h.deliver("order.placed", "ord-1", body, event_id="ev-1")
    assert third == [] and (third.outcome.kind, third.outcome.detail) == (
        "duplicate",
        "duplicate absorbed (inbox)",
    )
    assert h.idempotency.seen("payment", ["ev-1"]) == [True]  # and the fast path knows it again
    assert len(h.gateway.charges) == 1  # the handler never ran again
    assert h.metrics.counts[("duplicates", "payment")] == 2
    assert h.metrics.counts[("processed", "payment")] == 1


# --- orchestrator -------------------------------------------------------------------------


def test_the_orchestrator_keeps_the_saga_between_messages_and_compensates_from_it(make):
    h = make("orchestrator", mode="orchestrated")
    order = snapshot(("SKU-BLUE", 2))

    placed = h.deliver("order.placed", "ord-1", {"order": order, "card_token": CARD_OK})
    assert placed.types == ["charge_payment"]
    assert placed[0].payload == {"order": order, "card_token": CARD_OK}
    saga = h.row(SagaState, "ord-1")
    assert (saga.status, saga.order, saga.card_token, saga.done) == ("running", order, CARD_OK, [])

    # A fresh unit of work: the next command needs the order, which only the stored saga has.
    charged = h.deliver("payment.completed", "ord-1", paid(order))
    assert charged.types == ["reserve_stock"] and charged[0].payload == {"order": order}
    assert h.row(SagaState, "ord-1").done == ["charge"]

    failed = h.deliver(
        "inventory.failed", "ord-1", {"reason": "out_of_stock", "skus": ["SKU-BLUE"]}
    )
    assert failed.types == ["refund_payment"] and failed[0].payload == {"reason": "out_of_stock"}
    saga = h.row(SagaState, "ord-1")
    assert (saga.status, saga.failure, saga.undone) == ("compensating", "out_of_stock", [])

    refunded = h.deliver(
        "payment.refunded",
        "ord-1",
        {"refund_id": "re_1", "amount_cents": order["amount_cents"], "reason": "out_of_stock"},
    )
    assert refunded == []
    saga = h.row(SagaState, "ord-1")
    assert (saga.status, saga.undone) == ("cancelled", ["charge"])


# --- order --------------------------------------------------------------------------------


def test_the_happy_path_facts_complete_the_order_and_its_read_model(make):
    h = make("order")
    lines = [
        {"sku": "SKU-RED", "qty": 2},
        {"sku": "SKU-BLUE", "qty": 1},
    ]  # the seller sets the prices

    placed = h.deliver(
        "place_order",
        "ord-1",
        {"customer_id": "cust-1", "items": lines, "card_token": CARD_OK, "address": ADDRESS_OK},
    )
    announced = placed.one("order.placed")
    order = announced.payload["order"]
    assert order == snapshot(("SKU-RED", 2), ("SKU-BLUE", 1))
    assert announced.payload["card_token"] == CARD_OK
    assert h.row(OrderView, "ord-1").state == "PLACED"

    # Each fact is built from what the order service itself announced, as the other services would.
    assert h.deliver("payment.completed", "ord-1", paid(order, "ch_1")) == []
    assert h.row(OrderView, "ord-1").state == "PAID"
    assert (
        h.deliver("inventory.reserved", "ord-1", {"reservation_id": "res-1", "order": order}) == []
    )
    assert h.row(OrderView, "ord-1").state == "RESERVED"
    shipped = h.deliver(
        "shipment.created", "ord-1", {"shipment_id": "shp-1", "tracking_code": "TRK-1"}
    )

    assert shipped.types == ["order.completed"]
    assert shipped[0].payload == {"customer_id": "cust-1", "amount_cents": order["amount_cents"]}
    view = h.row(OrderView, "ord-1")
    assert (view.state, view.charged_cents, view.refunded_cents) == (
        "COMPLETED",
        order["amount_cents"],
        0,
    )
    assert [e.type for e in sorted(h.rows(OrderEvent), key=lambda e: e.version)] == [
        "OrderPlaced",
        "PaymentCaptured",
        "StockReserved",
        "ShipmentDispatched",
        "OrderCompleted",
    ]
