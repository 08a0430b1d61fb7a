"""The order read model: a projection of the order event store, live or rebuilt from scratch.

Live, the projector runs in the same transaction as the events it applies and records the
last position applied; rebuilt, it replays the store in order. Both use `view_of`, so a
rebuild gives the same rows as the live projection (timestamps come from the events).
"""
from __future__ import annotations

from itertools import groupby

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from choreo.domain import order as domain
from models.tables import OrderEvent, OrderView

STAMPS = {"OrderPlaced": "placed_at", "PaymentCaptured": "paid_at", "StockReserved": "reserved_at",
          "ShipmentDispatched": "shipped_at", "OrderCompleted": "ended_at", "OrderCancelled": "ended_at"}
COLUMNS = ("state", "reason", "customer_id", "amount_cents", "card_token", "address", "items", "charged_cents",
           "refunded_cents", "version", "last_position", "placed_at", "paid_at", "reserved_at", "shipped_at",
           "ended_at", "updated_at")


def advance(view: OrderView | None, order: domain.Order, rows: list[OrderEvent]) -> OrderView:
    """The view after `rows` (already applied to `order`)."""
    if view is None:
        view = OrderView(order_id=order.order_id, state=order.state, customer_id=order.customer_id)
    for row in rows:
        if row.type in STAMPS:
            setattr(view, STAMPS[row.type], row.recorded_at)
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
    if rows:
        view.last_position = rows[-1].position
        view.updated_at = rows[-1].recorded_at
    return view


def project(session: Session, order: domain.Order, rows: list[OrderEvent]) -> None:
    """Live projection, inside the transaction that appended `rows` (flushed: positions known)."""
    session.add(advance(session.get(OrderView, order.order_id), order, rows))


def _replay(session: Session):
    rows = session.exec(select(OrderEvent).order_by(OrderEvent.order_id, OrderEvent.version)).yield_per(2000)
    for order_id, group in groupby(rows, key=lambda r: r.order_id):
        group = list(group)
        order = domain.fold(order_id, (domain.upcast(r.type, r.schema_version, r.data) for r in group))
        yield advance(None, order, group)


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
