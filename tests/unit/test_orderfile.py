"""`choreo place`'s input: JSON Lines of place_order payloads, all checked before any is placed."""

from __future__ import annotations

import json

import pytest

from choreo.ops.orderfile import MAX_ERRORS, BadOrder, BadOrders, parse_order, read_orders

GOOD = {
    "customer_id": "cust-7",
    "items": [
        {"sku": "SKU-RED", "qty": 2},
        {"sku": "SKU-GREEN", "qty": 1, "unit_price_cents": 799},
    ],
    "card_token": "tok_visa",
    "address": "1 Main Street",
}


def lines(*orders) -> list[str]:
    return [o if isinstance(o, str) else json.dumps(o) for o in orders]


def test_a_line_is_the_wire_format_s_place_order_payload():
    ((order_id, payload),) = read_orders(lines(GOOD))
    assert order_id is None  # choreo gives it one
    assert payload.model_dump(mode="json", exclude_none=True) == GOOD


def test_a_line_may_choose_its_order_id():
    ((order_id, payload),) = read_orders(lines({**GOOD, "order_id": "my-0001"}))
    assert order_id == "my-0001" and payload.customer_id == "cust-7"


def test_blank_lines_are_skipped_and_order_is_kept():
    got = read_orders(["\n", json.dumps({**GOOD, "order_id": "a"}), "   ", json.dumps(GOOD)])
    assert [o for o, _ in got] == ["a", None]


def test_an_empty_text_has_no_orders():
    assert read_orders([]) == []


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("{not json", "not JSON: Expecting property name enclosed in double quotes (column 2)"),
        ("[1, 2]", "an order is a JSON object (a place_order payload), not list"),
        (json.dumps({**GOOD, "items": []}), "items: List should have at least 1 item"),
        (
            json.dumps({**GOOD, "items": [{"sku": "SKU-RED", "qty": 0}]}),
            "items.0.qty: Input should be greater than 0",
        ),
        (json.dumps({**GOOD, "colour": "red"}), "colour: Extra inputs are not permitted"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "address"}), "address: Field required"),
        (json.dumps({**GOOD, "order_id": ""}), "order_id: String should have at least 1 character"),
        (json.dumps({**GOOD, "order_id": 7}), "order_id: Input should be a valid string"),
        (json.dumps({**GOOD, "order_id": "x" * 65}), "order_id: String should have at most 64"),
    ],
)
def test_a_bad_line_is_named_by_its_number_with_what_is_wrong(line, says):
    with pytest.raises(BadOrders) as caught:
        read_orders(lines(GOOD, line, GOOD))
    (error,) = caught.value.errors
    assert error.line == 2
    assert str(error).startswith(f"line 2: {says}")
    assert str(caught.value).startswith("line 2: ")


def test_every_bad_line_is_reported_not_only_the_first():
    with pytest.raises(BadOrders) as caught:
        read_orders(lines("x", GOOD, {**GOOD, "card_token": ""}, GOOD))
    assert [e.line for e in caught.value.errors] == [1, 3]
    assert "card_token: String should have at least 1 character" in str(caught.value)


def test_a_long_list_of_errors_is_cut_and_counted():
    with pytest.raises(BadOrders) as caught:
        read_orders(["x"] * (MAX_ERRORS + 5))
    assert len(caught.value.errors) == MAX_ERRORS + 5
    text = str(caught.value)
    assert text.count("line ") == MAX_ERRORS and text.endswith("... and 5 more bad line(s)")


def test_an_order_id_twice_is_refused_on_its_second_line():
    with pytest.raises(BadOrders) as caught:
        read_orders(lines({**GOOD, "order_id": "a"}, GOOD, {**GOOD, "order_id": "a"}))
    assert [str(e) for e in caught.value.errors] == ["line 3: order_id 'a' is already on line 1"]


def test_parse_order_takes_a_mapping_as_the_python_client_gives_it():
    assert parse_order({**GOOD, "order_id": "o-1"})[0] == "o-1"
    with pytest.raises(BadOrder, match="items.0.sku: String should have at least 1 character"):
        parse_order({**GOOD, "items": [{"sku": "", "qty": 1}]})
    with pytest.raises(BadOrder, match="not str"):
        parse_order("an order")


def test_a_wrong_price_is_a_valid_line_the_order_service_refuses():
    """The file's check is the wire format's; prices are the seller's business (price_mismatch)."""
    ((_, payload),) = read_orders(
        lines({**GOOD, "items": [{"sku": "SKU-RED", "qty": 1, "unit_price_cents": 1}]})
    )
    assert payload.items[0].unit_price_cents == 1
