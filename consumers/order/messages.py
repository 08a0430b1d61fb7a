"""The order service's messages: the place_order command it takes and the events it sends."""

from __future__ import annotations

from pydantic import Field

from models.envelope import (
    MAX_ITEMS,
    MAX_QTY,
    OPERATOR,
    Address,
    CardToken,
    Cents,
    CustomerId,
    Message,
    OrderSnapshot,
    Reason,
    Sku,
    Strict,
)


class OrderLine(Strict):
    """A line of a place_order command. The seller sets the price: a client may omit
    `unit_price_cents`; if it sends one that is not the catalog's, the order is refused
    (CANCELLED, reason price_mismatch) and nothing is charged."""

    sku: Sku
    qty: int = Field(gt=0, le=MAX_QTY)
    unit_price_cents: Cents | None = None


class PlaceOrder(Message, key="place_order", owner=OPERATOR):
    customer_id: CustomerId
    items: list[OrderLine] = Field(min_length=1, max_length=MAX_ITEMS)
    card_token: CardToken
    address: Address


class OrderPlaced(Message, key="order.placed", owner="order"):
    order: OrderSnapshot
    card_token: CardToken


class OrderCompleted(Message, key="order.completed", owner="order"):
    customer_id: CustomerId
    amount_cents: Cents


class OrderCancelled(Message, key="order.cancelled", owner="order"):
    customer_id: CustomerId
    reason: Reason
    amount_cents: Cents
