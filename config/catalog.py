"""The seller's catalog and the sandbox's test data: SKUs, prices, opening stock, customers,
and the test cards and addresses that decide an order's path (like a payment provider's test cards).

Data only, no rules: the rules that read it live with the service that applies them
(choreo.domain.shipment, choreo.world.gateway) and the scenarios built from it in
choreo.ops.scenarios.
"""

from __future__ import annotations

CARD_OK = "tok_visa"
CARD_DECLINED = "tok_declined"
# The sandbox gateway fails a charge transiently N times, then succeeds.
CARD_FLAKY_PREFIX = "tok_flaky_"
# Charges succeed; every refund fails transiently, so a compensation dead-letters.
CARD_REFUND_FAILS = "tok_refund_fails"

SKUS_IN_STOCK = ("SKU-RED", "SKU-BLUE", "SKU-GREEN")
SKU_SOLD_OUT = "SKU-SOLDOUT"
INITIAL_STOCK = {**{sku: 1_000_000 for sku in SKUS_IN_STOCK}, SKU_SOLD_OUT: 0}
PRICES_CENTS = {"SKU-RED": 1299, "SKU-BLUE": 2450, "SKU-GREEN": 799, SKU_SOLD_OUT: 4999}

ADDRESS_OK = "1 Main Street, Springfield"
# The shipment service cannot ship to an address marked UNDELIVERABLE (choreo.domain.shipment).
ADDRESS_UNDELIVERABLE = "99 Nowhere Road, UNDELIVERABLE"

CUSTOMERS = [f"cust-{i}" for i in range(1, 51)]
