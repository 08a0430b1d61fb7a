"""Order service handlers: the place_order command and every fact other services report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from choreo.app.uow import UnitOfWork
from consumers.base import HandlerDeps, Subscription, Subscriptions
from consumers.inventory.messages import InventoryFailed, InventoryReleased, InventoryReserved
from consumers.order import rules as domain
from consumers.order.eventstore import append, load
from consumers.order.messages import DeadlineDue, PlaceOrder
from consumers.payment.messages import PaymentCompleted, PaymentFailed, PaymentRefunded
from consumers.shipment.messages import ShipmentCancelled, ShipmentCreated, ShipmentFailed
from models.envelope import Envelope, Message, SagaDeadLettered


def on_place_order(msg: Envelope, uow: UnitOfWork, deps: HandlerDeps) -> None:
    p = msg.parsed(PlaceOrder)
    order = load(uow.session, msg.order_id)
    lines = [i.model_dump() for i in p.items]
    append(
        uow, order, domain.place(order, p.customer_id, lines, p.address, p.card_token, deps.catalog)
    )


def on_deadline(msg: Envelope, uow: UnitOfWork, deps: HandlerDeps) -> None:
    """A timer came due: cancel the order if it still waits where the timer watched."""
    due = msg.parsed(DeadlineDue)
    order = load(uow.session, msg.order_id)
    append(uow, order, domain.expire(order, due.step))


def on_fact(msg: Envelope, uow: UnitOfWork, deps: HandlerDeps) -> None:
    message = msg.parsed()
    fact = FACTS[type(message)](message)
    order = load(uow.session, msg.order_id)
    append(uow, order, domain.record(order, fact))


def _attention(m: SagaDeadLettered) -> domain.Event:
    reason = "compensation_failed" if m.compensation else f"dead_lettered:{m.domain}"
    return domain.AttentionRequired(reason, m.domain, m.event_type, m.reason)


# What another service said -> the order's own fact: one line per message the order records.
FACTS: dict[type[Message], Callable[[Any], domain.Event]] = {
    PaymentCompleted: lambda m: domain.PaymentCaptured(m.charge_id, m.amount_cents),
    PaymentFailed: lambda m: domain.PaymentDeclined(m.reason, m.code),
    PaymentRefunded: lambda m: domain.PaymentRefunded(m.amount_cents, m.reason),
    InventoryReserved: lambda m: domain.StockReserved(m.reservation_id),
    InventoryFailed: lambda m: domain.StockUnavailable(m.reason, list(m.skus)),
    # The compensation's outcome, kept in the order's history (and not unrouted in choreography).
    InventoryReleased: lambda m: domain.StockReleased(m.reservation_id),
    ShipmentCreated: lambda m: domain.ShipmentDispatched(m.shipment_id),
    ShipmentFailed: lambda m: domain.ShipmentFailed(m.reason),
    ShipmentCancelled: lambda m: domain.ShipmentWithdrawn(m.shipment_id),
    SagaDeadLettered: _attention,
}

SUBSCRIPTIONS: Subscriptions = {
    PlaceOrder: Subscription(on_place_order),
    DeadlineDue: Subscription(on_deadline),
    **{kind: Subscription(on_fact) for kind in FACTS},
}
