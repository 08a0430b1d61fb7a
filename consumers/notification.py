"""Notification service handler: tell the customer how the order ended, once per (order, kind)."""
from __future__ import annotations

import logging

from choreo.db import Rows
from choreo.domain.notification import KINDS, compose
from consumers.base import Subscription
from models.envelope import Envelope
from models.tables import Notification

log = logging.getLogger("choreo.notification")


NOTIFICATIONS = Rows(Notification)


def on_order_ended(msg: Envelope, uow, deps) -> None:
    db = uow.conn
    kind = KINDS[msg.type]
    if NOTIFICATIONS.exists(db, msg.order_id, kind):
        return
    customer = deps.users.get(msg.payload["customer_id"])  # over HTTP, behind a circuit breaker
    body = compose(kind, msg.order_id, customer.get("name") if customer else None, msg.payload)
    NOTIFICATIONS.add(db, order_id=msg.order_id, kind=kind, customer_id=msg.payload["customer_id"],
                      email=customer.get("email") if customer else None, body=body)
    log.info("notification sent", extra={"kind": kind, "email": customer.get("email") if customer else None})


SUBSCRIPTIONS = {
    "order.completed": Subscription(on_order_ended),
    "order.cancelled": Subscription(on_order_ended),
}
