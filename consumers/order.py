"""Order service handlers: the place_order command and every fact other services report."""
from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from sqlalchemy import bindparam, select

from choreo import projections
from choreo.db import connection_of
from choreo.domain import order as domain
from consumers.base import Subscription
from models.envelope import Envelope
from models.tables import OrderEvent, utcnow


class Appended(NamedTuple):
    """An event just appended: what the projection needs of it."""
    type: str
    position: int
    recorded_at: datetime


_EVENTS = OrderEvent.__table__
# Built once (the hot path): the fold's read, and the append.
_LOAD = (select(_EVENTS.c.type, _EVENTS.c.schema_version, _EVENTS.c.data)
         .where(_EVENTS.c.order_id == bindparam("oid")).order_by(_EVENTS.c.version))
_APPEND = _EVENTS.insert()


def load(db, order_id: str) -> domain.Order:
    """The order as the fold of its events (upcast on read). `db`: a session or a connection."""
    rows = connection_of(db).execute(_LOAD, {"oid": order_id})
    return domain.fold(order_id, (domain.upcast(typ, ver, data) for typ, ver, data in rows))


def append(uow, order: domain.Order, events: list[domain.DomainEvent]) -> domain.Order:
    """Append events at the next versions, project them, and stage their announcements.

    A concurrent writer that took the same version makes the insert (or the commit) fail on
    the unique (order_id, version) key; the adapter then reloads and runs the handler again.
    Core inserts, not ORM objects: this is the order service's hot path.
    """
    conn = uow.conn
    cause = uow.cause.event_id if uow.cause else None
    rows = []
    for ev in events:
        now = utcnow()
        res = conn.execute(_APPEND, {"order_id": order.order_id, "version": order.version + 1, "type": ev.type,
                                     "schema_version": ev.schema_version, "data": ev.data,
                                     "cause_event_id": cause, "recorded_at": now})
        rows.append(Appended(ev.type, res.inserted_primary_key[0], now))
        order = domain.apply(order, ev)
        said = domain.announcement(order, ev)
        if said:
            uow.emit(said[0], said[1], order_id=order.order_id)
    if rows:
        projections.project(conn, order, rows)
    return order


def on_place_order(msg: Envelope, uow, deps) -> None:
    p = msg.parsed()
    order = load(uow.session, msg.order_id)
    lines = [i.model_dump() for i in p.items]
    append(uow, order, domain.place(order, p.customer_id, lines, p.address, p.card_token, deps.catalog))


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
