"""The order aggregate: state is a fold of its events; decisions return new events."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

# Settled: the saga closed the order. Terminal: nothing more moves it without an operator
# (settled, or NEEDS_ATTENTION: a step or a compensation failed for good). One vocabulary for
# the CLI, the audit, chaos, the bench and the tests.
SETTLED = ("COMPLETED", "CANCELLED")
TERMINAL = (*SETTLED, "NEEDS_ATTENTION")
STATES = ("PLACED", "PAID", "RESERVED", "CANCELLING", *TERMINAL)

# Current schema version of each stored order event type; older versions are upcast on read.
EVENT_VERSIONS = {
    "OrderPlaced": 2,
    "PaymentCaptured": 1,
    "PaymentDeclined": 1,
    "StockReserved": 1,
    "StockUnavailable": 1,
    "StockReleased": 1,
    "ShipmentDispatched": 1,
    "ShipmentFailed": 1,
    "PaymentRefunded": 1,
    "AttentionRequired": 1,
    "OrderCompleted": 1,
    "OrderCancelled": 1,
    "OrderRejected": 1,
}


@dataclass(frozen=True)
class DomainEvent:
    type: str
    data: dict[str, Any]
    schema_version: int = 0

    def __post_init__(self) -> None:
        if self.type not in EVENT_VERSIONS:
            raise ValueError(f"unknown order event {self.type!r}")
        if not self.schema_version:
            object.__setattr__(self, "schema_version", EVENT_VERSIONS[self.type])


def _upcast_order_placed_v1(data: dict) -> dict:
    # v1 stored a single sku/qty/price; v2 stores a list of items.
    data = dict(data)
    if "items" not in data:
        data["items"] = [
            {
                "sku": data.pop("sku"),
                "qty": data.pop("qty"),
                "unit_price_cents": data.pop("unit_price_cents"),
            }
        ]
    return data


UPCASTERS: dict[tuple[str, int], Callable[[dict], dict]] = {
    ("OrderPlaced", 1): _upcast_order_placed_v1,
}


def upcast(type_: str, version: int, data: dict) -> DomainEvent:
    current = EVENT_VERSIONS[type_]
    while version < current:
        data = UPCASTERS[(type_, version)](data)
        version += 1
    return DomainEvent(type_, data, current)


@dataclass(frozen=True)
class Order:
    order_id: str
    version: int = 0
    customer_id: str = ""
    items: tuple = ()
    address: str = ""
    card_token: str = ""
    amount_cents: int = 0
    charged_cents: int | None = None
    declined: str | None = None
    reserved: bool = False
    stock_failed: str | None = None
    shipped: bool = False
    ship_failed: str | None = None
    refunded_cents: int | None = None
    released: bool = False
    attention: str | None = None
    closed: str | None = None
    close_reason: str | None = None

    @property
    def exists(self) -> bool:
        return self.version > 0

    @property
    def state(self) -> str:
        if self.closed:
            return self.closed
        if self.attention:
            return "NEEDS_ATTENTION"
        if self.stock_failed or self.ship_failed:
            return "CANCELLING"
        if self.reserved:
            return "RESERVED"
        if self.charged_cents is not None:
            return "PAID"
        return "PLACED"

    @property
    def reason(self) -> str | None:
        if self.closed:
            return self.close_reason
        if self.attention:
            return self.attention
        return self.stock_failed or self.ship_failed


def apply(order: Order, event: DomainEvent) -> Order:
    """One small pure step: the order after `event`."""
    d = event.data
    t = event.type
    changes: dict[str, Any] = {"version": order.version + 1}
    if t == "OrderPlaced":
        changes.update(
            customer_id=d["customer_id"],
            items=tuple(tuple(sorted(i.items())) for i in d["items"]),
            address=d["address"],
            card_token=d["card_token"],
            amount_cents=d["amount_cents"],
        )
    elif t == "PaymentCaptured":
        changes.update(charged_cents=d["amount_cents"])
    elif t == "PaymentDeclined":
        changes.update(declined=d["reason"])
    elif t == "StockReserved":
        changes.update(reserved=True)
    elif t == "StockUnavailable":
        changes.update(stock_failed="out_of_stock")
    elif t == "StockReleased":
        changes.update(released=True)  # history only: the refund, not the release, closes the order
    elif t == "ShipmentDispatched":
        changes.update(shipped=True)
    elif t == "ShipmentFailed":
        changes.update(ship_failed="shipment_failed")
    elif t == "PaymentRefunded":
        changes.update(refunded_cents=d["amount_cents"])
    elif t == "AttentionRequired":
        changes.update(attention=d["reason"])
    elif t == "OrderCompleted":
        changes.update(closed="COMPLETED", close_reason=None)
    elif t == "OrderCancelled":
        changes.update(closed="CANCELLED", close_reason=d["reason"])
    elif t == "OrderRejected":
        changes.update(
            customer_id=d["customer_id"],
            items=tuple(tuple(sorted(i.items())) for i in d["items"]),
            closed="CANCELLED",
            close_reason=d["reason"],
        )
    return replace(order, **changes)


def fold(order_id: str, events: Iterable[DomainEvent]) -> Order:
    order = Order(order_id)
    for event in events:
        order = apply(order, event)
    return order


def fold_stored(order_id: str, rows: Iterable[tuple[str, int, dict]]) -> Order:
    """The one mapper from stored (type, schema_version, data) rows, oldest first, to the order
    (upcast on read): the handler's load, the projection rebuild and the audit all use it."""
    return fold(order_id, (upcast(type_, version, data) for type_, version, data in rows))


