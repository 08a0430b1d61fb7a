"""The domains' own rules (payment, inventory, shipment, notification): pure functions, no I/O."""

from __future__ import annotations

import re

import pytest

from config.catalog import ADDRESS_OK, ADDRESS_UNDELIVERABLE
from consumers.inventory import rules as inventory
from consumers.notification import rules as notification
from consumers.payment import rules as payment
from consumers.shipment import rules as shipment

# --- payment -----------------------------------------------------------------------------


@pytest.mark.parametrize(("charged", "refund"), [(5048, 5048), (0, 0), (None, 0)])
def test_refund_amount_is_exactly_what_was_charged(charged, refund):
    assert payment.refund_amount(charged) == refund


# --- inventory ------------------------------------------------------------------------------

STOCK = {"SKU-RED": 5, "SKU-BLUE": 1, "SKU-SOLDOUT": 0}


def test_nothing_is_missing_when_stock_covers_every_item():
    assert (
        inventory.missing_skus(STOCK, [{"sku": "SKU-RED", "qty": 5}, {"sku": "SKU-BLUE", "qty": 1}])
        == []
    )


def test_a_sold_out_sku_is_missing():
    assert inventory.missing_skus(
        STOCK, [{"sku": "SKU-RED", "qty": 1}, {"sku": "SKU-SOLDOUT", "qty": 1}]
    ) == ["SKU-SOLDOUT"]


def test_an_unknown_sku_is_missing():
    assert inventory.missing_skus(STOCK, [{"sku": "SKU-NOPE", "qty": 1}]) == ["SKU-NOPE"]


def test_quantities_of_the_same_sku_add_up_when_checking_stock():
    items = [{"sku": "SKU-RED", "qty": 3}, {"sku": "SKU-RED", "qty": 3}]
    assert inventory.missing_skus(STOCK, items) == ["SKU-RED"]  # 6 wanted, 5 in stock
    assert inventory.missing_skus(STOCK, items[:1]) == []


def test_missing_skus_are_sorted_and_listed_once():
    items = [
        {"sku": "SKU-SOLDOUT", "qty": 1},
        {"sku": "SKU-BLUE", "qty": 2},
        {"sku": "SKU-SOLDOUT", "qty": 1},
    ]
    assert inventory.missing_skus(STOCK, items) == ["SKU-BLUE", "SKU-SOLDOUT"]


def test_merged_adds_up_quantities_of_the_same_sku():
    items = [
        {"sku": "SKU-RED", "qty": 2, "unit_price_cents": 1},
        {"sku": "SKU-BLUE", "qty": 1},
        {"sku": "SKU-RED", "qty": 3},
    ]
    assert inventory.merged(items) == {"SKU-RED": 5, "SKU-BLUE": 1}


def test_merged_of_no_items_is_empty():
    assert inventory.merged([]) == {}


# --- shipment -----------------------------------------------------------------------------------


def test_an_undeliverable_address_is_not_shipped():
    assert shipment.ship("ord-1", ADDRESS_UNDELIVERABLE) == (False, "address_undeliverable")


def test_undeliverable_is_recognised_in_any_case():
    assert shipment.ship("ord-1", "7 Far Lane, undeliverable")[0] is False


def test_a_good_address_ships_with_a_tracking_code():
    created, code = shipment.ship("ord-1", ADDRESS_OK)
    assert created is True
    assert re.fullmatch(r"TRK-[0-9A-F]{12}", code)


def test_the_tracking_code_depends_only_on_the_order_id():
    assert shipment.ship("ord-1", ADDRESS_OK) == shipment.ship("ord-1", "another street")
    assert shipment.ship("ord-1", ADDRESS_OK) != shipment.ship("ord-2", ADDRESS_OK)


# --- notification -------------------------------------------------------------------------------


def test_completed_notification_names_the_customer_and_the_amount_in_euros():
    text = notification.compose("completed", "ord-1", "Ada", {"amount_cents": 5048})
    assert text == "Hello Ada, your order ord-1 is on its way (50.48 EUR)."


def test_cancelled_notification_gives_the_reason():
    text = notification.compose("cancelled", "ord-1", "Ada", {"reason": "out_of_stock"})
    assert "ord-1 was cancelled (out_of_stock)" in text
    assert text.startswith("Hello Ada,")


def test_attention_notification_says_staff_is_looking_into_it():
    text = notification.compose("attention", "ord-1", "Ada", {"reason": "compensation_failed"})
    assert text.startswith("Hello Ada,") and "ord-1" in text and "looking into it" in text


def test_notification_without_a_name_says_customer():
    assert notification.compose("completed", "o", None, {"amount_cents": 100}).startswith(
        "Hello customer,"
    )
