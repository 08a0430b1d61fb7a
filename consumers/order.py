"""Order service handlers: the place_order command and every fact other services report."""

from __future__ import annotations

from choreo.app.eventstore import append, load
from choreo.app.uow import UnitOfWork
from choreo.domain import order as domain
from consumers.base import HandlerDeps, Subscription, Subscriptions
from models.envelope import (
    Envelope,
    InventoryFailed,
    InventoryReleased,
    InventoryReserved,
    PaymentCompleted,
    PaymentFailed,
    PaymentRefunded,
    PlaceOrder,
    SagaDeadLettered,
    ShipmentCreated,
    ShipmentFailed,
)


def on_place_order(msg: Envelope, uow: UnitOfWork, deps: HandlerDeps) -> None:
    p = msg.parsed(PlaceOrder)
    order = load(uow.session, msg.order_id)
    lines = [i.model_dump() for i in p.items]
    append(
        uow, order, domain.place(order, p.customer_id, lines, p.address, p.card_token, deps.catalog)
    )


def on_fact(msg: Envelope, uow: UnitOfWork, deps: HandlerDeps) -> None:
    fact = domain.fact_from_message(msg.type, msg.payload)
    if fact is None:
        raise ValueError(f"the order service hears no {msg.type}")
    order = load(uow.session, msg.order_id)
    append(uow, order, domain.record(order, fact))


SUBSCRIPTIONS: Subscriptions = {
    PlaceOrder: Subscription(on_place_order),
    PaymentCompleted: Subscription(on_fact),
    PaymentFailed: Subscription(on_fact),
    PaymentRefunded: Subscription(on_fact),
    InventoryReserved: Subscription(on_fact),
    InventoryFailed: Subscription(on_fact),
    # The compensation's outcome, kept in the order's history (and not unrouted in choreography).
    InventoryReleased: Subscription(on_fact),
    ShipmentCreated: Subscription(on_fact),
    ShipmentFailed: Subscription(on_fact),
    SagaDeadLettered: Subscription(on_fact),
}
