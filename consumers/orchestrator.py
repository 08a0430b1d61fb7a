"""Orchestrator handlers (orchestrated saga mode): hear replies, persist the saga, send the next command."""

from __future__ import annotations

from choreo.domain.orchestrator import Saga, react
from consumers.base import Subscription
from models.envelope import Envelope
from models.tables import SagaState, utcnow


def on_reply(msg: Envelope, uow, deps) -> None:
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
        uow.emit(command, payload)


SUBSCRIPTIONS = {
    t: Subscription(on_reply)
    for t in (
        "order.placed",
        "payment.completed",
        "payment.failed",
        "payment.refunded",
        "inventory.reserved",
        "inventory.failed",
        "inventory.released",
        "shipment.created",
        "shipment.failed",
        "saga.dead_lettered",
    )
}
