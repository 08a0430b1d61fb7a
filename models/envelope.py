"""The event envelope every message carries, and the payload schema of every message type.

JSON on the wire, validated on publish and on consume, so a service written in another
language can take part: see README "Wire format".
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = 1
# The embedded options of Celery's protocol-2 body ([args, kwargs, options]). choreo sends them
# all null; a client that sets one asks the worker to publish further tasks under its name.
EMBED_KEYS = frozenset({"callbacks", "errbacks", "chain", "chord"})
TRACEPARENT_RE = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
_ID_NAMESPACE = uuid.UUID("6f1c1e1a-8f7e-4c1b-9a55-2a0c6b3c9d10")


# Limits, so no message can carry a megabyte into three services' databases; a message
# over one is dead-lettered with the limit named. Amounts fit a 32-bit integer column.
MAX_ITEMS = 100
MAX_QTY = 1_000
MAX_CENTS = 2_000_000_000
Id = Annotated[str, Field(min_length=1, max_length=64)]
Sku = Annotated[str, Field(min_length=1, max_length=64)]
Reason = Annotated[str, Field(min_length=1, max_length=500)]
Cents = Annotated[int, Field(ge=0, le=MAX_CENTS)]
CustomerId = Annotated[str, Field(min_length=1, max_length=64)]
CardToken = Annotated[str, Field(min_length=1, max_length=64)]
Address = Annotated[str, Field(min_length=1, max_length=500)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Item(Strict):
    """A priced line, as the order service priced it from its catalog."""

    sku: Sku
    qty: int = Field(gt=0, le=MAX_QTY)
    unit_price_cents: Cents


class OrderLine(Strict):
    """A line of a place_order command. The seller sets the price: a client may omit
    `unit_price_cents`; if it sends one that is not the catalog's, the order is refused
    (CANCELLED, reason price_mismatch) and nothing is charged."""

    sku: Sku
    qty: int = Field(gt=0, le=MAX_QTY)
    unit_price_cents: Cents | None = None


class OrderSnapshot(Strict):
    """The facts about an order that travel with it (event-carried state transfer)."""

    customer_id: CustomerId
    items: list[Item] = Field(min_length=1, max_length=MAX_ITEMS)
    address: Address
    amount_cents: Cents


class PlaceOrder(Strict):
    customer_id: CustomerId
    items: list[OrderLine] = Field(min_length=1, max_length=MAX_ITEMS)
    card_token: CardToken
    address: Address


class OrderPlaced(Strict):
    order: OrderSnapshot
    card_token: CardToken


class OrderCompleted(Strict):
    customer_id: CustomerId
    amount_cents: Cents


class OrderCancelled(Strict):
    customer_id: CustomerId
    reason: Reason
    amount_cents: Cents


class PaymentCompleted(Strict):
    charge_id: Id
    amount_cents: Cents
    order: OrderSnapshot


class PaymentFailed(Strict):
    reason: Reason
    code: Annotated[str, Field(min_length=1, max_length=64)]


class PaymentRefunded(Strict):
    refund_id: Id | None
    amount_cents: Cents
    reason: Reason


class InventoryReserved(Strict):
    reservation_id: Id
    order: OrderSnapshot


class InventoryFailed(Strict):
    reason: Reason
    skus: list[Sku] = Field(max_length=MAX_ITEMS)


class InventoryReleased(Strict):
    reservation_id: Id | None
    items: list[Item] = Field(max_length=MAX_ITEMS)


class ShipmentCreated(Strict):
    shipment_id: Id
    tracking_code: Id


class ShipmentFailed(Strict):
    reason: Reason


class SagaDeadLettered(Strict):
    """A domain gave up on a message of this order: the order needs an operator."""

    domain: Annotated[str, Field(min_length=1, max_length=64)]
    event_type: Annotated[str, Field(min_length=1, max_length=64)]
    event_id: Id
    reason: Reason
    compensation: bool


PAYLOADS: dict[str, type[Strict]] = {
    "place_order": PlaceOrder,
    "order.placed": OrderPlaced,
    "order.completed": OrderCompleted,
    "order.cancelled": OrderCancelled,
    "payment.completed": PaymentCompleted,
    "payment.failed": PaymentFailed,
    "payment.refunded": PaymentRefunded,
    "inventory.reserved": InventoryReserved,
    "inventory.failed": InventoryFailed,
    "inventory.released": InventoryReleased,
    "shipment.created": ShipmentCreated,
    "shipment.failed": ShipmentFailed,
    "saga.dead_lettered": SagaDeadLettered,
}


class Envelope(Strict):
    event_id: Id
    type: str = Field(max_length=64)
    # A newer version than this code reads is refused (dead-lettered, replayable after an upgrade).
    schema_version: int = Field(SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION)
    order_id: Id
    occurred_at: datetime
    source: Annotated[str, Field(min_length=1, max_length=64)]
    correlation_id: Id
    causation_id: Id | None = None
    traceparent: str = Field(pattern=TRACEPARENT_RE)
    payload: dict[str, Any]

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in PAYLOADS:
            raise ValueError(f"unknown message type {value!r}")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("occurred_at must carry a timezone")
        return value

    def parsed(self) -> Strict:
        """The payload as its typed schema (validated again: cheap, and a frozen copy)."""
        return PAYLOADS[self.type].model_validate(self.payload)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def trace_id(self) -> str:
        return self.traceparent.split("-")[1]


class PoisonMessage(ValueError):
    """A message that can never be processed: dead-letter it at once, no retries."""


def decode(raw: Any) -> Envelope:
    """Validate a wire envelope and its payload; raise PoisonMessage with the reason.

    The payload handed on is the schema's own rendering of what was sent, so a handler
    never sees a value the schema merely tolerated ("12" for 12, a key it would drop)."""
    if not isinstance(raw, dict):
        raise PoisonMessage(f"envelope must be a JSON object, got {type(raw).__name__}")
    prefix: tuple = ()
    try:
        envelope = Envelope.model_validate(raw)
        prefix = ("payload",)
        payload = envelope.parsed().model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in (*prefix, *first.get("loc", ()))) or "envelope"
        raise PoisonMessage(
            f"schema: {where}: {first.get('msg')} ({exc.error_count()} error(s))"
        ) from None
    return envelope.model_copy(update={"payload": payload})


def new_trace() -> str:
    return f"00-{uuid.uuid4().hex}-{os.urandom(8).hex()}-01"


def child_trace(traceparent: str) -> str:
    """Same trace, a new span: the W3C way to say 'caused by'."""
    return f"00-{traceparent.split('-')[1]}-{os.urandom(8).hex()}-01"


def derived_id(*parts: str) -> str:
    """A deterministic event id, so re-running the same cause emits the same ids."""
    return str(uuid.uuid5(_ID_NAMESPACE, "|".join(parts)))


def make_envelope(
    type: str,
    order_id: str,
    payload: BaseModel | dict,
    *,
    source: str,
    cause: Envelope | None = None,
    event_id: str | None = None,
    now: datetime | None = None,
    traceparent: str | None = None,
) -> Envelope:
    """A new envelope. Its traceparent: `traceparent` when given (the span that emits it, so the
    consumer's span is that span's child), else a new span id in the cause's trace, else a new trace."""
    body = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
    PAYLOADS[type].model_validate(body)  # validate on publish, not only on consume
    return Envelope(
        event_id=event_id or str(uuid.uuid4()),
        type=type,
        order_id=order_id,
        occurred_at=now or datetime.now(UTC),
        source=source,
        correlation_id=cause.correlation_id if cause else order_id,
        causation_id=cause.event_id if cause else None,
        traceparent=traceparent or (child_trace(cause.traceparent) if cause else new_trace()),
        payload=body,
    )


# --- commands of the orchestrated saga mode (imperative names; same facts as the events
# that trigger the same handlers in choreography mode) ---------------------------------


class ChargePayment(Strict):
    order: OrderSnapshot
    card_token: CardToken


class RefundPayment(Strict):
    reason: Reason


class ReserveStock(Strict):
    order: OrderSnapshot


class ReleaseStock(Strict):
    reason: Reason


class CreateShipment(Strict):
    order: OrderSnapshot


PAYLOADS.update(
    {
        "charge_payment": ChargePayment,
        "refund_payment": RefundPayment,
        "reserve_stock": ReserveStock,
        "release_stock": ReleaseStock,
        "create_shipment": CreateShipment,
    }
)
