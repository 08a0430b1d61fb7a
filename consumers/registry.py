"""Which domain hears which messages, per saga mode: the single source the topology is derived from.

Tables are keyed by message class; a queue's bindings are the classes' declared routing keys.
"""

from __future__ import annotations

from choreo.messaging.topology import Topology
from config.settings import Settings
from consumers import inventory, notification, orchestrator, order, payment, shipment
from consumers.base import Subscription, Subscriptions
from models.envelope import (
    ChargePayment,
    CreateShipment,
    RefundPayment,
    ReleaseStock,
    ReserveStock,
)

CHOREOGRAPHY: dict[str, Subscriptions] = {
    "order": order.SUBSCRIPTIONS,
    "payment": payment.SUBSCRIPTIONS,
    "inventory": inventory.SUBSCRIPTIONS,
    "shipment": shipment.SUBSCRIPTIONS,
    "notification": notification.SUBSCRIPTIONS,
}

# Same handlers, other triggers: the orchestrator's commands instead of each other's events.
ORCHESTRATED: dict[str, Subscriptions] = {
    "order": order.SUBSCRIPTIONS,
    "payment": {
        ChargePayment: Subscription(payment.on_order_placed),
        RefundPayment: Subscription(payment.on_failure_refund, compensation=True),
    },
    "inventory": {
        ReserveStock: Subscription(inventory.on_payment_completed),
        ReleaseStock: Subscription(inventory.on_shipment_failed, compensation=True),
    },
    "shipment": {CreateShipment: Subscription(shipment.on_inventory_reserved)},
    "notification": notification.SUBSCRIPTIONS,
    "orchestrator": orchestrator.SUBSCRIPTIONS,
}

MODES = {"choreography": CHOREOGRAPHY, "orchestrated": ORCHESTRATED}


def _by_key(table: Subscriptions) -> dict[str, Subscription]:
    return {kind.routing_key: sub for kind, sub in table.items()}


# What the adapter looks up by an envelope's type: domain -> routing key -> subscription.
_BY_KEY = {
    mode: {domain: _by_key(table) for domain, table in tables.items()}
    for mode, tables in MODES.items()
}


def subscriptions(mode: str) -> dict[str, dict[str, Subscription]]:
    return _BY_KEY[mode]


def topology(settings: Settings) -> Topology:
    """The broker topology these tables give: each domain's queue bound to the keys it hears."""
    return Topology(
        settings,
        {mode: {d: sorted(subs) for d, subs in table.items()} for mode, table in _BY_KEY.items()},
    )
