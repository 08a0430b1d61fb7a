"""The event envelope every message carries, and the payload schema of every message type.

JSON on the wire, validated on publish and on consume, so a service written in another
language can take part: see README "Wire format".
"""
from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = 1
TRACEPARENT_RE = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
_ID_NAMESPACE = uuid.UUID("6f1c1e1a-8f7e-4c1b-9a55-2a0c6b3c9d10")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Item(Strict):
    sku: str = Field(min_length=1, max_length=64)
    qty: int = Field(gt=0, le=10_000)
    unit_price_cents: int = Field(ge=0)


class OrderSnapshot(Strict):
    """The facts about an order that travel with it (event-carried state transfer)."""
    customer_id: str = Field(min_length=1)
    items: list[Item] = Field(min_length=1)
    address: str = Field(min_length=1)
    amount_cents: int = Field(ge=0)


class PlaceOrder(Strict):
    customer_id: str = Field(min_length=1)
    items: list[Item] = Field(min_length=1)
    card_token: str = Field(min_length=1)
    address: str = Field(min_length=1)


class OrderPlaced(Strict):
    order: OrderSnapshot
    card_token: str


class OrderCompleted(Strict):
    customer_id: str
    amount_cents: int


class OrderCancelled(Strict):
    customer_id: str
    reason: str
    amount_cents: int


class PaymentCompleted(Strict):
    charge_id: str
    amount_cents: int
    order: OrderSnapshot


class PaymentFailed(Strict):
    reason: str
    code: str


class PaymentRefunded(Strict):
    refund_id: str | None
    amount_cents: int
    reason: str


class InventoryReserved(Strict):
    reservation_id: str
    order: OrderSnapshot


class InventoryFailed(Strict):
    reason: str
    skus: list[str]


class InventoryReleased(Strict):
    reservation_id: str | None
    items: list[Item]


class ShipmentCreated(Strict):
    shipment_id: str
    tracking_code: str


class ShipmentFailed(Strict):
    reason: str


class SagaDeadLettered(Strict):
    """A domain gave up on a message of this order: the order needs an operator."""
    domain: str
    event_type: str
    event_id: str
    reason: str
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
    event_id: str = Field(min_length=1, max_length=64)
    type: str
    schema_version: int = Field(SCHEMA_VERSION, ge=1)
    order_id: str = Field(min_length=1, max_length=64)
    occurred_at: datetime
    source: str = Field(min_length=1)
    correlation_id: str = Field(min_length=1)
    causation_id: str | None = None
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
    """Validate a wire envelope and its payload; raise PoisonMessage with the reason."""
    if not isinstance(raw, dict):
        raise PoisonMessage(f"envelope must be a JSON object, got {type(raw).__name__}")
    try:
        envelope = Envelope.model_validate(raw)
        envelope.parsed()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "envelope"
        raise PoisonMessage(f"schema: {where}: {first.get('msg')} ({exc.error_count()} error(s))") from None
    return envelope


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
) -> Envelope:
    body = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
    PAYLOADS[type].model_validate(body)  # validate on publish, not only on consume
    return Envelope(
        event_id=event_id or str(uuid.uuid4()),
        type=type,
        order_id=order_id,
        occurred_at=now or datetime.now(timezone.utc),
        source=source,
        correlation_id=cause.correlation_id if cause else order_id,
        causation_id=cause.event_id if cause else None,
        traceparent=child_trace(cause.traceparent) if cause else new_trace(),
        payload=body,
    )




# --- commands of the orchestrated saga mode (imperative names; same facts as the events
# that trigger the same handlers in choreography mode) ---------------------------------

class ChargePayment(Strict):
    order: OrderSnapshot
    card_token: str


class RefundPayment(Strict):
    reason: str


class ReserveStock(Strict):
    order: OrderSnapshot


class ReleaseStock(Strict):
    reason: str


class CreateShipment(Strict):
    order: OrderSnapshot


PAYLOADS.update({
    "charge_payment": ChargePayment,
    "refund_payment": RefundPayment,
    "reserve_stock": ReserveStock,
    "release_stock": ReleaseStock,
    "create_shipment": CreateShipment,
})
