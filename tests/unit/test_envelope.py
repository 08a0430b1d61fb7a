"""The wire envelope: decode() accepts exactly the valid messages and poisons the rest."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from consumers.order.messages import OrderPlaced
from models.envelope import (
    PAYLOADS,
    TRACEPARENT_RE,
    Envelope,
    PoisonMessage,
    child_trace,
    decode,
    derived_id,
    make_envelope,
    new_trace,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PLACE = {
    "customer_id": "cust-1",
    "items": [{"sku": "SKU-RED", "qty": 2, "unit_price_cents": 1299}],
    "card_token": "tok_visa",
    "address": "1 Main Street, Springfield",
}
SNAPSHOT = {
    "customer_id": "cust-1",
    "items": PLACE["items"],
    "address": PLACE["address"],
    "amount_cents": 2598,
}


def wire(**changes) -> dict:
    """A valid envelope as it travels (JSON), with `changes` applied."""
    raw = json.loads(
        json.dumps(
            make_envelope("place_order", "ord-1", PLACE, source="gateway", now=NOW).to_wire()
        )
    )
    raw.update(changes)
    return raw


def with_payload(**changes) -> dict:
    raw = wire()
    raw["payload"] = {**raw["payload"], **changes}
    return raw


# --- round trip ------------------------------------------------------------------------------


def test_a_made_envelope_round_trips_through_json():
    envelope = make_envelope("place_order", "ord-1", PLACE, source="gateway", now=NOW)
    decoded = decode(json.loads(json.dumps(envelope.to_wire())))
    assert decoded == envelope
    assert decoded.occurred_at == NOW
    assert decoded.parsed().items[0].qty == 2


def test_make_envelope_without_a_cause_starts_a_correlation_and_a_trace():
    envelope = make_envelope("place_order", "ord-1", PLACE, source="gateway", now=NOW)
    assert envelope.correlation_id == "ord-1"
    assert envelope.causation_id is None
    assert re.fullmatch(TRACEPARENT_RE, envelope.traceparent)
    assert uuid.UUID(envelope.event_id)
    assert envelope.schema_version == 1


def test_make_envelope_accepts_a_payload_model():
    model = OrderPlaced.model_validate({"order": SNAPSHOT, "card_token": "tok_visa"})
    envelope = make_envelope("order.placed", "ord-1", model, source="order", event_id="e-1")
    assert envelope.event_id == "e-1"
    assert envelope.payload == {"order": SNAPSHOT, "card_token": "tok_visa"}
    assert envelope.occurred_at.tzinfo is not None


def test_make_envelope_validates_the_payload_before_publishing():
    with pytest.raises(ValidationError):
        make_envelope("order.completed", "ord-1", {"customer_id": "cust-1"}, source="order")


def test_make_envelope_with_a_cause_continues_its_correlation_and_trace():
    cause = make_envelope("place_order", "ord-1", PLACE, source="gateway")
    effect = make_envelope(
        "order.placed",
        "ord-1",
        {"order": SNAPSHOT, "card_token": "tok_visa"},
        source="order",
        cause=cause,
    )
    assert effect.correlation_id == cause.correlation_id
    assert effect.causation_id == cause.event_id
    assert effect.trace_id == cause.trace_id
    assert effect.traceparent != cause.traceparent  # a new span in the same trace
    assert effect.event_id != cause.event_id


def test_correlation_id_survives_a_chain_of_causes():
    first = decode(wire(correlation_id="corr-9"))
    second = make_envelope(
        "order.completed",
        "ord-1",
        {"customer_id": "c", "amount_cents": 1},
        source="order",
        cause=first,
    )
    third = make_envelope(
        "order.cancelled",
        "ord-1",
        {"customer_id": "c", "reason": "r", "amount_cents": 1},
        source="order",
        cause=second,
    )
    assert third.correlation_id == "corr-9"
    assert third.causation_id == second.event_id
    assert third.trace_id == first.trace_id


def test_child_trace_keeps_the_trace_id_with_a_new_span():
    parent = new_trace()
    child = child_trace(parent)
    assert re.fullmatch(TRACEPARENT_RE, child)
    assert child.split("-")[1] == parent.split("-")[1]
    assert child.split("-")[2] != parent.split("-")[2]


def test_derived_id_is_deterministic_and_a_uuid():
    assert derived_id("ord-1", "payment.completed") == derived_id("ord-1", "payment.completed")
    assert uuid.UUID(derived_id("ord-1", "payment.completed")).version == 5


def test_derived_id_differs_for_different_parts():
    assert derived_id("ord-1", "payment.completed") != derived_id("ord-2", "payment.completed")
    assert derived_id("ord-1", "payment.completed") != derived_id("ord-1", "payment.failed")


def test_every_message_type_has_a_payload_schema():
    assert {
        "place_order",
        "order.placed",
        "order.completed",
        "order.cancelled",
        "saga.dead_lettered",
    } <= set(PAYLOADS)


# --- poison messages ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, "{}", b"{}", [wire()], 42])
def test_a_non_object_is_poison(raw):
    with pytest.raises(PoisonMessage, match="must be a JSON object"):
        decode(raw)


def test_poison_message_is_a_value_error():
    assert issubclass(PoisonMessage, ValueError)


def test_an_unknown_message_type_is_poison():
    with pytest.raises(PoisonMessage, match=r"type: .*unknown message type 'order.teleported'"):
        decode(wire(type="order.teleported"))


@pytest.mark.parametrize(
    "field",
    [
        "event_id",
        "type",
        "order_id",
        "occurred_at",
        "source",
        "correlation_id",
        "traceparent",
        "payload",
    ],
)
def test_a_missing_envelope_field_is_poison(field):
    raw = wire()
    del raw[field]
    with pytest.raises(PoisonMessage, match=rf"schema: {field}: Field required"):
        decode(raw)


@pytest.mark.parametrize(
    "traceparent",
    [
        "",
        "garbage",
        "00-abc-def-01",
        "01-" + "a" * 32 + "-" + "b" * 16 + "-01",
        "00-" + "A" * 32 + "-" + "b" * 16 + "-01",
    ],
)
def test_a_bad_traceparent_is_poison(traceparent):
    with pytest.raises(PoisonMessage, match="traceparent"):
        decode(wire(traceparent=traceparent))


def test_a_naive_datetime_is_poison():
    with pytest.raises(PoisonMessage, match="occurred_at must carry a timezone"):
        decode(wire(occurred_at="2024-05-01T12:00:00"))


def test_an_unknown_envelope_field_is_poison():
    with pytest.raises(PoisonMessage, match="schema: priority: Extra inputs are not permitted"):
        decode(wire(priority=9))


def test_a_zero_quantity_is_poison():
    raw = with_payload(items=[{"sku": "SKU-RED", "qty": 0, "unit_price_cents": 1299}])
    with pytest.raises(PoisonMessage, match=r"schema: payload\.items\.0\.qty: "):
        decode(raw)


def test_an_extra_payload_field_is_poison():
    with pytest.raises(
        PoisonMessage, match=r"schema: payload\.coupon: Extra inputs are not permitted"
    ):
        decode(with_payload(coupon="FREE"))


def test_a_missing_payload_field_is_poison():
    raw = wire()
    del raw["payload"]["card_token"]
    with pytest.raises(PoisonMessage, match="card_token"):
        decode(raw)


def test_an_empty_item_list_is_poison():
    with pytest.raises(PoisonMessage, match="items"):
        decode(with_payload(items=[]))


def test_poison_reason_counts_the_errors():
    with pytest.raises(PoisonMessage, match=r"\(2 error\(s\)\)"):
        decode(wire(event_id="", order_id=""))


def test_an_envelope_is_frozen():
    envelope = decode(wire())
    with pytest.raises(ValidationError):
        envelope.order_id = "other"


def test_envelope_trace_id_is_the_second_traceparent_field():
    envelope = Envelope.model_validate(wire(traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01"))
    assert envelope.trace_id == "1" * 32


# --- limits ----------------------------------------------------------------------------------


def test_the_largest_valid_message_fits_the_message_size_limit_with_room():
    """Every string at its limit, 100 lines: the size limit must never refuse a valid message."""
    from config.settings import Settings
    from models.envelope import MAX_CENTS, MAX_ITEMS, MAX_QTY

    items = [
        {"sku": "S" * 64, "qty": MAX_QTY, "unit_price_cents": MAX_CENTS} for _ in range(MAX_ITEMS)
    ]
    snapshot = {
        "customer_id": "c" * 64,
        "items": items,
        "address": "a" * 500,
        "amount_cents": MAX_CENTS,
    }
    env = make_envelope(
        "payment.completed",
        "o" * 64,
        {"charge_id": "x" * 64, "amount_cents": MAX_CENTS, "order": snapshot},
        source="s" * 64,
        event_id="e" * 64,
    )
    body = json.dumps(
        [[env.to_wire()], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    assert len(body.encode()) * 4 < Settings().max_message_bytes


@pytest.mark.parametrize(
    "change, where, limit",
    [
        ({"address": "x" * 501}, "payload.address", "at most 500 characters"),
        ({"customer_id": "c" * 65}, "payload.customer_id", "at most 64 characters"),
        ({"card_token": "t" * 65}, "payload.card_token", "at most 64 characters"),
        ({"items": [{"sku": "SKU-RED", "qty": 1}] * 101}, "payload.items", "at most 100 items"),
        (
            {"items": [{"sku": "SKU-RED", "qty": 1001}]},
            "payload.items.0.qty",
            "less than or equal to 1000",
        ),
        ({"items": [{"sku": "S" * 65, "qty": 1}]}, "payload.items.0.sku", "at most 64 characters"),
    ],
)
def test_a_limit_exceeded_is_poison_naming_the_field_and_the_limit(change, where, limit):
    with pytest.raises(PoisonMessage, match=rf"schema: {re.escape(where)}: .*{limit}"):
        decode(with_payload(**change))


def test_a_schema_version_newer_than_this_service_reads_is_poison():
    with pytest.raises(
        PoisonMessage, match="schema: schema_version: Input should be less than or equal to 1"
    ):
        decode(wire(schema_version=2))


def test_a_client_may_leave_the_price_to_the_seller():
    decoded = decode(with_payload(items=[{"sku": "SKU-RED", "qty": 2}]))
    assert decoded.parsed().items[0].unit_price_cents is None


def test_what_the_schema_merely_tolerated_reaches_handlers_in_its_own_form():
    raw = make_envelope(
        "payment.refunded",
        "ord-1",
        {"refund_id": None, "amount_cents": 5, "reason": "x"},
        source="payment",
        now=NOW,
    ).to_wire()
    raw["payload"]["amount_cents"] = 5.0  # a JSON number another language may write
    assert (
        decode(raw).payload["amount_cents"] == 5
        and type(decode(raw).payload["amount_cents"]) is int
    )
