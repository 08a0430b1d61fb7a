"""The order service's messages: the place_order command it takes and the events it sends."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, Field

from models.envelope import (
    CLIENT,
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

# The steps with a deadline (config.settings.DEADLINE_STEPS): the service an order waits on,
# or the whole saga.
Step = Literal["payment", "inventory", "shipment", "saga"]


class OrderLine(Strict):
    """A line of a place_order command. The seller sets the price: a client may omit
    `unit_price_cents`; if it sends one that is not the catalog's, the order is refused
    (CANCELLED, reason price_mismatch) and nothing is charged."""

    sku: Sku
    qty: int = Field(gt=0, le=MAX_QTY)
    unit_price_cents: Cents | None = None


class PlaceOrder(Message, key="place_order", owner=(OPERATOR, CLIENT)):
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
    """`reason` is a code clients key on (payment_declined, price_mismatch, ...); `detail`, sent
    only when the order service knows more, says it for a person: which line and prices of a
    price_mismatch, which SKUs of an unknown_sku. Optional, so a message without it (any sent
    before it existed) stays valid."""

    customer_id: CustomerId
    reason: Reason
    amount_cents: Cents
    detail: Reason | None = None


class OrderNeedsAttention(Message, key="order.needs_attention", owner="order"):
    """The order entered NEEDS_ATTENTION: a step or a compensation failed for good (its message is
    in `domain`'s dead-letter queue) and an operator must look. Said once as it enters; when it
    leaves (replayed, or the compensation done after all) order.completed or order.cancelled
    follows. `reopened`: the order had been announced cancelled, then a compensation of it failed
    for good (the refund, the release or the withdrawal), so money or stock is left wrong."""

    customer_id: CustomerId
    reason: Reason  # compensation_failed, or dead_lettered:<domain>
    domain: Annotated[str, Field(min_length=1, max_length=64)]  # whose message was dead-lettered
    event_type: Annotated[str, Field(min_length=1, max_length=64)]  # the message it gave up on
    reopened: bool
    amount_cents: Cents


class DeadlineDue(Message, key="order.deadline", owner="order"):
    """A durable timer came due (the order service's own: drained from order_deadlines and heard
    by the order service alone). Stale ones, for a step the order has left, change nothing."""

    step: Step
    due_at: AwareDatetime


class OrderExpired(Message, key="order.expired", owner="order"):
    """A deadline passed: the order is cancelled (reason timeout:<step>). Each service undoes what
    it did for the order, and whatever it is asked to do for it later it undoes too (or never
    does): a late charge is refunded, a late reservation released, a late shipment cancelled."""

    customer_id: CustomerId
    step: Step
    reason: Reason
