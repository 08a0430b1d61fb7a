"""Notification service handler: tell the customer how the order ended, or that it needs an
operator (order.needs_attention), once per (order, kind)."""

from __future__ import annotations

import logging

from choreo.app.uow import UnitOfWork
from choreo.infra.db import Rows
from consumers.base import HandlerDeps, Subscription, Subscriptions
from consumers.notification.rules import KINDS, compose
from consumers.notification.tables import Notification
from consumers.order.messages import OrderCancelled, OrderCompleted, OrderNeedsAttention
from models.envelope import Envelope

log = logging.getLogger("choreo.notification")


NOTIFICATIONS = Rows(Notification)


def customer_of(msg: Envelope, deps: HandlerDeps) -> dict:
    """The customer, over HTTP behind a circuit breaker: looked up before the unit of work opens.
    The event id is the request's X-Request-ID: the user service's log line names the message."""
    return {"customer": deps.users.get(msg.payload["customer_id"], request_id=msg.event_id)}


def on_order_ended(
    msg: Envelope, uow: UnitOfWork, deps: HandlerDeps, customer: dict | None
) -> None:
    db = uow.conn
    kind = KINDS[msg.type]
    if NOTIFICATIONS.exists(db, msg.order_id, kind):
        return
    body = compose(kind, msg.order_id, customer.get("name") if customer else None, msg.payload)
    NOTIFICATIONS.add(
        db,
        order_id=msg.order_id,
        kind=kind,
        customer_id=msg.payload["customer_id"],
        email=customer.get("email") if customer else None,
        body=body,
    )
    log.info(
        "notification sent",
        extra={"kind": kind, "email": customer.get("email") if customer else None},
    )


SUBSCRIPTIONS: Subscriptions = {
    OrderCompleted: Subscription(on_order_ended, lookup=customer_of),
    OrderCancelled: Subscription(on_order_ended, lookup=customer_of),
    OrderNeedsAttention: Subscription(on_order_ended, lookup=customer_of),
}