# Integration event (what another service said) -> the order's own fact.
def fact_from_message(msg_type: str, payload: dict) -> DomainEvent | None:
    if msg_type == "payment.completed":
        return DomainEvent(
            "PaymentCaptured",
            {"charge_id": payload["charge_id"], "amount_cents": payload["amount_cents"]},
        )
    if msg_type == "payment.failed":
        return DomainEvent(
            "PaymentDeclined", {"reason": payload["reason"], "code": payload["code"]}
        )
    if msg_type == "payment.refunded":
        return DomainEvent(
            "PaymentRefunded",
            {"amount_cents": payload["amount_cents"], "reason": payload["reason"]},
        )
    if msg_type == "inventory.reserved":
        return DomainEvent("StockReserved", {"reservation_id": payload["reservation_id"]})
    if msg_type == "inventory.failed":
        return DomainEvent(
            "StockUnavailable", {"reason": payload["reason"], "skus": payload["skus"]}
        )
    if msg_type == "inventory.released":
        return DomainEvent("StockReleased", {"reservation_id": payload["reservation_id"]})
    if msg_type == "shipment.created":
        return DomainEvent("ShipmentDispatched", {"shipment_id": payload["shipment_id"]})
    if msg_type == "shipment.failed":
        return DomainEvent("ShipmentFailed", {"reason": payload["reason"]})
    if msg_type == "saga.dead_lettered":
        reason = (
            "compensation_failed"
            if payload["compensation"]
            else f"dead_lettered:{payload['domain']}"
        )
        return DomainEvent(
            "AttentionRequired",
            {
                "reason": reason,
                "domain": payload["domain"],
                "event_type": payload["event_type"],
                "detail": payload["reason"],
            },
        )
    return None


def priced(
    lines: list[dict], prices: Mapping[str, int]
) -> tuple[list[dict], str | None, str | None]:
    """The lines priced from the seller's catalog: (items, None, None), or ([], reason, detail).

    The seller sets the price. A line may omit `unit_price_cents`; one that names a price other
    than the catalog's is refused rather than charged at another price than the customer saw.
    """
    unknown = sorted({line["sku"] for line in lines if line["sku"] not in prices})
    if unknown:
        return [], "unknown_sku", f"not in the catalog: {', '.join(unknown)}"
    wrong = [
        line
        for line in lines
        if line.get("unit_price_cents") is not None
        and line["unit_price_cents"] != prices[line["sku"]]
    ]
    if wrong:
        said = ", ".join(
            f"{w['sku']} at {w['unit_price_cents']} (catalog {prices[w['sku']]})" for w in wrong
        )
        return [], "price_mismatch", f"client price differs from the catalog: {said}"
    return (
        [
            {"sku": line["sku"], "qty": line["qty"], "unit_price_cents": prices[line["sku"]]}
            for line in lines
        ],
        None,
        None,
    )


