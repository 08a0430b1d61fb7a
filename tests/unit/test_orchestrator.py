"""The orchestrated saga's decisions: next command, compensation in reverse order, idempotence."""

from __future__ import annotations

from consumers.orchestrator.rules import Saga, react

ORDER = {
    "customer_id": "cust-1",
    "items": [{"sku": "SKU-RED", "qty": 1, "unit_price_cents": 100}],
    "address": "1 Main Street",
    "amount_cents": 100,
}


def run(*events):
    saga, sent = Saga("ord-1"), []
    for ev in events:
        saga, commands = react(
            saga, ev, {"order": ORDER, "card_token": "tok_visa"} if ev == "order.placed" else {}
        )
        sent += [c for c, _ in commands]
    return saga, sent


def test_happy_path_sends_each_step_once():
    saga, sent = run("order.placed", "payment.completed", "inventory.reserved", "shipment.created")
    assert sent == ["charge_payment", "reserve_stock", "create_shipment"]
    assert saga.status == "completed" and saga.done == ("charge", "reserve", "ship")


def test_charge_command_carries_the_card_and_the_order():
    _, commands = react(Saga("ord-1"), "order.placed", {"order": ORDER, "card_token": "tok_visa"})
    assert commands == [("charge_payment", {"order": ORDER, "card_token": "tok_visa"})]


def test_declined_payment_needs_no_compensation():
    saga, sent = run("order.placed", "payment.failed")
    assert sent == ["charge_payment"] and saga.status == "cancelled"


def test_out_of_stock_refunds_the_charge():
    saga, sent = run("order.placed", "payment.completed", "inventory.failed", "payment.refunded")
    assert sent == ["charge_payment", "reserve_stock", "refund_payment"]
    assert saga.status == "cancelled" and saga.undone == ("charge",)


def test_shipment_failure_undoes_steps_in_reverse_order_one_at_a_time():
    saga, sent = run("order.placed", "payment.completed", "inventory.reserved", "shipment.failed")
    assert sent[-1] == "release_stock" and saga.status == "compensating"
    saga, commands = react(saga, "inventory.released", {})
    assert [c for c, _ in commands] == ["refund_payment"]
    saga, commands = react(saga, "payment.refunded", {})
    assert commands == [] and saga.status == "cancelled" and saga.undone == ("reserve", "charge")


def test_compensation_commands_carry_the_failure_reason():
    _, commands = react(run("order.placed", "payment.completed")[0], "inventory.failed", {})
    assert commands == [("refund_payment", {"reason": "out_of_stock"})]


def test_repeated_events_send_nothing_twice():
    saga, sent = run(
        "order.placed",
        "order.placed",
        "payment.completed",
        "payment.completed",
        "inventory.reserved",
        "shipment.created",
        "shipment.created",
    )
    assert sent == ["charge_payment", "reserve_stock", "create_shipment"]


def test_a_dead_lettered_step_fails_the_saga_and_stops_it():
    saga, sent = run(
        "order.placed", "payment.completed", "saga.dead_lettered", "inventory.reserved"
    )
    assert saga.status == "failed" and sent == ["charge_payment", "reserve_stock"]


def test_events_for_an_unknown_saga_are_ignored():
    saga, commands = react(Saga("ord-x"), "payment.completed", {})
    assert commands == [] and saga == Saga("ord-x")
