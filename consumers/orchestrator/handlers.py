"""Orchestrator handlers (orchestrated saga mode): hear replies, persist the saga, send the
next command."""

from __future__ import annotations

from choreo.app.uow import UnitOfWork
from consumers.base import HandlerDeps, Subscription, Subscriptions
from consumers.inventory.messages import InventoryFailed, InventoryReleased, InventoryReserved
from consumers.orchestrator.rules import Saga, react
from consumers.orchestrator.tables import SagaState
from consumers.order.messages import OrderExpired, OrderPlaced
from consumers.payment.messages import PaymentCompleted, PaymentFailed, PaymentRefunded
from consumers.shipment.messages import ShipmentCancelled, ShipmentCreated, ShipmentFailed
from models.envelope import PAYLOADS, Envelope, SagaDeadLettered
from models.tables import utcnow


def on_reply(msg: Envelope, uow: UnitOfWork, deps: HandlerDeps) -> None:
    s = uow.session
    row = s.get(SagaState, msg.order_id)
    saga = (
        Saga(msg.order_id)
        if row is None
        else Saga(
            order_id=row.order_id,
            order=row.order,
            card_token=row.card_token,
            done=tuple(row.done),
            undone=tuple(row.undone),
            failure=row.failure,
            status=row.status,
        )
    )
    after, commands = react(saga, msg.type, msg.payload)
    if after == saga and not commands:
        return
    row = row or SagaState(order_id=msg.order_id, status=after.status)
    row.status, row.order, row.card_token = after.status, after.order, after.card_token
    row.done, row.undone, row.failure, row.updated_at = (
        list(after.done),
        list(after.undone),
        after.failure,
        utcnow(),
    )
    s.add(row)
    for command, payload in commands:
        uow.emit(PAYLOADS[command].model_validate(payload))


# The orchestrator runs in the orchestrated mode only.
ORCHESTRATED: Subscriptions = {
    kind: Subscription(on_reply)
    for kind in (
        OrderPlaced,
        OrderExpired,
        PaymentCompleted,
        PaymentFailed,
        PaymentRefunded,
        InventoryReserved,
        InventoryFailed,
        InventoryReleased,
        ShipmentCreated,
        ShipmentFailed,
        ShipmentCancelled,
        SagaDeadLettered,
    )
}
