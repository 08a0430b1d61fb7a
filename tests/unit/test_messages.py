"""Message declarations: one class statement says a message's routing key, owners and version."""

from __future__ import annotations

import pytest

from choreo.messaging import access
from consumers.orchestrator.messages import ChargePayment
from consumers.order.messages import OrderPlaced
from consumers.payment.messages import PaymentCompleted
from consumers.registry import modes, subscriptions
from models.envelope import PAYLOADS, Message, make_envelope


def test_a_declaration_registers_the_type_under_its_key():
    assert PAYLOADS["payment.completed"] is PaymentCompleted
    assert PaymentCompleted.routing_key == "payment.completed"
    assert PaymentCompleted.owners == frozenset({"payment"})
    assert PaymentCompleted.version == 1


def test_every_registered_type_names_its_key_and_an_owner():
    for key, kind in PAYLOADS.items():
        assert kind.routing_key == key
        assert kind.owners


def test_a_key_declared_twice_is_refused():
    with pytest.raises(TypeError, match="declared twice"):

        class Again(Message, key="payment.completed", owner="payment"):
            pass

    assert PAYLOADS["payment.completed"] is PaymentCompleted


def test_a_message_without_an_owner_is_refused():
    with pytest.raises(TypeError, match="names no owner"):

        class Orphan(Message, key="orphan.said"):
            pass

    assert "orphan.said" not in PAYLOADS


def test_broker_permissions_follow_the_declarations():
    assert access.owners("charge_payment") == ChargePayment.owners == {"orchestrator"}
    assert access.owners("place_order") == {"operator", "client"}
    assert access.owners("no.such_type") == frozenset()


def test_subscriptions_are_keyed_by_class_and_looked_up_by_key():
    for mode, tables in modes().items():
        for domain, table in tables.items():
            assert all(isinstance(k, type) and issubclass(k, Message) for k in table)
            assert set(subscriptions(mode)[domain]) == {k.routing_key for k in table}


def test_a_typed_payload_goes_on_the_wire_as_the_schema_renders_it():
    order = {
        "customer_id": "c1",
        "items": [{"sku": "A", "qty": 1, "unit_price_cents": 5}],
        "address": "1 Road",
        "amount_cents": 5,
    }
    typed = make_envelope(
        "order.placed",
        "o1",
        OrderPlaced.model_validate({"order": order, "card_token": "tok"}),
        source="order",
    )
    plain = make_envelope(
        "order.placed", "o1", {"order": order, "card_token": "tok"}, source="order"
    )
    assert typed.payload == plain.payload
    assert list(typed.payload) == ["order", "card_token"]


def test_parsed_checks_the_kind_the_handler_expects():
    env = make_envelope(
        "charge_payment",
        "o1",
        {
            "order": {
                "customer_id": "c1",
                "items": [{"sku": "A", "qty": 1, "unit_price_cents": 5}],
                "address": "1 Road",
                "amount_cents": 5,
            },
            "card_token": "tok",
        },
        source="orchestrator",
    )
    assert isinstance(env.parsed((OrderPlaced, ChargePayment)), ChargePayment)
    with pytest.raises(TypeError, match="not what this handler handles"):
        env.parsed(PaymentCompleted)
