"""The order read model: a projection of the order event store, live or rebuilt from scratch.

Live, the projector runs in the same transaction as the events it applies and records the
last position applied; rebuilt, it replays the store in order. Both use `view_of`, so a
rebuild gives the same rows as the live projection (timestamps come from the events).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import groupby

from sqlalchemy import bindparam, delete
from sqlalchemy import select as core_select
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, col, select

from choreo.infra.db import connection_of
from consumers.order import rules as domain
from consumers.order.tables import OrderEvent, OrderView
from models.tables import table_of

COLUMNS = (
    "state",
    "reason",
    "customer_id",
    "amount_cents",
    "card_token",
    "address",
    "items",
    "charged_cents",
    "refunded_cents",
    "version",
    "last_position",
    "placed_at",
    "paid_at",
    "reserved_at",
    "shipped_at",
    "ended_at",
    "updated_at",
)


def values(prev: dict | None, order: domain.Order, rows) -> dict:
    """The view's columns after `rows` (already applied to `order`), from its columns before.

    `rows` are the appended events (anything with type, position and recorded_at): ORM rows
    on a rebuild, plain tuples on the live path."""
    v = (
        dict(prev)
        if prev
        else {
            "placed_at": None,
            "paid_at": None,
            "reserved_at": None,
            "shipped_at": None,
            "ended_at": None,
            "last_position": 0,
            "updated_at": None,
        }
    )
    for row in rows:
        milestone = domain.EVENTS[row.type].milestone
        if milestone is not None:
            v[f"{milestone}_at"] = row.recorded_at
    v.update(
        state=order.state,
        reason=order.reason,
        customer_id=order.customer_id,
        amount_cents=order.amount_cents,
        card_token=order.card_token,
        address=order.address,
        items=[dict(i) for i in order.items],
        charged_cents=order.charged_cents or 0,
        refunded_cents=order.refunded_cents or 0,
        version=order.version,
    )
    if rows:
        v["last_position"] = rows[-1].position
        v["updated_at"] = rows[-1].recorded_at
    return v


def advance(view: OrderView | None, order: domain.Order, rows: list[OrderEvent]) -> OrderView:
    """The view after `rows` (already applied to `order`), as an ORM object (rebuilds, drift)."""
    prev = {c: getattr(view, c) for c in COLUMNS} if view is not None else None
    return OrderView(order_id=order.order_id, **values(prev, order, rows))


_VIEW = table_of(OrderView)
# Built once: this runs for every order message, and building a statement costs more than running
# it.
_VIEW_GET = core_select(*(_VIEW.c[c] for c in COLUMNS)).where(_VIEW.c.order_id == bindparam("oid"))
_VIEW_INSERT = _VIEW.insert()
_VIEW_UPDATE = _VIEW.update().where(_VIEW.c.order_id == bindparam("oid"))


def project(db: Session | Connection, order: domain.Order, rows) -> None:
    """Live projection, inside the transaction that appended `rows` (flushed: positions known),
    as Core statements on the transaction's connection."""
    conn = connection_of(db)
    prev = conn.execute(_VIEW_GET, {"oid": order.order_id}).mappings().first()
    new = values(dict(prev) if prev is not None else None, order, rows)
    if prev is None:
        conn.execute(_VIEW_INSERT, {"order_id": order.order_id, **new})
    else:
        conn.execute(_VIEW_UPDATE, {"oid": order.order_id, **new})


def _replay(session: Session) -> Iterator[OrderView]:
    rows = session.exec(
        select(OrderEvent).order_by(col(OrderEvent.order_id), col(OrderEvent.version))
    ).yield_per(2000)
    for order_id, group in groupby(rows, key=lambda r: r.order_id):
        events = list(group)
        order = domain.fold_stored(order_id, ((r.type, r.schema_version, r.data) for r in events))
        yield advance(None, order, events)


def rebuild(engine: Engine) -> int:
    """Drop the read model and replay every order's events into it; returns orders rebuilt."""
    with Session(engine) as s:
        s.execute(delete(OrderView))
        views = list(_replay(s))
        s.add_all(views)
        s.commit()
        return len(views)


def row_of(view: OrderView) -> tuple:
    return tuple(getattr(view, c) for c in COLUMNS)


def drift(engine: Engine) -> list[str]:
    """Order ids whose stored view differs from a replay of their events (nothing is written)."""
    with Session(engine) as s:
        stored = {v.order_id: row_of(v) for v in s.exec(select(OrderView))}
        replayed = {v.order_id: row_of(v) for v in _replay(s)}
        s.rollback()
    return sorted(o for o in stored.keys() | replayed.keys() if stored.get(o) != replayed.get(o))
