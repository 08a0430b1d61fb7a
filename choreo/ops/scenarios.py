"""Order scenarios: the test data that decides each order's path, and the outcome it must reach.

A script, a test, the bench or the chaos harness picks a scenario and knows the outcome in
advance (`expected_outcome`), from the services' own rules applied to the catalog's data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from config.catalog import (
    ADDRESS_OK,
    ADDRESS_UNDELIVERABLE,
    CARD_DECLINED,
    CARD_FLAKY_PREFIX,
    CARD_OK,
    CARD_REFUND_FAILS,
    CUSTOMERS,
    INITIAL_STOCK,
    PRICES_CENTS,
    SKU_SOLD_OUT,
    SKUS_IN_STOCK,
)
from consumers.inventory.rules import missing_skus
from consumers.order.messages import PlaceOrder
from consumers.shipment.rules import is_undeliverable
from models.envelope import Envelope, make_envelope

SCENARIOS = (
    "completed",
    "declined",
    "out_of_stock",
    "undeliverable",
    "flaky",
    "needs_attention",
    "price_mismatch",
    "unknown_sku",
)
# What each scenario's data is, for `choreo enqueue --help` (the README's "The flow" table).
SCENARIO_HELP = {
    "completed": "a test card that charges, SKUs in stock: COMPLETED",
    "declined": "a declined card: CANCELLED (payment_declined)",
    "out_of_stock": "a sold-out SKU: CANCELLED (out_of_stock), refunded",
    "undeliverable": "an undeliverable address: CANCELLED (shipment_failed), refunded",
    "flaky": "a card failing twice transiently, retried: COMPLETED",
    "needs_attention": "sold out and every refund fails: NEEDS_ATTENTION",
    "price_mismatch": "a line priced below the catalog: CANCELLED (price_mismatch), no charge",
    "unknown_sku": "a SKU the catalog does not sell: CANCELLED (unknown_sku), no charge",
}
SKU_NOT_SOLD = "SKU-NOT-IN-CATALOG"
DEFAULT_MIX = {
    "completed": 46,
    "declined": 15,
    "out_of_stock": 14,
    "undeliverable": 10,
    "flaky": 9,
    "needs_attention": 2,
    "price_mismatch": 2,
    "unknown_sku": 2,
}


@dataclass(frozen=True)
class OrderSpec:
    scenario: str
    customer_id: str
    items: list[dict]
    card_token: str
    address: str

    def payload(self) -> PlaceOrder:
        """The place_order payload for this order."""
        return PlaceOrder(
            customer_id=self.customer_id,
            items=self.items,
            card_token=self.card_token,
            address=self.address,
        )

    def place_order(self, order_id: str, source: str) -> Envelope:
        """The place_order command for this order, as a client sends it."""
        return make_envelope("place_order", order_id, self.payload(), source=source)


def make_order(scenario: str, rng: random.Random | None = None) -> OrderSpec:
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
    rng = rng or random.Random()
    sku = rng.choice(SKUS_IN_STOCK)
    items = [{"sku": sku, "qty": rng.randint(1, 3), "unit_price_cents": PRICES_CENTS[sku]}]
    card, address = CARD_OK, ADDRESS_OK
    if scenario == "declined":
        card = CARD_DECLINED
    elif scenario == "out_of_stock":
        items.append(
            {"sku": SKU_SOLD_OUT, "qty": 1, "unit_price_cents": PRICES_CENTS[SKU_SOLD_OUT]}
        )
    elif scenario == "undeliverable":
        address = ADDRESS_UNDELIVERABLE
    elif scenario == "flaky":
        card = f"{CARD_FLAKY_PREFIX}2"
    elif scenario == "needs_attention":
        card = CARD_REFUND_FAILS
        items.append(
            {"sku": SKU_SOLD_OUT, "qty": 1, "unit_price_cents": PRICES_CENTS[SKU_SOLD_OUT]}
        )
    elif scenario == "price_mismatch":
        items[0] = {**items[0], "unit_price_cents": PRICES_CENTS[sku] - 1}
    elif scenario == "unknown_sku":
        items.append({"sku": SKU_NOT_SOLD, "qty": 1})
    return OrderSpec(scenario, rng.choice(CUSTOMERS), items, card, address)


def expected_outcome(card_token: str, items: list[dict], address: str) -> tuple[str, str | None]:
    """(state, reason) an order with this data must end in."""
    if any(i["sku"] not in PRICES_CENTS for i in items):
        return "CANCELLED", "unknown_sku"
    if any(
        i.get("unit_price_cents") is not None and i["unit_price_cents"] != PRICES_CENTS[i["sku"]]
        for i in items
    ):
        return "CANCELLED", "price_mismatch"
    if card_token == CARD_DECLINED:
        return "CANCELLED", "payment_declined"
    sold_out = bool(missing_skus(INITIAL_STOCK, items))
    if sold_out or is_undeliverable(address):
        if card_token == CARD_REFUND_FAILS:
            return "NEEDS_ATTENTION", "compensation_failed"
        return "CANCELLED", "out_of_stock" if sold_out else "shipment_failed"
    return "COMPLETED", None


def scenario_of(card_token: str, items: list[dict], address: str) -> str:
    """Which of SCENARIOS an order's data makes it (the inverse of make_order); `custom`
    otherwise."""
    refused = expected_outcome(card_token, items, address)[1]
    if refused in ("unknown_sku", "price_mismatch"):
        return refused if card_token == CARD_OK and not is_undeliverable(address) else "custom"
    sold_out = (
        bool(missing_skus(INITIAL_STOCK, items))
        if all(i.get("sku") in PRICES_CENTS for i in items)
        else False
    )
    if card_token == CARD_DECLINED:
        return "declined"
    if card_token == CARD_REFUND_FAILS:
        return "needs_attention" if sold_out or is_undeliverable(address) else "custom"
    if card_token.startswith(CARD_FLAKY_PREFIX):
        return "flaky"
    if card_token != CARD_OK:
        return "custom"
    if sold_out:
        return "out_of_stock"
    if is_undeliverable(address):
        return "undeliverable"
    return "completed"


def parse_mix(text: str | None) -> dict[str, int]:
    """'completed=60,declined=40' -> weights. Raises ValueError with a one-line reason."""
    if not text:
        return dict(DEFAULT_MIX)
    if text == "all":
        return {s: 1 for s in SCENARIOS}
    mix: dict[str, int] = {}
    for part in text.split(","):
        name, sep, weight = part.strip().partition("=")
        if name not in SCENARIOS:
            raise ValueError(
                f"unknown scenario {name!r} in --mix; choose from {', '.join(SCENARIOS)}"
            )
        try:
            mix[name] = int(weight) if sep else 1
        except ValueError:
            raise ValueError(
                f"weight for {name!r} must be a whole number, got {weight!r}"
            ) from None
        if mix[name] < 0:
            raise ValueError(f"weight for {name!r} must not be negative")
    if not sum(mix.values()):
        raise ValueError("--mix needs at least one scenario with a positive weight")
    return mix


def draw_scenarios(count: int, mix: dict[str, int], seed: int | None = None) -> list[str]:
    """A deterministic-by-seed list of scenarios whose shares follow the weights."""
    total = sum(mix.values())
    names = [n for n, w in mix.items() if w > 0]
    quotas = {n: count * mix[n] // total for n in names}
    leftovers = count - sum(quotas.values())
    for n in sorted(names, key=lambda n: -(count * mix[n] % total))[:leftovers]:
        quotas[n] += 1
    result = [n for n in names for _ in range(quotas[n])]
    random.Random(seed).shuffle(result)
    return result
