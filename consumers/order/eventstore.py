"""The order event store: load an order as the fold of its stored events, append new ones."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from sqlalchemy import bindparam, select

from choreo.infra.db import connection_of
from consumers.order import projections, timers
from consumers.order import rules as domain
from consumers.order.tables import OrderEvent
from models.envelope import PAYLOADS
from models.tables import table_of, utcnow


class Appended(NamedTuple):
    """An event just appended: what the projection needs of it."""

    type: str
    position: int
    recorded_at: datetime


_EVENTS = table_of(OrderEvent)
# Built once (the hot path): the fold's read, and the append.
_LOAD = (
    select(_EVENTS.c.type, _EVENTS.c.schema_version, _EVENTS.c.data)
    .where(_EVENTS.c.order_id == bindparam("oid"))
    .order_by(_EVENTS.c.version)
)
_APPEND = _EVENTS.insert()


def load(db, order_id: str) -> domain.Order:
    """The order as the fold of its events. `db`: a session or a connection."""
    return domain.fold_stored(order_id, connection_of(db).execute(_LOAD, {"oid": order_id}))


def append(uow, order: domain.Order, events: list[domain.Event]) -> domain.Order:
    """Append events at the next versions, project them, and stage their announcements.

    A concurrent writer that took the same version makes the insert (or the commit) fail on
    the unique (order_id, version) key; the adapter then reloads and runs the handler again.
    Core inserts, not ORM objects: this is the order service's hot path.
    """
    conn = uow.conn
    cause = uow.cause.event_id if uow.cause else None
    before = order
    rows = []
    for ev in events:
        now = utcnow()
        res = conn.execute(
            _APPEND,
            {
                "order_id": order.order_id,
                "version": order.version + 1,
                "type": ev.type,
                "schema_version": ev.schema_version,
                "data": ev.data,
                "cause_event_id": cause,
                "recorded_at": now,
            },
        )
        rows.append(Appended(ev.type, res.inserted_primary_key[0], now))
        prior, order = order, domain.apply(order, ev)
        said = domain.announcement(order, ev, prior)
        if said:
            uow.emit(PAYLOADS[said[0]].model_validate(said[1]), order_id=order.order_id)
    if rows:
        projections.project(conn, order, rows)
        timers.schedule(conn, before, order, rows[-1].recorded_at, uow.traceparent)
    return order
