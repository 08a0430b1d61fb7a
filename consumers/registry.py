"""Which domain hears which message types: the single source the topology is derived from."""
from __future__ import annotations

from consumers import inventory, notification, order, payment, shipment
from consumers.base import Subscription

SUBSCRIPTIONS: dict[str, dict[str, Subscription]] = {
    "order": order.SUBSCRIPTIONS,
    "payment": payment.SUBSCRIPTIONS,
    "inventory": inventory.SUBSCRIPTIONS,
    "shipment": shipment.SUBSCRIPTIONS,
    "notification": notification.SUBSCRIPTIONS,
}
