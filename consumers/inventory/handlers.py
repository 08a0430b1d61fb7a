"""Inventory service handlers: reserve on payment.completed; release (a compensation) on
shipment.failed or order.expired."""

from __future__ import annotations

import uuid

from sqlalchemy import bindparam, update

from choreo.app.uow import UnitOfWork
from choreo.infra.db import Rows
from consumers.base import HandlerDeps, Subscription, Subscriptions
from consumers.inventory.messages import InventoryFailed, InventoryReleased, InventoryReserved
from consumers.inventory.rules import merged
from consumers.inventory.tables import Reservation, Stock, StockDecision
from consumers.orchestrator.messages import ReleaseStock, ReserveStock
from consumers.order.messages import OrderExpired
from consumers.payment.messages import PaymentCompleted
from consumers.shipment.messages import ShipmentFailed
from models.envelope import Envelope, Item
from models.tables import table_of, utcnow

RESERVATIONS, DECISIONS = Rows(Reservation), Rows(StockDecision)
_STOCK = table_of(Stock)
# Conditional update: the database, not a read-then-write, keeps stock >= 0.
_RESERVE = (
    update(_STOCK)
    .where(_STOCK.c.sku == bindparam("k"), _STOCK.c.available >= bindparam("q"))
    .values(
        available=_STOCK.c.available - bindparam("q"), reserved=_STOCK.c.reserved + bindparam("q")
    )
)


def on_payment_completed(msg: Envelope, uow: UnitOfWork, deps: HandlerDeps) -> None:
    """Reserve the order's stock (payment.completed; reserve_stock when orchestrated)."""
    db = uow.conn
    if RESERVATIONS.exists(db, msg.order_id) or DECISIONS.exists(db, msg.order_id):
        return
    p = msg.parsed((PaymentCompleted, ReserveStock))
    wanted = merged([i.model_dump() for i in p.order.items])
    missing: list[str] = []
    nested = db.begin_nested()
    for sku, qty in sorted(wanted.items()):
        if db.execute(_RESERVE, {"k": sku, "q": qty}).rowcount != 1:
            missing.append(sku)
    if missing:
        nested.rollback()
        DECISIONS.add(db, order_id=msg.order_id, outcome="out_of_stock")
        uow.emit(InventoryFailed(reason="out_of_stock", skus=missing))
        return
    nested.commit()
    reservation_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"reservation:{msg.order_id}"))
    RESERVATIONS.add(
        db,
        order_id=msg.order_id,
        reservation_id=reservation_id,
        items=[{"sku": k, "qty": v} for k, v in sorted(wanted.items())],
        status="reserved",
    )
    DECISIONS.add(db, order_id=msg.order_id, outcome="reserved")
    uow.emit(InventoryReserved(reservation_id=reservation_id, order=p.order))


def on_release(msg: Envelope, uow: UnitOfWork, deps: HandlerDeps) -> None:
    """Compensation (shipment.failed, order.expired; release_stock when orchestrated): put
    reserved stock back, once."""
    s = uow.session
    r = s.get(Reservation, msg.order_id)
    if r is None or r.status != "reserved":
        if s.get(StockDecision, msg.order_id) is None:
            # Out of order: the failure or the expiry overtook the reservation; remember it, so
            # a late payment.completed cannot reserve stock for an order that already ended.
            s.add(StockDecision(order_id=msg.order_id, outcome="released"))
        return
    for item in r.items:
        s.execute(
            update(Stock)
            .where(Stock.sku == item["sku"])
            .values(available=Stock.available + item["qty"], reserved=Stock.reserved - item["qty"])
        )
    r.status, r.released_at = "released", utcnow()
    s.add(r)
    items = [Item(sku=i["sku"], qty=i["qty"], unit_price_cents=0) for i in r.items]
    uow.emit(InventoryReleased(reservation_id=r.reservation_id, items=items))


SUBSCRIPTIONS: Subscriptions = {
    PaymentCompleted: Subscription(on_payment_completed),
    ShipmentFailed: Subscription(on_release, compensation=True),
    OrderExpired: Subscription(on_release, compensation=True),
}

# Orchestrated: the same handlers, triggered by the orchestrator's commands.
ORCHESTRATED: Subscriptions = {
    ReserveStock: Subscription(on_payment_completed),
    ReleaseStock: Subscription(on_release, compensation=True),
}
