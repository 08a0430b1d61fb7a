"""Order service handlers: the place_order command and every fact other services report."""

from __future__ import annotations

from choreo.app.eventstore import append, load
from choreo.domain import order as domain
from consumers.base import Subscription
from models.envelope import Envelope


def on_place_order(msg: Envelope, uow, deps) -> None:
    p = msg.parsed()
    order = load(uow.session, msg.order_id)
    lines = [i.model_dump() for i in p.items]
    append(
        uow, order, domain.place(order, p.customer_id, lines, p.address, p.card_token, deps.catalog)
    )


def on_fact(msg: Envelope, uow, deps) -> None:
    fact = domain.fact_from_message(msg.type, msg.payload)
    order = load(uow.session, msg.order_id)
    append(uow, order, domain.record(order, fact))


SUBSCRIPTIONS = {
    "place_order": Subscription(on_place_order),
    "payment.completed": Subscription(on_fact),
    "payment.failed": Subscription(on_fact),
    "payment.refunded": Subscription(on_fact),
    "inventory.reserved": Subscription(on_fact),
    "inventory.failed": Subscription(on_fact),
    # The compensation's outcome, kept in the order's history (and no longer unrouted in choreography).
    "inventory.released": Subscription(on_fact),
    "shipment.created": Subscription(on_fact),
    "shipment.failed": Subscription(on_fact),
    "saga.dead_lettered": Subscription(on_fact),
}
