"""Shipment service handler: ship what inventory reserved, or say why not."""

from __future__ import annotations

import uuid

from choreo.app.uow import UnitOfWork
from choreo.infra.db import Rows
from consumers.base import HandlerDeps, Subscription, Subscriptions
from consumers.inventory.messages import InventoryReserved
from consumers.orchestrator.messages import CancelShipment, CreateShipment
from consumers.order.messages import OrderExpired
from consumers.shipment.messages import ShipmentCancelled, ShipmentCreated, ShipmentFailed
from consumers.shipment.rules import ship
from consumers.shipment.tables import Shipment
from models.envelope import Envelope

SHIPMENTS = Rows(Shipment)


def on_inventory_reserved(msg: Envelope, uow: UnitOfWork, deps: HandlerDeps) -> None:
    """Ship the reserved order (inventory.reserved; create_shipment when orchestrated)."""
    db = uow.conn
    if SHIPMENTS.exists(db, msg.order_id):
        return  # at most one shipment per order
    p = msg.parsed((InventoryReserved, CreateShipment))
    created, detail = ship(msg.order_id, p.order.address)
    if not created:
        SHIPMENTS.add(db, order_id=msg.order_id, status="failed", reason=detail)
        uow.emit(ShipmentFailed(reason=detail))
        return
    shipment_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"shipment:{msg.order_id}"))
    SHIPMENTS.add(
        db, order_id=msg.order_id, shipment_id=shipment_id, tracking_code=detail, status="created"
    )
    uow.emit(ShipmentCreated(shipment_id=shipment_id, tracking_code=detail))


def on_cancel(msg: Envelope, uow: UnitOfWork, deps: HandlerDeps) -> None:
    """Compensation: withdraw the order's shipment, once; none made yet: remember the order is
    cancelled, so a late request to ship it is refused (the row makes `on_inventory_reserved`
    a no-op)."""
    s = uow.session
    reason = msg.parsed((OrderExpired, CancelShipment)).reason
    shipment = s.get(Shipment, msg.order_id)
    if shipment is None:
        s.add(Shipment(order_id=msg.order_id, status="cancelled", reason=reason[:64]))
    elif shipment.status == "created":
        shipment.status, shipment.reason = "cancelled", reason[:64]
        s.add(shipment)
    else:
        return  # failed (nothing to undo) or cancelled before: said once
    uow.emit(
        ShipmentCancelled(shipment_id=shipment.shipment_id if shipment else None, reason=reason)
    )


SUBSCRIPTIONS: Subscriptions = {
    InventoryReserved: Subscription(on_inventory_reserved),
    OrderExpired: Subscription(on_cancel, compensation=True),
}

# Orchestrated: the same handlers, triggered by the orchestrator's commands.
ORCHESTRATED: Subscriptions = {
    CreateShipment: Subscription(on_inventory_reserved),
    CancelShipment: Subscription(on_cancel, compensation=True),
}