def place(
    order: Order,
    customer_id: str,
    lines: list[dict],
    address: str,
    card_token: str,
    prices: Mapping[str, int],
) -> list[DomainEvent]:
    """Place the order at the catalog's prices, or refuse it (CANCELLED at once, nothing charged)."""
    if order.exists:
        return []  # placing the same order id twice is a no-op, not a second order
    items, refused, detail = priced(lines, prices)
    if refused:
        return [
            DomainEvent(
                "OrderRejected",
                {"customer_id": customer_id, "items": lines, "reason": refused, "detail": detail},
            )
        ]
    amount = sum(i["qty"] * i["unit_price_cents"] for i in items)
    return [
        DomainEvent(
            "OrderPlaced",
            {
                "customer_id": customer_id,
                "items": items,
                "address": address,
                "card_token": card_token,
                "amount_cents": amount,
            },
        )
    ]


def record(order: Order, fact: DomainEvent) -> list[DomainEvent]:
    """The events to append when `fact` arrives: the fact itself plus any decision it enables.

    Facts may arrive in any order (redelivery, retries): the decision looks only at the
    set of facts known, never at the order they came in.
    """
    if not order.exists:
        return []
    if _already_known(order, fact):
        return []
    after = apply(order, fact)
    return [fact, *decide(after)]


def _already_known(order: Order, fact: DomainEvent) -> bool:
    t = fact.type
    return (
        (t == "PaymentCaptured" and order.charged_cents is not None)
        or (t == "PaymentDeclined" and order.declined is not None)
        or (t == "StockReserved" and order.reserved)
        or (t == "StockUnavailable" and order.stock_failed is not None)
        or (t == "StockReleased" and order.released)
        or (t == "ShipmentDispatched" and order.shipped)
        or (t == "ShipmentFailed" and order.ship_failed is not None)
        or (t == "PaymentRefunded" and order.refunded_cents is not None)
        or (t == "AttentionRequired" and order.attention == fact.data["reason"])
    )


def decide(order: Order) -> list[DomainEvent]:
    if order.closed:
        return []
    if order.declined:
        return [DomainEvent("OrderCancelled", {"reason": "payment_declined"})]
    failure = order.stock_failed or order.ship_failed
    if failure and order.refunded_cents is not None:
        return [DomainEvent("OrderCancelled", {"reason": failure})]
    if order.shipped and not failure:
        return [DomainEvent("OrderCompleted", {})]
    return []


def announcement(order: Order, event: DomainEvent) -> tuple[str, dict] | None:
    """The integration event (type, payload) other services hear for one of our events."""
    if event.type == "OrderPlaced":
        d = event.data
        return "order.placed", {
            "order": {
                "customer_id": d["customer_id"],
                "items": d["items"],
                "address": d["address"],
                "amount_cents": d["amount_cents"],
            },
            "card_token": d["card_token"],
        }
    if event.type == "OrderCompleted":
        return "order.completed", {
            "customer_id": order.customer_id,
            "amount_cents": order.amount_cents,
        }
    if event.type == "OrderCancelled":
        return "order.cancelled", {
            "customer_id": order.customer_id,
            "reason": event.data["reason"],
            "amount_cents": order.amount_cents,
        }
    if event.type == "OrderRejected":
        return "order.cancelled", {
            "customer_id": order.customer_id,
            "reason": event.data["reason"],
            "amount_cents": 0,
        }
    return None
