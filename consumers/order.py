"""Order service handlers: the place_order command and every fact other services report."""
from __future__ import annotations

from sqlmodel import select

from choreo import projections
from choreo.domain import order as domain
from consumers.base import Subscription
from models.envelope import Envelope
from models.tables import OrderEvent


def load(session, order_id: str) -> domain.Order:
    rows = session.exec(select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.version)).all()
    return domain.fold(order_id, (domain.upcast(r.type, r.schema_version, r.data) for r in rows))


def append(uow, order: domain.Order, events: list[domain.DomainEvent]) -> domain.Order:
    """Append events at the next versions, project them, and stage their announcements.

    A concurrent writer that took the same version makes the commit fail on the unique
    (order_id, version) key; the adapter then reloads and runs the handler again.
    """
    rows = []
    for ev in events:
        row = OrderEvent(order_id=order.order_id, version=order.version + 1, type=ev.type,
                         schema_version=ev.schema_version, data=ev.data,
                         cause_event_id=uow.cause.event_id if uow.cause else None)
        uow.session.add(row)
        rows.append(row)
        order = domain.apply(order, ev)
        said = domain.announcement(order, ev)
        if said:
            uow.emit(said[0], said[1], order_id=order.order_id)
    if rows:
        uow.session.flush()  # positions assigned: the projection records the last one applied
        projections.project(uow.session, order, rows)
    return order


def on_place_order(msg: Envelope, uow, deps) -> None:
    p = msg.parsed()
    order = load(uow.session, msg.order_id)
    items = [i.model_dump() for i in p.items]
    append(uow, order, domain.place(order, p.customer_id, items, p.address, p.card_token))


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
    "shipment.created": Subscription(on_fact),
    "shipment.failed": Subscription(on_fact),
    "saga.dead_lettered": Subscription(on_fact),
}
