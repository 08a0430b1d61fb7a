"""Order service handlers: the place_order command and every fact other services report."""
from __future__ import annotations

from sqlmodel import select

from choreo.domain import order as domain
from consumers.base import Subscription
from models.envelope import Envelope
from models.tables import OrderEvent, OrderView, utcnow


def load(session, order_id: str) -> domain.Order:
    rows = session.exec(select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.version)).all()
    return domain.fold(order_id, (domain.upcast(r.type, r.schema_version, r.data) for r in rows))


def append(uow, order: domain.Order, events: list[domain.DomainEvent]) -> domain.Order:
    """Append events at the next versions, project them, and stage their announcements.

    A concurrent writer that took the same version makes the commit fail on the unique
    (order_id, version) key; the adapter then reloads and runs the handler again.
    """
    for ev in events:
        row = OrderEvent(order_id=order.order_id, version=order.version + 1, type=ev.type,
                         schema_version=ev.schema_version, data=ev.data,
                         cause_event_id=uow.cause.event_id if uow.cause else None)
        uow.session.add(row)
        order = domain.apply(order, ev)
        said = domain.announcement(order, ev)
        if said:
            uow.emit(said[0], said[1], order_id=order.order_id)
    if events:
        uow.session.flush()
        project(uow.session, order, events)
    return order


def project(session, order: domain.Order, events: list[domain.DomainEvent]) -> None:
    """Keep the read model current, in the same transaction as the events it reflects."""
    view = session.get(OrderView, order.order_id)
    now = utcnow()
    if view is None:
        view = OrderView(order_id=order.order_id, state=order.state, customer_id=order.customer_id)
    stamp = {"OrderPlaced": "placed_at", "PaymentCaptured": "paid_at", "StockReserved": "reserved_at",
             "ShipmentDispatched": "shipped_at", "OrderCompleted": "ended_at", "OrderCancelled": "ended_at"}
    for ev in events:
        if ev.type in stamp:
            setattr(view, stamp[ev.type], now)
    apply_view(view, order, now)
    last = session.exec(select(OrderEvent.position).where(OrderEvent.order_id == order.order_id)
                        .order_by(OrderEvent.version.desc()).limit(1)).first()
    view.last_position = last or 0
    session.add(view)


def apply_view(view: OrderView, order: domain.Order, now) -> None:
    view.state = order.state
    view.reason = order.reason
    view.customer_id = order.customer_id
    view.amount_cents = order.amount_cents
    view.card_token = order.card_token
    view.address = order.address
    view.items = [dict(i) for i in order.items]
    view.charged_cents = order.charged_cents or 0
    view.refunded_cents = order.refunded_cents or 0
    view.version = order.version
    view.updated_at = now


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
