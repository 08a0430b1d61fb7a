"""The messages the payment service sends: one class each, declaring its routing key and owner."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from models.envelope import Cents, Id, Message, OrderSnapshot, Reason


class PaymentCompleted(Message, key="payment.completed", owner="payment"):
    charge_id: Id
    amount_cents: Cents
    order: OrderSnapshot


class PaymentFailed(Message, key="payment.failed", owner="payment"):
    reason: Reason
    code: Annotated[str, Field(min_length=1, max_length=64)]


class PaymentRefunded(Message, key="payment.refunded", owner="payment"):
    refund_id: Id | None
    amount_cents: Cents
    reason: Reason
